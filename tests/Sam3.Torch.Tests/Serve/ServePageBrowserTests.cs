using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Playwright;
using NUnit.Framework;
using Sam3.Cli.Serve;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Serve;

/// <summary>
/// The page of <c>sam3 serve</c> in a real browser: Debian's Chromium driven by Playwright (its own browser download is
/// not used), the server in process on a free loopback port with the tiny model. After each action the mask layer of the
/// canvas is read back pixel by pixel and compared with the masks of the server's response (COCO RLE decoded here).
/// A screenshot of the page is saved into the test output.
/// </summary>
[TestFixture, Category("Browser")]
public class ServePageBrowserTests
{
    /// <summary>Chromium to drive: SAM3_CHROMIUM, else Debian's /usr/bin/chromium (.ci/run installs it when missing).</summary>
    private static string ChromiumPath => Environment.GetEnvironmentVariable("SAM3_CHROMIUM") is { Length: > 0 } p ? p : "/usr/bin/chromium";

    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    /// <summary>Row-major run lengths of "alpha &gt; 0" of the mask canvas, starting with a (possibly empty) transparent run.</summary>
    private const string MaskRunsScript = """
        () => {
          const c = document.getElementById('maskCanvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          const runs = []; let cur = 0, n = 0;
          for (let i = 3; i < d.length; i += 4) { const v = d[i] > 0 ? 1 : 0; if (v !== cur) { runs.push(n); n = 0; cur = v; } n++; }
          runs.push(n);
          return runs;
        }
        """;

    private static int[] Runs(byte[] rowMajor)
    {
        var runs = new List<int>();
        int cur = 0, n = 0;
        foreach (var b in rowMajor)
        {
            int v = b != 0 ? 1 : 0;
            if (v != cur) { runs.Add(n); n = 0; cur = v; }
            n++;
        }
        runs.Add(n);
        return runs.ToArray();
    }

    /// <summary>Union of the masks the page should show for this response (all detections, or the best interactive mask).</summary>
    private static byte[] ExpectedUnion(ResultDto r)
    {
        var shown = r.Mode == "interactive" ? [r.Objects[r.Best!.Value]] : r.Objects;
        var union = new byte[r.Width * r.Height];
        foreach (var o in shown)
        {
            var m = new CocoRle(o.Rle.Size, o.Rle.Counts).Decode();
            for (int i = 0; i < union.Length; i++) union[i] |= m[i];
        }
        return union;
    }

    private static async Task<ResultDto> Act(IPage page, string endpoint, Func<Task> action)
    {
        var response = await page.RunAndWaitForResponseAsync(action, r => r.Url.Contains(endpoint) && r.Request.Method == "POST");
        Assert.That(response.Status, Is.EqualTo(200), await response.TextAsync());
        var dto = JsonSerializer.Deserialize<ResultDto>(await response.TextAsync(), Web)!;
        await page.WaitForFunctionAsync("() => window.sam3 && !window.sam3.busy && window.sam3.state.result !== null");
        return dto;
    }

    private static async Task AssertCanvasShows(IPage page, ResultDto r, string what)
    {
        var expected = ExpectedUnion(r);
        var actual = await page.EvaluateAsync<int[]>(MaskRunsScript);
        Assert.That(expected.Any(b => b != 0), $"{what}: the server's response has a non-empty mask to draw");
        Assert.That(actual, Is.EqualTo(Runs(expected)), $"{what}: the canvas's mask layer is exactly the server's masks");
    }

