namespace Sam3.Torch.IO;

/// <summary>
/// One run at a time per output: a lock file (<c>.sam3.lock</c> in an output folder, <c>.NAME.sam3.lock</c> beside an
/// output file) held open with <see cref="FileShare.None"/>, which .NET on Unix backs with an advisory <c>flock</c>
/// (released by the kernel when the process ends, so a crashed run leaves no stale lock). A second run on the same
/// output fails at once with one line instead of silently replacing the first run's results. The file is removed when
/// the run ends.
/// </summary>
internal sealed class RunLock : IDisposable
{
    public const string FolderLockName = ".sam3.lock";
    private readonly FileStream _stream;
    private readonly string _path;

    private RunLock(FileStream stream, string path)
    {
        _stream = stream;
        _path = path;
    }

    /// <summary>Locks the output folder <paramref name="folder"/> (which must exist).</summary>
    public static RunLock ForFolder(string folder) => Acquire(Path.Combine(Path.GetFullPath(folder), FolderLockName), folder);

    /// <summary>Locks the output file <paramref name="file"/> (its folder must exist).</summary>
    public static RunLock ForFile(string file)
    {
        string full = Path.GetFullPath(file);
        return Acquire(Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.sam3.lock"), file);
    }

    private static RunLock Acquire(string lockPath, string what)
    {
        try
        {
            var fs = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, bufferSize: 1, FileOptions.None);
            fs.SetLength(0);
            fs.Write(System.Text.Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n"));
            fs.Flush();
            return new RunLock(fs, lockPath);
        }
        catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException && File.Exists(lockPath))
        {
            throw new Sam3Exception($"{what} is in use by another sam3 run (or fine-tuning call) (lock {lockPath}); wait for it to finish or choose another output", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new Sam3Exception($"{what}: cannot create files there ({e.Message})", e);
        }
    }

    public void Dispose()
    {
        try { File.Delete(_path); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        _stream.Dispose();
    }
}
