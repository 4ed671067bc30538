using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Cli.Serve;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Serve;

/// <summary>
/// <c>sam3 serve</c> over real HTTP: an in-process Kestrel server on a free loopback port around the tiny model. Expected
/// values come from the parity fixtures (fixture a's scores) or from the library called directly on the same model.
/// </summary>
[TestFixture, Category("Fast")]
public class ServeApiTests
{
    private string _dir = null!;
    private Sam3Model _model = null!;
    private ServeEngine _engine = null!;
    private WebApplication _app = null!;
    private HttpClient _http = null!;

    internal static readonly ServeOptions TestLimits = new()
    {
        Port = 0, MaxImages = 3, MaxUploadBytes = 2 * 1024 * 1024, MaxImageSide = 2048, MaxImagePixels = 2048L * 2048, MaxPoints = 8,
        MaxDetectorPrompts = 4, MaxTextLength = 40,
    };

    /// <summary>A model folder as downloaded: symlinks to the tiny checkpoint, its config and the tokenizer.</summary>
    internal static string TinyFolder(string dir)
    {
        Directory.CreateDirectory(dir);
        File.CreateSymbolicLink(Path.Combine(dir, "model.safetensors"), SharedData.Parity("tiny", "model.safetensors"));
        File.CreateSymbolicLink(Path.Combine(dir, "config.json"), SharedData.Parity("tiny", "config.json"));
        File.CreateSymbolicLink(Path.Combine(dir, "bpe_simple_vocab_16e6.txt.gz"), SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
        return dir;
    }

    [OneTimeSetUp]
    public async Task SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sam3-serve-tests-" + Guid.NewGuid().ToString("N"));
        _model = Sam3Model.Load(TinyFolder(Path.Combine(_dir, "tiny")));
        _engine = new ServeEngine(_model, TestLimits);
        _app = ServeApp.Build(_engine);
        await _app.StartAsync();
        _http = new HttpClient { BaseAddress = new Uri(ServeApp.Address(_app)) };
    }

