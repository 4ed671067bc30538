using Sam3.Torch;

namespace Sam3.Cli;

/// <summary>
/// Files that appear together or not at all: each is written in full to a temporary name in its own folder
/// (<c>.NAME.PID.GUID.tmp</c>), flushed and fsync'ed; <see cref="Commit"/> then renames them over their destinations
/// (the JSON-like last file given last, so that a reader seeing it sees the others). Nothing staged is left behind when
/// a write fails or the set is disposed uncommitted: a full disk leaves the old outputs as they were. An existing
/// destination is replaced only with <c>overwrite</c>, and only once every new file is complete.
/// </summary>
internal sealed class AtomicFileSet : IDisposable
{
    private readonly List<(string Temp, string Final)> _staged = new();
    private bool _committed;

    /// <summary>Writes <paramref name="bytes"/> to a temporary file beside <paramref name="path"/>.</summary>
    public void Add(string path, ReadOnlySpan<byte> bytes)
    {
        string final = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(final)!, $".{Path.GetFileName(final)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        _staged.Add((temp, final));
        try
        {
            using var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 16);
            fs.Write(bytes);
            fs.Flush(flushToDisk: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Sam3Exception($"cannot write {final}: {e.Message.Replace(temp, final)}", e);
        }
        catch (ArgumentOutOfRangeException e) when (e.ParamName == "value")
        {
            // .NET's report of EFBIG (a file-size limit, ulimit -f): the same as a full disk for the user
            throw new Sam3Exception($"cannot write {final}: the file exceeds the file-size limit or the file system's maximum", e);
        }
    }

    public void Add(string path, string text) => Add(path, new System.Text.UTF8Encoding(false).GetBytes(text));

    /// <summary>Renames every staged file over its destination, in the order given.</summary>
    public void Commit(bool overwrite)
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        if (!overwrite)
            foreach (var (_, final) in _staged)
                if (File.Exists(final) || Directory.Exists(final)) throw new Sam3Exception($"output {final} appeared while this run was writing (another run on the same folder?)");
        foreach (var (temp, final) in _staged)
        {
            try
            {
                File.Move(temp, final, overwrite);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new Sam3Exception($"cannot write {final}: {e.Message.Replace(temp, final)}", e);
            }
        }
        _committed = true;
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
