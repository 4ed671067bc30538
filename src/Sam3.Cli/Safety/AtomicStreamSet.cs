using Sam3.Torch;

namespace Sam3.Cli;

/// <summary>
/// Outputs written as a stream (JSON lines per frame, an mp4 as frames arrive) that still appear together or not at
/// all: each is written under a temporary name in its own folder that keeps the extension (OpenCV picks the container by
/// it), and <see cref="Commit"/> renames them over their destinations in the order staged, once the run has finished (or
/// was stopped cleanly). A run that fails, or is disposed uncommitted, leaves no temporary file and the old outputs as
/// they were; an existing destination is replaced only with <c>overwrite</c>.
/// </summary>
internal sealed class AtomicStreamSet : IDisposable
{
    private readonly List<(string Temp, string Final)> _staged = new();

    /// <summary>The temporary path to write <paramref name="path"/>'s content to.</summary>
    public string Stage(string path)
    {
        string final = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(final)!,
            $".{Path.GetFileNameWithoutExtension(final)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp{Path.GetExtension(final)}");
        _staged.Add((temp, final));
        return temp;
    }

    /// <summary>Renames every staged file over its destination (a staged file that was never written is skipped).</summary>
    public void Commit(bool overwrite)
    {
        if (!overwrite)
            foreach (var (temp, final) in _staged)
                if (File.Exists(temp) && (File.Exists(final) || Directory.Exists(final)))
                    throw new Sam3Exception($"output {final} appeared while this run was writing (another run on the same folder?)");
        foreach (var (temp, final) in _staged)
        {
            if (!File.Exists(temp)) continue;
            try
            {
                using (var fs = new FileStream(temp, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite)) fs.Flush(flushToDisk: true);
                File.Move(temp, final, overwrite);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new Sam3Exception($"cannot write {final}: {e.Message.Replace(temp, final)}", e);
            }
        }
        _staged.Clear();
    }

    public void Dispose()
    {
        foreach (var (temp, _) in _staged)
        {
            try { File.Delete(temp); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        _staged.Clear();
    }
}
