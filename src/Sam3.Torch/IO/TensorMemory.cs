using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// The address of a tensor's first element, through TorchSharp's own native entry point (<c>THSTensor_data</c>,
/// which TorchSharp does not expose publicly; unlike <c>Tensor.bytes</c> it has no 2 GiB span limit). The caller
/// guarantees a CPU tensor, contiguous wherever it reads past one element: the C# kernels (<c>SkinnyLinear</c>,
/// <c>MaskUpsampler</c>) and the benchmarks' page touch of the memory-mapped weights.
/// </summary>
internal static partial class TensorMemory
{
    [LibraryImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    private static partial IntPtr THSTensor_data(IntPtr handle);

    /// <summary>Address of the first element of <paramref name="tensor"/> (storage offset included).</summary>
    public static IntPtr DataPointer(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        return THSTensor_data(tensor.Handle);
    }
}
