using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// The address of a tensor's first element, through TorchSharp's own native entry point (<c>THSTensor_data</c>,
/// which TorchSharp does not expose publicly). For code that reads a tensor's memory in place (the benchmarks' page
/// touch of the memory-mapped weights).
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
