namespace Sam3.Torch.IO;

/// <summary>
/// The length of the file a path leads to. <c>new FileInfo(path).Length</c> is the length of a symbolic link itself
/// (its target's name), not of the file it points to; opening the file follows the link.
/// </summary>
internal static class FileLength
{
    public static long Of(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 1);
        return fs.Length;
    }
}
