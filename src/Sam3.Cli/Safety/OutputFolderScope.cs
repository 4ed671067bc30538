using Sam3.Torch.IO;
namespace Sam3.Cli;

/// <summary>
/// An output folder made by this run: removed again (with the run's lock file) when the run fails before writing
/// anything into it, so that a failed run leaves no trace. A folder that existed before is never removed.
/// </summary>
internal sealed class OutputFolderScope(string folder, bool created) : IDisposable
{
    private bool _complete;

    /// <summary>The run finished (or wrote outputs): keep the folder.</summary>
    public void Complete() => _complete = true;

    public void Dispose()
    {
        if (_complete || !created) return;
        try
        {
            var entries = Directory.GetFileSystemEntries(folder);
            if (entries.All(e => Path.GetFileName(e) == RunLock.FolderLockName))
            {
                foreach (var e in entries) File.Delete(e);
                Directory.Delete(folder);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
