namespace Sam3.Cli.Serve;

/// <summary>Limits and settings of <c>sam3 serve</c>. Every client-controlled size is bounded here.</summary>
internal sealed record ServeOptions
{
    /// <summary>Interface to listen on; loopback unless the user asks otherwise.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 picks a free one (tests).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>Largest accepted request body (an uploaded image file), bytes.</summary>
    public long MaxUploadBytes { get; init; } = 20L * 1024 * 1024;
    /// <summary>Largest accepted JSON body (prompts), bytes.</summary>
    public long MaxJsonBytes { get; init; } = 256 * 1024;
    /// <summary>Largest accepted image side after decoding, pixels.</summary>
    public int MaxImageSide { get; init; } = 4096;
    /// <summary>Largest accepted image area after decoding, pixels.</summary>
    public long MaxImagePixels { get; init; } = 4096L * 4096;
    /// <summary>Images whose features are kept (least recently used ones are dropped).</summary>
    public int MaxImages { get; init; } = 8;
    /// <summary>Most clicks in one interactive request.</summary>
    public int MaxPoints { get; init; } = 64;
    /// <summary>Most box + point prompts accumulated on one image for the detector.</summary>
    public int MaxDetectorPrompts { get; init; } = 32;
    /// <summary>Longest text prompt, characters.</summary>
    public int MaxTextLength { get; init; } = 200;
    /// <summary>Default detector confidence threshold of a new image.</summary>
    public double DefaultThreshold { get; init; } = 0.5;

    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new UsageException($"--port must be in [0, 65535], got {Port}");
        if (MaxImages < 1) throw new UsageException($"--max-images must be at least 1, got {MaxImages}");
        if (MaxUploadBytes < 1024) throw new UsageException($"--max-upload-mb is too small ({MaxUploadBytes} bytes)");
        if (MaxImageSide < 16) throw new UsageException($"--max-side must be at least 16, got {MaxImageSide}");
        if (DefaultThreshold is < 0 or > 1 || double.IsNaN(DefaultThreshold)) throw new UsageException($"--threshold must be in [0,1], got {DefaultThreshold}");
    }
}

/// <summary>A client error: becomes a 4xx JSON response <c>{"error": message, "status": code}</c>.</summary>
internal sealed class ApiException(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}
