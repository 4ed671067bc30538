using System.Runtime.InteropServices;
using System.Text;

namespace Sam3.Torch.IO;

/// <summary>What a path leads to, after following symbolic links.</summary>
internal enum FileKind
{
    /// <summary>Nothing there (or a dangling link).</summary>
    Missing,
    /// <summary>A regular file.</summary>
    Regular,
    /// <summary>A directory.</summary>
    Directory,
    /// <summary>A device, FIFO, socket: never an input or output of ours.</summary>
    Other,
}

/// <summary>
/// The identity of the file a path leads to: device and inode number (so that a file reached through a symbolic link,
/// a linked folder, <c>..</c>, a hard link or a bind mount is recognised as itself), its kind and its size (of the
/// target, never of a link). <see cref="Device"/>/<see cref="Inode"/> are 0 where the platform gives no inode (then
/// <see cref="PathIdentity.SameFile"/> compares resolved paths).
/// </summary>
internal readonly record struct FileIdentity(ulong Device, ulong Inode, FileKind Kind, long Size)
{
    public bool HasInode => Device != 0 || Inode != 0;
}

/// <summary>
/// Path identity on Linux through libc's <c>stat</c> (glibc ≥ 2.33; <c>__xstat</c> before) and <c>realpath</c>, loaded
/// from libc.so.6 at run time; elsewhere the managed file system API (no inode: paths resolved through links instead).
/// </summary>
internal static unsafe class PathIdentity
{
    private const uint S_IFMT = 0xF000, S_IFREG = 0x8000, S_IFDIR = 0x4000;
    private const int ENOENT = 2, ENOTDIR = 20;

    private static readonly delegate* unmanaged<byte*, byte*, int> s_stat;
    private static readonly delegate* unmanaged<int, byte*, byte*, int> s_xstat;
    private static readonly delegate* unmanaged<byte*, byte*, byte*> s_realpath;

    static PathIdentity()
    {
        if (!OperatingSystem.IsLinux() || (RuntimeInformation.ProcessArchitecture is not (Architecture.X64 or Architecture.Arm64))) return;
        if (!NativeLibrary.TryLoad("libc.so.6", out var libc)) return;
        if (NativeLibrary.TryGetExport(libc, "stat", out var p)) s_stat = (delegate* unmanaged<byte*, byte*, int>)p;
        else if (NativeLibrary.TryGetExport(libc, "__xstat", out p)) s_xstat = (delegate* unmanaged<int, byte*, byte*, int>)p;
        if (NativeLibrary.TryGetExport(libc, "realpath", out p)) s_realpath = (delegate* unmanaged<byte*, byte*, byte*>)p;
    }

    /// <summary>Whether inode identity is available (Linux x64/arm64 with glibc).</summary>
    public static bool NativeAvailable => s_stat != null || s_xstat != null;

    /// <summary>The identity of what <paramref name="path"/> leads to (links followed); Missing when nothing is there.</summary>
    public static FileIdentity Stat(string path)
    {
        if (string.IsNullOrEmpty(path)) return default;
        if (NativeAvailable)
        {
            byte[] name = Encoding.UTF8.GetBytes(path + "\0");
            byte* buf = stackalloc byte[256];
            int rc;
            fixed (byte* n = name)
            {
                Marshal.SetLastSystemError(0);
                rc = s_stat != null ? s_stat(n, buf) : s_xstat(1, n, buf); // _STAT_VER_LINUX = 1 on x86_64 (0 on arm64 is not used: arm64 glibc exports stat)
            }
            if (rc == 0)
            {
                ulong dev = *(ulong*)buf, ino = *(ulong*)(buf + 8);
                // struct stat: x86_64 has st_nlink (8 bytes) before st_mode; the generic (arm64) layout has st_mode at 16
                uint mode = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? *(uint*)(buf + 24) : *(uint*)(buf + 16);
                long size = *(long*)(buf + 48);
                var kind = (mode & S_IFMT) switch { S_IFREG => FileKind.Regular, S_IFDIR => FileKind.Directory, _ => FileKind.Other };
                return new FileIdentity(dev, ino, kind, kind == FileKind.Regular ? size : 0);
            }
            return default; // ENOENT, ENOTDIR, ELOOP, EACCES: nothing usable there
        }
        if (Directory.Exists(path)) return new FileIdentity(0, 0, FileKind.Directory, 0);
        if (File.Exists(path))
        {
            try { return new FileIdentity(0, 0, FileKind.Regular, FileLength.Of(path)); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return new FileIdentity(0, 0, FileKind.Other, 0); }
        }
        return default;
    }

    /// <summary>
    /// The absolute path with every symbolic link and <c>..</c> resolved in file system order (a link followed before
    /// the <c>..</c> after it, as the kernel does); a missing tail is appended to the resolved existing part.
    /// </summary>
    public static string Resolve(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string absolute = Path.IsPathRooted(path) ? path : Path.Combine(Environment.CurrentDirectory, path);
        if (s_realpath != null) return ResolveNative(absolute, depth: 0);
        return ResolveManaged(Path.GetFullPath(absolute));
    }

    private static string ResolveNative(string absolute, int depth)
    {
        byte[] name = Encoding.UTF8.GetBytes(absolute + "\0");
        byte* buf = stackalloc byte[4097];
        fixed (byte* n = name)
        {
            if (s_realpath(n, buf) != null) return Marshal.PtrToStringUTF8((IntPtr)buf)!;
        }
        // Missing tail: resolve the parent, append the last name.
        string trimmed = absolute.TrimEnd('/');
        if (trimmed.Length == 0 || depth > 64) return Path.GetFullPath(absolute);
        string? parent = Path.GetDirectoryName(trimmed);
        string last = Path.GetFileName(trimmed);
        if (parent is null) return Path.GetFullPath(absolute);
        string resolvedParent = ResolveNative(parent, depth + 1);
        return last switch
        {
            "." => resolvedParent,
            ".." => Path.GetDirectoryName(resolvedParent) ?? resolvedParent,
            _ => Path.Combine(resolvedParent, last),
        };
    }

    private static string ResolveManaged(string full)
    {
        string root = Path.GetPathRoot(full) ?? "";
        string current = root;
        foreach (var part in full[root.Length..].Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar))
        {
            if (part.Length == 0) continue;
            string next = Path.Combine(current, part);
            try
            {
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is { } target) next = target.FullName;
            }
            catch (IOException) { }
            current = next;
        }
        return current;
    }

    /// <summary>
    /// Whether two paths lead to the same file: same device and inode when both exist (links, <c>..</c>, hard links,
    /// bind mounts), else the same resolved path.
    /// </summary>
    public static bool SameFile(string a, string b)
    {
        var ia = Stat(a);
        var ib = Stat(b);
        if (ia.Kind != FileKind.Missing && ib.Kind != FileKind.Missing && ia.HasInode && ib.HasInode)
            return ia.Device == ib.Device && ia.Inode == ib.Inode;
        if ((ia.Kind == FileKind.Missing) != (ib.Kind == FileKind.Missing) && NativeAvailable) return false;
        var cmp = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        return string.Equals(Resolve(a), Resolve(b), cmp);
    }
}
