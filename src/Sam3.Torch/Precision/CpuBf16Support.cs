namespace Sam3.Torch.Precision;

/// <summary>
/// Whether this CPU has native bf16 arithmetic, from the <c>flags</c> line of <c>/proc/cpuinfo</c>: <c>avx512_bf16</c>
/// (AVX-512 BF16 dot products) or <c>amx_bf16</c> (AMX tiles). LibTorch's fast bf16 GEMM needs one of them; without
/// them (AVX2-only or AVX-512 without BF16) bf16 matmuls fall back to slow kernels, several times slower than fp32.
/// </summary>
internal static class CpuBf16Support
{
    /// <summary>The flags that give LibTorch a native bf16 GEMM.</summary>
    public static readonly IReadOnlyList<string> NativeFlags = ["avx512_bf16", "amx_bf16"];

    private static readonly Lazy<(bool? Native, string[] Found)> Detected = new(() => Detect("/proc/cpuinfo"));

    /// <summary>True/false from this machine's <c>/proc/cpuinfo</c>; null where it cannot be read (not Linux).</summary>
    public static bool? HasNativeBf16 => Detected.Value.Native;

    /// <summary>Detects the flags in a cpuinfo-formatted file (null when the file is missing or has no flags line).</summary>
    public static (bool? Native, string[] Found) Detect(string cpuinfoPath)
    {
        try
        {
            if (!File.Exists(cpuinfoPath)) return (null, []);
            return Parse(File.ReadLines(cpuinfoPath));
        }
        catch (IOException) { return (null, []); }
        catch (UnauthorizedAccessException) { return (null, []); }
    }

    /// <summary>Parses cpuinfo lines: the first <c>flags</c> line decides (all cores of a machine share it).</summary>
    public static (bool? Native, string[] Found) Parse(IEnumerable<string> lines)
    {
        foreach (var line in lines)
        {
            int colon = line.IndexOf(':');
            if (colon < 0 || line[..colon].Trim() != "flags") continue;
            var flags = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var found = NativeFlags.Where(f => flags.Contains(f, StringComparer.Ordinal)).ToArray();
            return (found.Length > 0, found);
        }
        return (null, []);
    }

    /// <summary>How <see cref="SlowBf16Note"/> begins (the CLI prints that load note on stderr).</summary>
    public const string SlowNotePrefix = "bf16 on this CPU";

    /// <summary>
    /// The one-line note for a bf16 model on a CPU without native bf16 (null when the device is not the CPU, or the CPU
    /// has the flags, or they cannot be read).
    /// </summary>
    public static string? SlowBf16Note(TorchSharp.DeviceType device, bool? native)
    {
        if (device != TorchSharp.DeviceType.CPU || native != false) return null;
        return SlowNotePrefix + ": it has neither avx512_bf16 nor amx_bf16, so LibTorch's bf16 matrix products run on slow "
             + "fallback kernels, several times slower than fp32; float32 is the CPU default (use bf16 on CUDA or on CPUs with those flags)";
    }
}
