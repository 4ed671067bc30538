using System.Globalization;
using Microsoft.Extensions.Hosting;
using Sam3.Torch;
using Sam3.Torch.Loading;

namespace Sam3.Cli.Serve;

/// <summary><c>sam3 serve</c>: loads a checkpoint once and serves the page and the JSON API until Ctrl+C.</summary>
internal static class ServeCommand
{


    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional.Count > 0) throw new UsageException($"serve: unexpected argument '{a.Positional[0]}'");
        var defaults = new ServeOptions();
        var options = defaults with
        {
            Host = a.Value("host") ?? defaults.Host,
            Port = Int(a, "port", defaults.Port),
            DefaultThreshold = a.Double("threshold", defaults.DefaultThreshold),
            MaxImages = Int(a, "max-images", defaults.MaxImages),
            MaxUploadBytes = (long)(a.Double("max-upload-mb", defaults.MaxUploadBytes / 1048576.0) * 1048576),
            MaxImageSide = Int(a, "max-side", defaults.MaxImageSide),
        };
        options = options with { MaxImagePixels = Math.Min(defaults.MaxImagePixels, (long)options.MaxImageSide * options.MaxImageSide) };
        if (string.IsNullOrWhiteSpace(options.Host)) throw new UsageException("--host is empty");
        options.Validate();

        string checkpoint = a.Required("checkpoint");
        var configOption = a.Value("config");
        var files = ModelFolder.Locate(checkpoint, new Sam3ModelOptions
        {
            Config = configOption is null ? null : InspectCommand.ResolveConfig(configOption),
            TokenizerPath = a.Value("vocab"),
        });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var model = Sam3Model.Load(files.CheckpointPath, new Sam3ModelOptions
        {
            Config = files.Config, TokenizerPath = files.TokenizerPath, Device = a.Value("device") ?? "cpu",
        });
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "loaded {0} in {1:F1} s", Path.GetFileName(files.CheckpointPath), sw.Elapsed.TotalSeconds));
        using var engine = new ServeEngine(model, options);
        var app = ServeApp.Build(engine, stderr);
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (IOException e)
        {
            throw new Sam3Exception($"cannot listen on {options.Host}:{options.Port}: {e.Message}", e);
        }
        string address = ServeApp.Address(app);
        stdout.WriteLine($"sam3 serve: listening on {address} (page: {address}/, OpenAPI: {address}/openapi/v1.json); Ctrl+C stops");
        if (options.Host is not ("127.0.0.1" or "localhost" or "::1"))
            stderr.WriteLine($"sam3 serve: warning: listening on {options.Host}, not loopback: anyone who can reach this machine can use the model");
        app.WaitForShutdownAsync().GetAwaiter().GetResult();
        app.DisposeAsync().AsTask().GetAwaiter().GetResult();
        return 0;
    }

    private static int Int(CliArgs a, string name, int defaultValue)
    {
        var v = a.Value(name);
        if (v is null) return defaultValue;
        return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) ? n
            : throw new UsageException($"--{name} expects an integer, got '{v}'");
    }
}
