using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>dtype names and sizes shared by the checkpoint readers, writers and manifests.</summary>
internal static class CheckpointDTypes
{
    public static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 or ScalarType.ComplexFloat32 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        ScalarType.Int8 or ScalarType.Byte or ScalarType.Bool => 1,
        ScalarType.ComplexFloat64 => 16,
        _ => throw new Sam3CheckpointException($"unsupported dtype {t}"),
    };

    public static bool IsFloating(ScalarType t) =>
        t is ScalarType.Float64 or ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16;

    public static bool IsComplex(ScalarType t) => t is ScalarType.ComplexFloat32 or ScalarType.ComplexFloat64;

    /// <summary>The real dtype of a complex dtype's components (complex64 → float32).</summary>
    public static ScalarType RealOf(ScalarType t) => t switch
    {
        ScalarType.ComplexFloat32 => ScalarType.Float32,
        ScalarType.ComplexFloat64 => ScalarType.Float64,
        _ => t,
    };

    /// <summary>PyTorch dtype names as printed by <c>str(tensor.dtype)</c> without "torch." (manifests use them).</summary>
    public static ScalarType FromPythonName(string name) => name.StartsWith("torch.", StringComparison.Ordinal) ? FromPythonName(name[6..]) : name switch
    {
        "float32" or "float" => ScalarType.Float32,
        "float64" or "double" => ScalarType.Float64,
        "float16" or "half" => ScalarType.Float16,
        "bfloat16" => ScalarType.BFloat16,
        "int64" or "long" => ScalarType.Int64,
        "int32" or "int" => ScalarType.Int32,
        "int16" or "short" => ScalarType.Int16,
        "int8" => ScalarType.Int8,
        "uint8" => ScalarType.Byte,
        "bool" => ScalarType.Bool,
        "complex64" or "cfloat" => ScalarType.ComplexFloat32,
        "complex128" or "cdouble" => ScalarType.ComplexFloat64,
        _ => throw new Sam3CheckpointException($"unsupported dtype '{name}'"),
    };

    public static string ToPythonName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.Float64 => "float64",
        ScalarType.Float16 => "float16",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Int64 => "int64",
        ScalarType.Int32 => "int32",
        ScalarType.Int16 => "int16",
        ScalarType.Int8 => "int8",
        ScalarType.Byte => "uint8",
        ScalarType.Bool => "bool",
        ScalarType.ComplexFloat32 => "complex64",
        ScalarType.ComplexFloat64 => "complex128",
        _ => t.ToString(),
    };
}
