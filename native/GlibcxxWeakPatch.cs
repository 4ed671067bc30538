// Marks TorchSharp's GLIBCXX_3.4.32 version requirement weak so libLibTorchSharp.so loads on systems whose
// libstdc++ stops at GLIBCXX_3.4.30 (Debian 12, Ubuntu 22.04).
//
// Measured on TorchSharp 0.107.0: the only symbol bound to GLIBCXX_3.4.32 is `_ZSt21ios_base_library_initv`
// and no relocation refers to it, so a weak version need is safe: glibc's loader then only notes the missing
// version instead of refusing the library. The patch edits one 16-bit flags field in the ELF
// `.gnu.version_r` (SHT_GNU_verneed) section: `vna_flags |= VER_FLG_WEAK`.
//
// This one file is compiled twice: into the library (SAM3_LIBRARY defined; run at start-up) and by MSBuild's
// RoslynCodeTaskFactory as a build task (Directory.Build.targets; run after every build that copies the file).
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

#if SAM3_LIBRARY
namespace Sam3.Torch.IO
{
#endif
    /// <summary>Result of a patch attempt.</summary>
    internal enum GlibcxxPatchOutcome
    {
        /// <summary>The file did not exist.</summary>
        NotFound,
        /// <summary>The system libstdc++ already provides every version; nothing to do.</summary>
        SystemAlreadyProvides,
        /// <summary>The file needs none of the listed versions (or already marks them weak).</summary>
        AlreadyWeakOrAbsent,
        /// <summary>The file was patched.</summary>
        Patched,
    }

    internal static class GlibcxxWeakPatch
    {
        public const string LibraryFileName = "libLibTorchSharp.so";
        public const ushort VerFlgWeak = 0x2;
        private const uint ShtGnuVerneed = 0x6ffffffe;

        /// <summary>The versions measured as safe to weaken (no relocation binds to them).</summary>
        public static readonly string[] WeakenableVersions = { "GLIBCXX_3.4.32" };

        private static readonly string[] LibstdcxxCandidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };

        /// <summary>True when a system libstdc++ is found that defines every version in <paramref name="versions"/>.</summary>
        public static bool SystemProvides(IEnumerable<string> versions)
        {
            foreach (var path in LibstdcxxCandidates)
            {
                if (!File.Exists(path)) continue;
                byte[] bytes = File.ReadAllBytes(path);
                foreach (var v in versions)
                    if (IndexOf(bytes, Encoding.ASCII.GetBytes(v + "\0")) < 0) return false;
                return true;
            }
            return false;
        }

        /// <summary>Patches <paramref name="path"/> in place when needed. Idempotent.</summary>
        public static GlibcxxPatchOutcome PatchFile(string path, bool checkSystem = true)
        {
            if (!File.Exists(path)) return GlibcxxPatchOutcome.NotFound;
            if (checkSystem && SystemProvides(WeakenableVersions)) return GlibcxxPatchOutcome.SystemAlreadyProvides;
            byte[] elf = File.ReadAllBytes(path);
            var offsets = FindStrongNeeds(elf, WeakenableVersions);
            if (offsets.Count == 0) return GlibcxxPatchOutcome.AlreadyWeakOrAbsent;
            using (var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read))
            {
                foreach (long flagsOffset in offsets)
                {
                    ushort flags = (ushort)(elf[flagsOffset] | (elf[flagsOffset + 1] << 8));
                    flags |= VerFlgWeak;
                    fs.Position = flagsOffset;
                    fs.WriteByte((byte)(flags & 0xff));
                    fs.WriteByte((byte)(flags >> 8));
                }
            }
            return GlibcxxPatchOutcome.Patched;
        }

        /// <summary>
        /// File offsets of the <c>vna_flags</c> fields of version needs named in <paramref name="names"/> that are not
        /// weak yet. Throws <see cref="InvalidDataException"/> for a file that is not a little-endian ELF64 object.
        /// </summary>
        public static List<long> FindStrongNeeds(byte[] elf, IReadOnlyCollection<string> names)
        {
            var result = new List<long>();
            if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
                throw new InvalidDataException("not an ELF file");
            if (elf[4] != 2 || elf[5] != 1) throw new InvalidDataException("only little-endian ELF64 is supported");
            long shoff = (long)U64(elf, 0x28);
            int shentsize = U16(elf, 0x3A), shnum = U16(elf, 0x3C);
            if (shoff <= 0 || shentsize < 64 || shoff + (long)shentsize * shnum > elf.Length)
                throw new InvalidDataException("section header table outside the file");
            for (int i = 0; i < shnum; i++)
            {
                long sh = shoff + (long)i * shentsize;
                if (U32(elf, sh + 4) != ShtGnuVerneed) continue;
                long secOff = (long)U64(elf, sh + 0x18);
                int link = (int)U32(elf, sh + 0x28);
                uint count = U32(elf, sh + 0x2C);
                long strSh = shoff + (long)link * shentsize;
                long strOff = (long)U64(elf, strSh + 0x18);
                long vn = secOff;
                for (uint n = 0; n < count; n++)
                {
                    CheckRange(elf, vn, 16);
                    int cnt = U16(elf, vn + 2);
                    long aux = vn + U32(elf, vn + 8);
                    for (int a = 0; a < cnt; a++)
                    {
                        CheckRange(elf, aux, 16);
                        ushort flags = U16(elf, aux + 4);
                        string name = CString(elf, strOff + U32(elf, aux + 8));
                        foreach (var wanted in names)
                            if (name == wanted && (flags & VerFlgWeak) == 0) result.Add(aux + 4);
                        uint next = U32(elf, aux + 12);
                        if (next == 0) break;
                        aux += next;
                    }
                    uint vnNext = U32(elf, vn + 12);
                    if (vnNext == 0) break;
                    vn += vnNext;
                }
            }
            return result;
        }

        private static void CheckRange(byte[] b, long off, int len)
        {
            if (off < 0 || off + len > b.Length) throw new InvalidDataException("version-needs entry outside the file");
        }

        private static ushort U16(byte[] b, long o) => (ushort)(b[o] | (b[o + 1] << 8));
        private static uint U32(byte[] b, long o) => (uint)(b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24));
        private static ulong U64(byte[] b, long o) => U32(b, o) | ((ulong)U32(b, o + 4) << 32);

        private static string CString(byte[] b, long o)
        {
            long end = o;
            while (end < b.Length && b[end] != 0) end++;
            return Encoding.ASCII.GetString(b, (int)o, (int)(end - o));
        }

        private static int IndexOf(byte[] hay, byte[] needle)
        {
            for (int i = 0; i + needle.Length <= hay.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && hay[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }
    }
#if SAM3_LIBRARY
}
#else
    /// <summary>MSBuild task: patch every libLibTorchSharp.so under Directory (the output folder).</summary>
    public class Sam3GlibcxxWeakPatchTask : Microsoft.Build.Utilities.Task
    {
        [Microsoft.Build.Framework.Required]
        public string Directory { get; set; } = "";

        public override bool Execute()
        {
            if (!System.IO.Directory.Exists(Directory)) return true;
            foreach (var file in System.IO.Directory.GetFiles(Directory, GlibcxxWeakPatch.LibraryFileName, SearchOption.AllDirectories))
            {
                var outcome = GlibcxxWeakPatch.PatchFile(file);
                Log.LogMessage(Microsoft.Build.Framework.MessageImportance.High, $"sam3: {file}: {outcome}");
            }
            return true;
        }
    }
#endif