    [Test]
    public async Task PageDrawsTheServersMasksForTextClicksAndABox()
    {
        if (!File.Exists(ChromiumPath)) TestPolicy.Missing($"Chromium at {ChromiumPath} (apt-get install chromium, or set SAM3_CHROMIUM)");
        string dir = Path.Combine(Path.GetTempPath(), "sam3-browser-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var model = Sam3Model.Load(ServeApiTests.TinyFolder(Path.Combine(dir, "tiny")));
            using var engine = new ServeEngine(model, new ServeOptions { Port = 0 });
            await using var app = ServeApp.Build(engine);
            await app.StartAsync();
            string address = ServeApp.Address(app);

            using var playwright = await Playwright.CreateAsync();
            await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
            {
                ExecutablePath = ChromiumPath, Headless = true, Args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            });
            var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 900 } });
            var consoleErrors = new List<string>();
            page.Console += (_, m) => { if (m.Type == "error") consoleErrors.Add(m.Text); };
            page.PageError += (_, e) => consoleErrors.Add(e);
            await page.GotoAsync(address + "/");
            await Assertions.Expect(page.Locator("#status")).ToContainTextAsync("model", new() { Timeout = 15000 });
            await Assertions.Expect(page.Locator("#shortcuts")).ToContainTextAsync("right click");

            // open truck.jpg and find "person" (the tiny model has random weights: at 0.45 it keeps 2 of its 16 queries)
            await page.Locator("#threshold").FillAsync("0.45");
            await page.Locator("#file").SetInputFilesAsync(SharedData.Parity("inputs", "truck.jpg"));
            await Assertions.Expect(page.Locator("#status")).ToContainTextAsync("features", new() { Timeout = 30000 });
            await page.Locator("#text").FillAsync("person");
            var text = await Act(page, "/text", () => page.Locator("#text").PressAsync("Enter"));
            Assert.That(text.Mode, Is.EqualTo("detector"));
            Assert.That(text.Threshold, Is.EqualTo(0.45), "the page sent its threshold");
            Assert.That(text.Objects, Is.Not.Empty);
            await AssertCanvasShows(page, text, "text prompt");
            await Assertions.Expect(page.Locator("#objects li")).ToHaveCountAsync(text.Objects.Count);

            // canvas position of an image pixel
            var bounds = (await page.Locator("#markCanvas").BoundingBoxAsync())!;
            (float X, float Y) At(float x, float y) => ((float)(bounds.X + x * bounds.Width / text.Width), (float)(bounds.Y + y * bounds.Height / text.Height));

            // a positive click on the truck
            var (cx, cy) = At(900, 600);
            var click = await Act(page, "/interactive", () => page.Mouse.ClickAsync(cx, cy));
            Assert.That(click.Mode, Is.EqualTo("interactive"));
            Assert.That(click.Prompt.Points, Has.Count.EqualTo(1));
            Assert.That(click.Prompt.Points[0].Positive, Is.True);
            Assert.That(click.Prompt.Points[0].X, Is.EqualTo(900).Within(2));
            await AssertCanvasShows(page, click, "positive click");

            // a negative (right) click refines the same object from the previous logits
            var (nx, ny) = At(200, 150);
            var negative = await Act(page, "/interactive", () => page.Mouse.ClickAsync(nx, ny, new() { Button = MouseButton.Right }));
            Assert.That(negative.Prompt.Points.Select(p => p.Positive), Is.EqualTo(new[] { true, false }));
            Assert.That(negative.Refined, Is.True);
            await AssertCanvasShows(page, negative, "negative click");

            // drag a box
            var (x0, y0) = At(300, 250);
            var (x1, y1) = At(1500, 1000);
            var box = await Act(page, "/interactive", async () =>
            {
                await page.Mouse.MoveAsync(x0, y0);
                await page.Mouse.DownAsync();
                await page.Mouse.MoveAsync((x0 + x1) / 2, (y0 + y1) / 2, new() { Steps = 4 });
                await page.Mouse.MoveAsync(x1, y1, new() { Steps = 4 });
                await page.Mouse.UpAsync();
            });
            Assert.That(box.Prompt.Boxes, Has.Count.EqualTo(1));
            Assert.That(box.Prompt.Boxes[0].X0, Is.EqualTo(300).Within(3));
            Assert.That(box.Prompt.Boxes[0].Y1, Is.EqualTo(1000).Within(3));
            await AssertCanvasShows(page, box, "box");

            string outDir = Path.Combine(TestContext.CurrentContext.WorkDirectory, "browser");
            Directory.CreateDirectory(outDir);
            string shot = Path.Combine(outDir, "serve-page.png");
            await page.ScreenshotAsync(new PageScreenshotOptions { Path = shot });
            TestContext.AddTestAttachment(shot, "the page after a text prompt, two clicks and a box");
            TestContext.Out.WriteLine($"screenshot: {shot}");

            // downloads: the JSON is the response shown
            var download = await page.RunAndWaitForDownloadAsync(() => page.Keyboard.PressAsync("j"));
            string json = Path.Combine(outDir, "results.json");
            await download.SaveAsAsync(json);
            var saved = JsonSerializer.Deserialize<ResultDto>(File.ReadAllText(json), Web)!;
            Assert.That(saved.Objects.Select(o => o.Rle.Counts), Is.EqualTo(box.Objects.Select(o => o.Rle.Counts)));
            var png = await page.RunAndWaitForDownloadAsync(() => page.Keyboard.PressAsync("p"));
            string pngPath = Path.Combine(outDir, "overlay.png");
            await png.SaveAsAsync(pngPath);
            var overlay = ImageLoader.Load(pngPath);
            Assert.That((overlay.Width, overlay.Height), Is.EqualTo((box.Width, box.Height)));

            // undo goes back to the negative click's masks; clear removes every mask
            await page.Keyboard.PressAsync("u");
            await AssertCanvasShows(page, negative, "undo");
            await page.Keyboard.PressAsync("Escape");
            await page.WaitForFunctionAsync("() => window.sam3.state.result === null && !window.sam3.busy");
            Assert.That(await page.EvaluateAsync<int[]>(MaskRunsScript), Is.EqualTo(new[] { text.Width * text.Height }), "cleared");
            Assert.That(consoleErrors, Is.Empty, "no script errors on the page");
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }
}
