using Sam3.Torch;
using Sam3.Torch.IO;

namespace Sam3.Cli;

/// <summary>
/// Checks a command can make before any checkpoint is read: input paths (empty, missing, a folder, a device or pipe,
/// a dangling link), image headers (format and size, without decoding pixels), prompts against every image's size,
/// and output paths (kind, writable folder, never an input: compared by device and inode, so symbolic links, linked
/// folders, <c>..</c>, hard links and bind mounts are all seen through). Shared by segment, label, convert, inspect,
/// track and video. Errors are <see cref="UsageException"/> (exit 2) for malformed arguments and
/// <see cref="Sam3Exception"/> (exit 1) for files that are not what they should be.
/// </summary>
internal static class InputValidation
{
    /// <summary>Larger image files are refused before they are read (the decoder's own limit is 2^28 pixels).</summary>
    public const long MaxImageFileBytes = 1L << 30;

    /// <summary>An existing regular file at <paramref name="path"/>, given by <paramref name="option"/> (e.g. "--image").</summary>
    public static FileIdentity RequireFile(string? path, string option, string what)
    {
        if (path is null) throw new UsageException($"missing {option}");
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"{option} is empty; give the path of {Article(what)} file");
        var id = PathIdentity.Stat(path);
        switch (id.Kind)
        {
            case FileKind.Regular:
                return id;
            case FileKind.Directory:
                throw new Sam3Exception($"{path} is a folder, not {Article(what)} file");
            case FileKind.Other:
                throw new Sam3Exception($"{path} is not a regular file (a device, pipe or socket); give {Article(what)} file");
            default:
                if (IsDanglingLink(path)) throw new Sam3Exception($"{path} is a symbolic link to a missing file");
                throw Missing(path, what);
        }
    }

    /// <summary>When something is at <paramref name="path"/>, it is a regular file (a missing one is left to the caller's own message).</summary>
    public static void NotSpecial(string path, string option, string what)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"{option} is empty; give the path of {Article(what)} file");
        switch (PathIdentity.Stat(path).Kind)
        {
            case FileKind.Directory: throw new Sam3Exception($"{path} is a folder, not {Article(what)} file");
            case FileKind.Other: throw new Sam3Exception($"{path} is not a regular file (a device, pipe or socket); give {Article(what)} file");
        }
    }

    private static Sam3Exception Missing(string path, string what) => what switch
    {
        "image" => new Sam3ImageException($"image not found: {path}"),
        "checkpoint" => new Sam3CheckpointException($"checkpoint not found: {path}"),
        _ => new Sam3Exception($"{what} not found: {path}"),
    };

    /// <summary>An existing file or folder (a checkpoint may be a downloaded folder).</summary>
    public static FileKind RequireFileOrFolder(string? path, string option, string what)
    {
        if (path is null) throw new UsageException($"missing {option}");
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"{option} is empty; give the path of {Article(what)} file or folder");
        var id = PathIdentity.Stat(path);
        if (id.Kind == FileKind.Other) throw new Sam3Exception($"{path} is not a regular file (a device, pipe or socket); give {Article(what)} file");
        if (id.Kind == FileKind.Missing)
        {
            if (IsDanglingLink(path)) throw new Sam3Exception($"{path} is a symbolic link to a missing file");
            throw Missing(path, what);
        }
        return id.Kind;
    }

    private static bool IsDanglingLink(string path)
    {
        try { return new FileInfo(path).LinkTarget is not null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { return false; }
    }

    private static string Article(string what) => what.Length > 0 && "aeiou".Contains(char.ToLowerInvariant(what[0])) ? "an " + what : "a " + what;

    /// <summary>Each image's width and height from its header (format, truncation and size limits checked; no pixel is decoded).</summary>
    public static List<(int Width, int Height)> ImageSizes(IReadOnlyList<string> paths, string option = "--image")
    {
        var sizes = new List<(int, int)>(paths.Count);
        foreach (var path in paths) sizes.Add(ImageSize(path, option));
        return sizes;
    }

    public static (int Width, int Height) ImageSize(string path, string option = "--image")
    {
        var id = RequireFile(path, option, "image");
        if (id.Size > MaxImageFileBytes) throw new Sam3ImageException($"{path}: {id.Size:N0} bytes is too large for an image file (limit {MaxImageFileBytes:N0})");
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Sam3ImageException($"{path}: cannot read the file ({e.Message})", e);
        }
        var info = ImageHeader.Inspect(data, path);
        ImageLoader.CheckSize(info.Width, info.Height, ImageLoadOptions.Default, path, ImageHeader.Describe(info.Format) + " image");
        if (info.Format == ImageFileFormat.Png) VerifyPng(data, path);
        return ((int)info.Width, (int)info.Height);
    }

    /// <summary>
    /// Decodes a PNG with the managed decoder (chunk CRCs, truncated or corrupt image data) so that a corrupt file is
    /// refused with one line before OpenCV's libpng would print its own "libpng error" line on the process's stderr.
    /// </summary>
    private static void VerifyPng(byte[] data, string path)
    {
        try
        {
            using var image = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.Rgb24>(data);
        }
        catch (Exception e) when (e is SixLabors.ImageSharp.ImageFormatException or NotSupportedException or ArgumentException or InvalidOperationException)
        {
            throw new Sam3ImageException($"{path}: corrupt PNG data ({e.Message.Split('\n')[0].TrimEnd('\r', '.')})", e);
        }
    }

    /// <summary>Pixel boxes (x0,y0,x1,y1) and points inside every image, as the predictors will require.</summary>
    public static void PromptsFit(IReadOnlyList<string> paths, IReadOnlyList<(int Width, int Height)> sizes,
        IEnumerable<float[]> xyxyBoxes, IEnumerable<(float X, float Y)> points)
    {
        var boxes = xyxyBoxes.ToList();
        var pts = points.ToList();
        for (int i = 0; i < sizes.Count; i++)
        {
            var (w, h) = sizes[i];
            foreach (var b in boxes)
                if (b[0] < 0 || b[1] < 0 || b[2] > w || b[3] > h)
                    throw new UsageException($"--box-xyxy {Fmt(b)} lies outside {paths[i]} ({w}x{h} pixels)");
            foreach (var (x, y) in pts)
                if (x < 0 || y < 0 || x > w || y > h)
                    throw new UsageException($"--point {Fmt([x, y])} lies outside {paths[i]} ({w}x{h} pixels)");
        }
    }

    private static string Fmt(float[] v) => string.Join(",", v.Select(x => x.ToString(System.Globalization.CultureInfo.InvariantCulture)));

    /// <summary>A threshold option in [0, 1] (NaN and infinities are refused by the parser).</summary>
    public static void Probability(double value, string option)
    {
        if (!double.IsFinite(value) || value < 0 || value > 1) throw new UsageException($"{option} must be in [0,1], got {value}");
    }

    /// <summary>
    /// An output folder: not empty, not a file, and creatable/writable (created now; <paramref name="created"/> says
    /// whether this call made it, so that a run failing before its first output can remove it again).
    /// </summary>
    public static string OutputFolder(string? path, string option, out bool created)
    {
        created = false;
        if (path is null) throw new UsageException($"missing {option}");
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"{option} is empty; give an output folder");
        var id = PathIdentity.Stat(path);
        if (id.Kind == FileKind.Regular) throw new UsageException($"{option} {path} is a file; give a folder (outputs are written inside it)");
        if (id.Kind == FileKind.Other) throw new UsageException($"{option} {path} is not a folder (a device, pipe or socket)");
        if (id.Kind == FileKind.Missing)
        {
            if (IsDanglingLink(path)) throw new UsageException($"{option} {path} is a symbolic link to a missing folder");
            try
            {
                Directory.CreateDirectory(path);
                created = true;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new Sam3Exception($"cannot create the output folder {path} ({e.Message})", e);
            }
        }
        CheckWritable(path);
        return path;
    }

    /// <summary>The folder of an output file: exists or can be made, and is writable; the output is not a folder.</summary>
    public static void OutputFile(string? path, string option)
    {
        if (path is null) throw new UsageException($"missing {option}");
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"{option} is empty; give an output file name");
        if (path.EndsWith('/') || path.EndsWith(Path.DirectorySeparatorChar)) throw new UsageException($"{option} {path} names a folder; give a file name");
        var id = PathIdentity.Stat(path);
        if (id.Kind == FileKind.Directory) throw new Sam3Exception($"{path} is a folder; give an output file name");
        if (id.Kind == FileKind.Other) throw new Sam3Exception($"{path} is not a regular file (a device, pipe or socket); give an output file name");
        string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var parent = PathIdentity.Stat(folder);
        if (parent.Kind is FileKind.Regular or FileKind.Other) throw new Sam3Exception($"cannot write {path}: {folder} is not a folder");
    }

    /// <summary>Refuses an output that is (by device and inode, or by resolved path) one of the inputs.</summary>
    public static void NotAnInput(string output, IEnumerable<string> inputs, string hint)
    {
        // nothing there yet: it cannot be an input (inputs exist); one stat instead of one per input
        if (PathIdentity.NativeAvailable && PathIdentity.Stat(output).Kind == FileKind.Missing && !IsDanglingLink(output)) return;
        foreach (var input in inputs)
            if (PathIdentity.SameFile(output, input))
                throw new UsageException($"output {output} would overwrite an input ({input}); {hint}");
    }

    private static void CheckWritable(string folder)
    {
        string probe = Path.Combine(folder, $".sam3-write-test.{Environment.ProcessId}.{Guid.NewGuid():N}");
        try
        {
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Sam3Exception($"cannot write into the output folder {folder} ({e.Message.Replace(probe, folder)})", e);
        }
    }
}

/// <summary>The shared check of a video argument (track, video): called before the checkpoint is read.</summary>
internal static class VideoInputValidation
{
    /// <summary>
    /// A frame folder or a video file: not empty, not a device or pipe, and openable as a frame source (a folder holds
    /// frames, the first frame's header is readable; a file is a video OpenCV can open, or an image).
    /// </summary>
    public static void Check(string? path, string option = "--video")
    {
        var kind = InputValidation.RequireFileOrFolder(path, option, "video");
        if (kind == Sam3.Torch.IO.FileKind.Regular && Sam3.Torch.IO.PathIdentity.Stat(path!).Size == 0)
            throw new Sam3.Torch.Sam3ImageException($"{path}: the file is empty (0 bytes), not a video");
        using var source = Sam3.Torch.Video.FrameSource.Open(path!) as IDisposable;
    }
}
