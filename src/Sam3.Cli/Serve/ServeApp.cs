using System.Reflection;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.Json;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Sam3.Torch;

namespace Sam3.Cli.Serve;

/// <summary>
/// The HTTP surface of <c>sam3 serve</c> (ASP.NET Core minimal API): the page (embedded static files), the JSON API under
/// <c>/api</c>, and its OpenAPI document at <c>/openapi/v1.json</c>. No endpoint takes a server path: images arrive as
/// request bodies, results leave as response bodies.
/// </summary>
internal static class ServeApp
{
    private static readonly Dictionary<string, string> StaticFiles = new(StringComparer.Ordinal)
    {
        ["/"] = "index.html", ["/index.html"] = "index.html", ["/app.js"] = "app.js", ["/app.css"] = "app.css",
    };

    /// <summary>Builds the application around a loaded engine; <see cref="WebApplication.StartAsync"/> starts listening.</summary>
    public static WebApplication Build(ServeEngine engine, TextWriter? log = null)
    {
        var o = engine.Options;
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ApplicationName = typeof(ServeApp).Assembly.GetName().Name });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = o.MaxUploadBytes;
            k.AddServerHeader = false;
        });
        builder.WebHost.UseUrls($"http://{(o.Host.Contains(':') ? $"[{o.Host}]" : o.Host)}:{o.Port}");
        builder.Services.Configure<JsonOptions>(j =>
        {
            j.SerializerOptions.PropertyNamingPolicy = JsonNamingPolicy.CamelCase;
            j.SerializerOptions.DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull;
        });
        builder.Services.Configure<RouteHandlerOptions>(r => r.ThrowOnBadRequest = true);
        builder.Services.AddRoutingCore();
        builder.Services.AddOpenApi(a => a.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "sam3 serve";
            doc.Info.Description = "SAM3 image segmentation: upload an image, prompt it with text, boxes, points or clicks; masks come back as COCO RLE.";
            doc.Info.Version = Version;
            return Task.CompletedTask;
        }));
        var app = builder.Build();
        app.Use(ErrorsAsJson(log));
        app.Use(async (ctx, next) =>
        {
            // JSON prompts are small: only the upload endpoint may use the whole upload limit
            if (!(HttpMethods.IsPost(ctx.Request.Method) && ctx.Request.Path.Equals("/api/images")))
            {
                var f = ctx.Features.Get<IHttpMaxRequestBodySizeFeature>();
                if (f is { IsReadOnly: false }) f.MaxRequestBodySize = o.MaxJsonBytes;
            }
            ctx.Response.Headers.XContentTypeOptions = "nosniff";
            await next(ctx);
        });
        app.UseStatusCodePages(async sc =>
        {
            var r = sc.HttpContext.Response;
            if (r.HasStarted || r.ContentLength is > 0 || r.ContentType is not null) return;
            await WriteError(sc.HttpContext, r.StatusCode, r.StatusCode switch
            {
                404 => $"no such endpoint: {sc.HttpContext.Request.Method} {sc.HttpContext.Request.Path}",
                415 => $"unsupported content type '{sc.HttpContext.Request.ContentType ?? "none"}' for {sc.HttpContext.Request.Path}",
                405 => $"method {sc.HttpContext.Request.Method} not allowed on {sc.HttpContext.Request.Path}",
                _ => $"HTTP {r.StatusCode}",
            });
        });
        app.MapOpenApi("/openapi/{documentName}.json");
        MapStatic(app);
        MapApi(app, engine);
        return app;
    }

    /// <summary>Listening address once started (e.g. <c>http://127.0.0.1:41234</c>).</summary>
    public static string Address(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();

    public static string Version => typeof(ServeApp).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
                                   ?? typeof(ServeApp).Assembly.GetName().Version?.ToString(3) ?? "0";

    private static void MapStatic(WebApplication app)
    {
        foreach (var (route, file) in StaticFiles)
        {
            string type = Path.GetExtension(file) switch { ".js" => "text/javascript; charset=utf-8", ".css" => "text/css; charset=utf-8", _ => "text/html; charset=utf-8" };
            app.MapGet(route, () =>
            {
                using var s = typeof(ServeApp).Assembly.GetManifestResourceStream("sam3.serve." + file)
                              ?? throw new InvalidOperationException($"embedded page file {file} is missing from the build");
                using var ms = new MemoryStream();
                s.CopyTo(ms);
                return Results.Bytes(ms.ToArray(), type);
            }).ExcludeFromDescription();
        }
    }

    private static void MapApi(WebApplication app, ServeEngine e)
    {
        var api = app.MapGroup("/api");
        api.MapGet("/info", () =>
        {
            var o = e.Options;
            return new InfoDto(Version, Path.GetFileName(e.Model.CheckpointPath ?? "?"), e.Model.Device, e.Model.ParameterCount, e.Model.HasInteractivePredictor,
                new LimitsDto(o.MaxUploadBytes, o.MaxImageSide, o.MaxImagePixels, o.MaxImages, o.MaxPoints, o.MaxDetectorPrompts, o.MaxTextLength));
        }).WithSummary("Model and request limits");

        api.MapPost("/images", async (HttpRequest req, CancellationToken ct) =>
        {
            var (data, name) = await ReadUpload(req, e.Options, ct);
            var dto = await e.RunAsync(() => e.Upload(data, name), ct);
            return Results.Created($"/api/images/{dto.ImageId}", dto);
        }).WithSummary("Upload an image (raw image/* body, or multipart form with one file); computes and caches its features")
          .Accepts<byte[]>("image/jpeg", "image/png", "image/webp", "image/bmp", "multipart/form-data")
          .Produces<ImageDto>(201).Produces<ErrorDto>(400).Produces<ErrorDto>(413).Produces<ErrorDto>(415);

        api.MapGet("/images/{id}", (string id, CancellationToken ct) => e.RunAsync(() => ServeEngine.Describe(e.Get(id)), ct))
           .WithSummary("The image's size, threshold and current detector prompts").Produces<ErrorDto>(404);
        api.MapDelete("/images/{id}", async (string id, CancellationToken ct) =>
        {
            await e.RunAsync(() => { e.Delete(id); return 0; }, ct);
            return Results.NoContent();
        }).WithSummary("Forget an image and its features").Produces<ErrorDto>(404);

        api.MapPost("/images/{id}/text", (string id, TextRequest body, bool? overlay, CancellationToken ct) =>
                e.RunAsync(() => e.Text(e.Get(id), body.Text, overlay == true), ct))
           .WithSummary("Set (replace) the text prompt and find every instance (detector)").Produces<ErrorDto>(400).Produces<ErrorDto>(404);
        api.MapPost("/images/{id}/boxes", (string id, BoxIn body, bool? overlay, CancellationToken ct) =>
                e.RunAsync(() => e.AddBox(e.Get(id), body, overlay == true), ct))
           .WithSummary("Add a positive or negative exemplar box (pixels xyxy) to the detector prompt").Produces<ErrorDto>(400).Produces<ErrorDto>(404);
        api.MapPost("/images/{id}/points", (string id, PointIn body, bool? overlay, CancellationToken ct) =>
                e.RunAsync(() => e.AddPoint(e.Get(id), body, overlay == true), ct))
           .WithSummary("Add a positive or negative point to the detector prompt").Produces<ErrorDto>(400).Produces<ErrorDto>(404);
        api.MapPost("/images/{id}/threshold", (string id, ThresholdRequest body, bool? overlay, CancellationToken ct) =>
                e.RunAsync(() => e.SetThreshold(e.Get(id), body.Threshold, overlay == true), ct))
           .WithSummary("Change the detector's confidence threshold (re-filters the last outputs, no network rerun)").Produces<ErrorDto>(400).Produces<ErrorDto>(404);
        api.MapPost("/images/{id}/interactive", (string id, InteractiveRequest body, bool? overlay, CancellationToken ct) =>
                e.RunAsync(() => e.Interactive(e.Get(id), body, overlay == true), ct))
           .WithSummary("SAM1-style prediction of one object from clicks and/or a box; refine=true feeds the previous best logits back")
           .Produces<ErrorDto>(400).Produces<ErrorDto>(404);
        api.MapPost("/images/{id}/reset", (string id, CancellationToken ct) => e.RunAsync(() => e.Reset(e.Get(id)), ct))
           .WithSummary("Clear every prompt and the interactive logits (the features stay)").Produces<ErrorDto>(404);
        api.MapGet("/images/{id}/result", (string id, CancellationToken ct) =>
                e.RunAsync(() => e.Get(id).LastResult is { } r ? Results.Json(r) : throw new ApiException(404, "no result yet for this image"), ct))
           .WithSummary("The last result of this image").Produces<ResultDto>().Produces<ErrorDto>(404);
        api.MapGet("/images/{id}/overlay.png", async (string id, CancellationToken ct) =>
                Results.Bytes(await e.RunAsync(() => e.OverlayPng(e.Get(id)), ct), "image/png"))
           .WithSummary("The last result drawn on the image (PNG)").Produces(200, contentType: "image/png").Produces<ErrorDto>(404);
    }

    private static async Task<(byte[] Data, string? Name)> ReadUpload(HttpRequest req, ServeOptions o, CancellationToken ct)
    {
        if (req.ContentLength is long n && n > o.MaxUploadBytes)
            throw new ApiException(413, $"upload of {n} bytes exceeds the limit of {o.MaxUploadBytes} bytes");
        if (req.HasFormContentType)
        {
            var form = await req.ReadFormAsync(ct);
            if (form.Files.Count != 1) throw new ApiException(400, $"send exactly one file in the form, got {form.Files.Count}");
            var file = form.Files[0];
            using var ms = new MemoryStream();
            await file.CopyToAsync(ms, ct);
            return (ms.ToArray(), file.FileName);
        }
        string? type = req.ContentType;
        if (type is null || !(type.StartsWith("image/", StringComparison.OrdinalIgnoreCase) || type.StartsWith("application/octet-stream", StringComparison.OrdinalIgnoreCase)))
            throw new ApiException(415, $"send the image as an image/* (or application/octet-stream) body or a multipart form, not '{type ?? "no content type"}'");
        using var body = new MemoryStream();
        await req.Body.CopyToAsync(body, ct);
        if (body.Length == 0) throw new ApiException(400, "the request body is empty");
        return (body.ToArray(), null);
    }

    private static Func<HttpContext, RequestDelegate, Task> ErrorsAsJson(TextWriter? log) => async (ctx, next) =>
    {
        try
        {
            await next(ctx);
        }
        catch (Exception ex) when (!ctx.Response.HasStarted && !ctx.RequestAborted.IsCancellationRequested)
        {
            var (status, message) = ex switch
            {
                ApiException a => (a.Status, a.Message),
                BadHttpRequestException b => (b.StatusCode, b.StatusCode == 413
                    ? "request body too large"
                    : (b.InnerException is JsonException j ? $"invalid JSON body: {j.Message}" : b.Message)),
                Sam3PromptException or Sam3ImageException => (400, ex.Message),
                ArgumentException => (400, ex.Message),
                _ => (500, $"internal error: {ex.GetType().Name}: {ex.Message}"),
            };
            if (status >= 500) log?.WriteLine($"sam3 serve: {ctx.Request.Method} {ctx.Request.Path}: {ex}");
            ctx.Response.Clear();
            await WriteError(ctx, status, message);
        }
    };

    private static Task WriteError(HttpContext ctx, int status, string message)
    {
        ctx.Response.StatusCode = status;
        return ctx.Response.WriteAsJsonAsync(new ErrorDto(message, status));
    }
}
