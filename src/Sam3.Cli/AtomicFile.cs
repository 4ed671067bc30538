namespace Sam3.Cli;

/// <summary>Writes a file under a temporary name in its folder, flushes it, then renames it over the destination.</summary>
internal static class AtomicFile
{
    public static void WriteAllText(string path, string contents)
    {
        string full = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            using (var w = new StreamWriter(fs))
            {
                w.Write(contents);
                w.Flush();
                fs.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }
}

/// <summary>Shows <see cref="Sam3.Torch.LoadProgress"/> through the convert progress line.</summary>
internal sealed class LoadProgressAdapter(IProgress<(int done, int total, string key)> inner) : IProgress<Sam3.Torch.LoadProgress>
{
    public void Report(Sam3.Torch.LoadProgress value)
    {
        if (value.Stage == "reading checkpoint") inner.Report((value.Done, value.Total, value.Item ?? ""));
    }
}