    [OneTimeTearDown]
    public async Task TearDown()
    {
        _http?.Dispose();
        if (_app is not null) { await _app.StopAsync(); await _app.DisposeAsync(); }
        _engine?.Dispose();
        _model?.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    private async Task<string> Upload(string file = "test_image.jpg")
    {
        using var content = new ByteArrayContent(File.ReadAllBytes(SharedData.Parity("inputs", file)));
        content.Headers.ContentType = new MediaTypeHeaderValue("image/jpeg");
        using var r = await _http.PostAsync("/api/images", content);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.Created), await r.Content.ReadAsStringAsync());
        var dto = (await r.Content.ReadFromJsonAsync<ImageDto>(Web))!;
        return dto.ImageId;
    }

    private async Task<(HttpStatusCode Status, T? Body, string Raw)> Post<T>(string url, object body)
    {
        using var r = await _http.PostAsJsonAsync(url, body, Web);
        string raw = await r.Content.ReadAsStringAsync();
        return (r.StatusCode, r.IsSuccessStatusCode ? JsonSerializer.Deserialize<T>(raw, Web) : default, raw);
    }

    private static string Rle(Sam3.Torch.Visualization.BinaryMask m) => CocoRle.Encode(m.Data, m.Height, m.Width).Counts;

    private static void AssertError(HttpStatusCode status, string raw, HttpStatusCode expected, string fragment)
    {
        Assert.That(status, Is.EqualTo(expected), raw);
        var e = JsonSerializer.Deserialize<ErrorDto>(raw, Web)!;
        Assert.That(e.Status, Is.EqualTo((int)expected));
        Assert.That(e.Error, Does.Contain(fragment));
    }

    [Test]
    public async Task TextPromptGivesTheReferenceDetectionsAsCocoRle()
    {
        using var a = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "a_image_text.json")));
        var p = a.RootElement.GetProperty("parameters");
        double threshold = p.GetProperty("confidence_threshold")[0].GetDouble();
        var expected = p.GetProperty("all_kept_scores")[0].EnumerateArray().Select(x => x.GetDouble()).ToArray();

        string id = await Upload();
        var (s1, _, raw1) = await Post<ResultDto>($"/api/images/{id}/threshold", new ThresholdRequest(threshold));
        Assert.That(s1, Is.EqualTo(HttpStatusCode.OK), raw1);
        var (s2, r, raw2) = await Post<ResultDto>($"/api/images/{id}/text?overlay=true", new TextRequest(p.GetProperty("prompt").GetString()));
        Assert.That(s2, Is.EqualTo(HttpStatusCode.OK), raw2);
        Assert.That(r!.Mode, Is.EqualTo("detector"));
        Assert.That(r.Objects.Select(o => (double)o.Score), Is.EqualTo(expected).Within(1e-4), "fixture a's kept scores");
        foreach (var o in r.Objects)
        {
            var rle = new CocoRle(o.Rle.Size, o.Rle.Counts);
            Assert.That((rle.Height, rle.Width), Is.EqualTo((720, 1280)));
            Assert.That(rle.Area(), Is.EqualTo(o.Area).And.GreaterThan(0));
            Assert.That(o.Box, Has.Length.EqualTo(4));
            Assert.That(o.Box[2], Is.GreaterThan(o.Box[0]));
        }
        var overlay = ImageLoader.Decode(Convert.FromBase64String(r.OverlayPng!));
        Assert.That((overlay.Width, overlay.Height), Is.EqualTo((1280, 720)));
        // the last result is kept for GET and the PNG download
        var last = await _http.GetFromJsonAsync<ResultDto>($"/api/images/{id}/result", Web);
        Assert.That(last!.Objects.Select(o => o.Rle.Counts), Is.EqualTo(r.Objects.Select(o => o.Rle.Counts)));
        using var png = await _http.GetAsync($"/api/images/{id}/overlay.png");
        Assert.That(png.Content.Headers.ContentType!.MediaType, Is.EqualTo("image/png"));
        Assert.That(await png.Content.ReadAsByteArrayAsync(), Is.EqualTo(Convert.FromBase64String(r.OverlayPng!)));
        // threshold change re-filters without rerunning: above the second score only the first stays
        var (_, r3, _) = await Post<ResultDto>($"/api/images/{id}/threshold", new ThresholdRequest((expected[0] + expected[1]) / 2));
        Assert.That(r3!.Objects, Has.Count.EqualTo(1));
        Assert.That(r3.Objects[0].Score, Is.EqualTo(expected[0]).Within(1e-4));
    }

    [Test]
    public async Task InteractiveClicksMatchTheLibraryAndRefineFromThePreviousLogits()
    {
        string id = await Upload("truck.jpg");
        var click = new PointIn(500, 375);
        var sw = Stopwatch.StartNew();
        var (s, r, raw) = await Post<ResultDto>($"/api/images/{id}/interactive", new InteractiveRequest([click], null));
        double clickMs = sw.Elapsed.TotalMilliseconds;
        Assert.That(s, Is.EqualTo(HttpStatusCode.OK), raw);
        TestContext.Out.WriteLine($"one interactive click through HTTP: {clickMs:F0} ms (model {r!.ElapsedMs:F0} ms)");

        // the same prompt through the library on the same model
        var image = ImageLoader.Load(SharedData.Parity("inputs", "truck.jpg"));
        var predictor = _model.CreateInteractivePredictor();
        using var state = predictor.SetImage(image);
        var direct = predictor.Predict(state, new InteractivePrompt { Points = [PointPrompt.Pixel(500, 375)], MultimaskOutput = true });
        Assert.That(r.Objects, Has.Count.EqualTo(3), "a single click returns 3 candidates");
        Assert.That(r.Best, Is.EqualTo(direct.BestIndex()));
        Assert.That(r.Objects.Select(o => o.Score), Is.EqualTo(direct.IouScores()).Within(1e-6));
        for (int k = 0; k < 3; k++)
            Assert.That(r.Objects[k].Rle.Counts, Is.EqualTo(Rle(direct.Masks()[k])), $"mask {k}");

        // second click with refinement: the library fed with the first call's best low-res logits (several clicks: one mask)
        var neg = new PointIn(100, 100, false);
        var (s2, r2, raw2) = await Post<ResultDto>($"/api/images/{id}/interactive", new InteractiveRequest([click, neg], null, Refine: true));
        Assert.That(s2, Is.EqualTo(HttpStatusCode.OK), raw2);
        Assert.That(r2!.Refined, Is.True);
        PointPrompt[] two = [PointPrompt.Pixel(500, 375), PointPrompt.Pixel(100, 100, false)];
        var direct2 = predictor.Predict(state, new InteractivePrompt { Points = two, MaskInput = direct.BestLowResLogits(), MultimaskOutput = false });
        Assert.That(r2.Objects, Has.Count.EqualTo(1));
        Assert.That(r2.Objects[0].Rle.Counts, Is.EqualTo(Rle(direct2.Masks()[0])));
        Assert.That(r2.Objects[0].Score, Is.EqualTo(direct2.IouScores()[0]).Within(1e-6));
        // without refinement: the library without a mask input, a different mask
        var (_, plain, _) = await Post<ResultDto>($"/api/images/{id}/interactive", new InteractiveRequest([click, neg], null));
        var direct3 = predictor.Predict(state, new InteractivePrompt { Points = two, MultimaskOutput = false });
        Assert.That(plain!.Refined, Is.False);
        Assert.That(plain.Objects[0].Rle.Counts, Is.EqualTo(Rle(direct3.Masks()[0])));
        Assert.That(plain.Objects[0].Rle.Counts, Is.Not.EqualTo(r2.Objects[0].Rle.Counts), "the mask input changes the answer");

        // a box
        var (s3, r3, raw3) = await Post<ResultDto>($"/api/images/{id}/interactive", new InteractiveRequest(null, new BoxIn(100, 200, 900, 700)));
        Assert.That(s3, Is.EqualTo(HttpStatusCode.OK), raw3);
        Assert.That(r3!.Refined, Is.False);
        // reset forgets the logits: refine alone is then an empty prompt
        Assert.That((await Post<ResultDto>($"/api/images/{id}/reset", new { })).Status, Is.EqualTo(HttpStatusCode.OK));
        var (s4, _, raw4) = await Post<ResultDto>($"/api/images/{id}/interactive", new InteractiveRequest(null, null, Refine: true));
        AssertError(s4, raw4, HttpStatusCode.BadRequest, "at least one point");
    }

    [Test]
    public async Task RequestsAreValidatedWithJsonErrors()
    {
        string id = await Upload();
        AssertError(HttpStatusCode.NotFound, await (await _http.PostAsJsonAsync("/api/images/0123/text", new TextRequest("x"))).Content.ReadAsStringAsync(),
                    HttpStatusCode.NotFound, "unknown image id");
        var cases = new (string Url, object Body, string Fragment)[]
        {
            ($"/api/images/{id}/text", new TextRequest(" "), "non-empty"),
            ($"/api/images/{id}/text", new TextRequest(new string('a', 41)), "at most 40"),
            ($"/api/images/{id}/boxes", new BoxIn(10, 10, 5, 50), "x0 < x1"),
            ($"/api/images/{id}/boxes", new BoxIn(10, 10, 5000, 50), "outside"),
            ($"/api/images/{id}/points", new PointIn(-1, 3), "outside"),
            ($"/api/images/{id}/threshold", new ThresholdRequest(1.5), "[0, 1]"),
            ($"/api/images/{id}/interactive", new InteractiveRequest(Enumerable.Range(0, 9).Select(i => new PointIn(i, i)).ToList(), null), "at most 8"),
            ($"/api/images/{id}/interactive", new InteractiveRequest(null, new BoxIn(1, 1, 50, 50, false)), "positive box"),
        };
        foreach (var (url, body, fragment) in cases)
        {
            var (s, _, raw) = await Post<ResultDto>(url, body);
            AssertError(s, raw, HttpStatusCode.BadRequest, fragment);
        }
        // malformed JSON
        using (var r = await _http.PostAsync($"/api/images/{id}/text", new StringContent("{\"text\":", Encoding.UTF8, "application/json")))
            AssertError(r.StatusCode, await r.Content.ReadAsStringAsync(), HttpStatusCode.BadRequest, "JSON");
        // detector prompt count cap (4)
        for (int i = 0; i < 4; i++)
            Assert.That((await Post<ResultDto>($"/api/images/{id}/points", new PointIn(10 + i, 10))).Status, Is.EqualTo(HttpStatusCode.OK));
        var (sc, _, rawc) = await Post<ResultDto>($"/api/images/{id}/points", new PointIn(20, 20));
        AssertError(sc, rawc, HttpStatusCode.BadRequest, "at most 4");
        // uploads: size limit, content type, not an image, dimension cap
        using (var big = new ByteArrayContent(new byte[3 * 1024 * 1024]))
        {
            big.Headers.ContentType = new MediaTypeHeaderValue("image/png");
            // the server answers before reading the body; a client that does not wait for 100-continue sees a reset
            using var request = new HttpRequestMessage(HttpMethod.Post, "/api/images") { Content = big };
            request.Headers.ExpectContinue = true;
            using var r = await _http.SendAsync(request);
            AssertError(r.StatusCode, await r.Content.ReadAsStringAsync(), HttpStatusCode.RequestEntityTooLarge, "limit");
        }
        using (var text = new StringContent("hello", Encoding.UTF8, "text/plain"))
        {
            using var r = await _http.PostAsync("/api/images", text);
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.UnsupportedMediaType));
        }
        using (var junk = new ByteArrayContent(Encoding.ASCII.GetBytes("not an image at all")))
        {
            junk.Headers.ContentType = new MediaTypeHeaderValue("image/jpeg");
            using var r = await _http.PostAsync("/api/images", junk);
            AssertError(r.StatusCode, await r.Content.ReadAsStringAsync(), HttpStatusCode.BadRequest, "not an image");
        }
        using (var wide = new ByteArrayContent(new RgbImage(2100, 8, new byte[2100 * 8 * 3]).EncodePng()))
        {
            wide.Headers.ContentType = new MediaTypeHeaderValue("image/png");
            using var r = await _http.PostAsync("/api/images", wide);
            AssertError(r.StatusCode, await r.Content.ReadAsStringAsync(), HttpStatusCode.BadRequest, "2048");
        }
        using (var r = await _http.GetAsync("/api/no-such-thing"))
            AssertError(r.StatusCode, await r.Content.ReadAsStringAsync(), HttpStatusCode.NotFound, "no such endpoint");
    }

    [Test]
    public async Task FeaturesAreCachedInABoundedLeastRecentlyUsedSet()
    {
        var ids = new List<string>();
        for (int i = 0; i < TestLimits.MaxImages + 1; i++) ids.Add(await Upload());
        Assert.That(_engine.ImageCount, Is.EqualTo(TestLimits.MaxImages));
        using (var r = await _http.GetAsync($"/api/images/{ids[0]}"))
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.NotFound), "the oldest image was dropped");
        using (var r = await _http.GetAsync($"/api/images/{ids[^1]}"))
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        using (var r = await _http.DeleteAsync($"/api/images/{ids[^1]}"))
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.NoContent));
        using (var r = await _http.GetAsync($"/api/images/{ids[^1]}"))
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
    }

    [Test]
    public async Task ConcurrentRequestsOnOneModelGiveTheSequentialAnswers()
    {
        string a = await Upload("truck.jpg"), b = await Upload("test_image.jpg");
        var requests = Enumerable.Range(0, 8).Select(i => (Id: i % 2 == 0 ? a : b, Body: new InteractiveRequest([new PointIn(200 + 50 * i, 300)], null, Multimask: false))).ToList();
        var sequential = new List<string>();
        foreach (var q in requests) sequential.Add((await Post<ResultDto>($"/api/images/{q.Id}/interactive", q.Body)).Body!.Objects[0].Rle.Counts);
        var parallel = await Task.WhenAll(requests.Select(q => Post<ResultDto>($"/api/images/{q.Id}/interactive", q.Body)));
        Assert.That(parallel.Select(p => p.Status), Is.All.EqualTo(HttpStatusCode.OK));
        Assert.That(parallel.Select(p => p.Body!.Objects[0].Rle.Counts), Is.EqualTo(sequential));
    }

    [Test]
    public async Task ServesAnOpenApiDocumentAndThePage()
    {
        using var doc = JsonDocument.Parse(await _http.GetStringAsync("/openapi/v1.json"));
        var paths = doc.RootElement.GetProperty("paths").EnumerateObject().Select(p => p.Name).ToList();
        Assert.That(paths, Is.SupersetOf(new[] { "/api/images", "/api/images/{id}/text", "/api/images/{id}/interactive", "/api/images/{id}/boxes",
                                                 "/api/images/{id}/points", "/api/images/{id}/reset", "/api/images/{id}/threshold", "/api/images/{id}/overlay.png" }));
        // no parameter of any endpoint names a file on the server
        var names = doc.RootElement.GetProperty("paths").EnumerateObject().SelectMany(p => p.Value.EnumerateObject())
            .SelectMany(op => op.Value.TryGetProperty("parameters", out var ps) ? ps.EnumerateArray().Select(x => x.GetProperty("name").GetString()!) : [])
            .Distinct().ToList();
        Assert.That(names, Is.SubsetOf(new[] { "id", "overlay" }));
        string page = await _http.GetStringAsync("/");
        Assert.That(page, Does.Contain("<canvas"));
        Assert.That(await _http.GetStringAsync("/app.js"), Does.Contain("/api/images"));
    }

    [Test]
    public void CommandLineDefaultsToLoopbackAndValidatesItsOptions()
    {
        Assert.That(new ServeOptions().Host, Is.EqualTo("127.0.0.1"));
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.That(Program.Run(["serve", "--help"], stdout, stderr), Is.EqualTo(0));
        Assert.That(stdout.ToString(), Does.Contain("--checkpoint <PATH>"));
        Assert.That(Program.Run(["serve"], stdout, stderr), Is.EqualTo(2));
        Assert.That(stderr.ToString(), Does.Contain("--checkpoint"));
        stderr.GetStringBuilder().Clear();
        Assert.That(Program.Run(["serve", "--checkpoint", _dir, "--port", "70000"], stdout, stderr), Is.EqualTo(2));
        Assert.That(stderr.ToString(), Does.Contain("--port"));
    }
}
