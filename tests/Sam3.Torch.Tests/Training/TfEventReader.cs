using System.Buffers.Binary;
using System.Text;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// Reads TensorBoard event files independently of the writer: TFRecord records (u64 length, masked CRC-32C of the
/// length, data, masked CRC-32C of the data; both checked, bitwise CRC here) holding <c>tensorboard.Event</c> protos decoded
/// by the field numbers of TensorFlow's event.proto / summary.proto, and <see cref="Accumulate"/>, the scalar view
/// TensorBoard's Python event accumulator builds from a run folder (including its restart purge).
/// </summary>
internal static class TfEventReader
{
    public sealed record Event(double WallTime, long Step, string? FileVersion, int? SessionStatus, string? SessionMsg,
        IReadOnlyList<(string Tag, float? Value)> Values);

    /// <summary>SessionLog.SessionStatus.START (event.proto).</summary>
    public const int Start = 1;

    /// <param name="path">An event file.</param>
    /// <param name="tolerateTruncatedTail">Stop at a truncated last record (what a killed writer can leave) instead of
    /// throwing, as TensorBoard's readers do; a CRC mismatch still throws.</param>
    public static List<Event> Read(string path, bool tolerateTruncatedTail = false)
    {
        var bytes = File.ReadAllBytes(path);
        var events = new List<Event>();
        int pos = 0;
        while (pos < bytes.Length)
        {
            if (bytes.Length - pos < 12)
            {
                if (tolerateTruncatedTail) break;
                throw new InvalidDataException($"{path}: truncated record header at {pos}");
            }
            ulong len = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(pos));
            if (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(pos + 8)) != MaskedCrc(bytes.AsSpan(pos, 8)))
                throw new InvalidDataException($"{path}: length CRC of record {events.Count}");
            int start = pos + 12;
            if ((ulong)(bytes.Length - start) < len + 4)
            {
                if (tolerateTruncatedTail) break;
                throw new InvalidDataException($"{path}: truncated record {events.Count}");
            }
            var data = bytes.AsSpan(start, (int)len);
            if (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(start + (int)len)) != MaskedCrc(data))
                throw new InvalidDataException($"{path}: data CRC of record {events.Count}");
            events.Add(DecodeEvent(data.ToArray()));
            pos = start + (int)len + 4;
        }
        return events;
    }

    /// <summary>The event files of a run folder in the order TensorBoard reads them (by name).</summary>
    public static string[] RunFiles(string directory) =>
        Directory.GetFiles(directory).Where(f => Path.GetFileName(f).Contains("tfevents", StringComparison.Ordinal))
            .OrderBy(f => f, StringComparer.Ordinal).ToArray();

    /// <summary>
    /// The scalar points TensorBoard's event accumulator (plugin_event_accumulator.py) keeps for a run folder: files in
    /// name order (a truncated last record ends a file); with a <c>file_version</c> of 2 or more, the first <c>SessionLog.START</c> marks the start and every later
    /// one purges the points read so far whose step is ≥ its step (<c>_CheckForRestartAndMaybePurge</c>); without one,
    /// an out-of-order summary step purges that tag's later points (<c>_CheckForOutOfOrderStepAndMaybePurge</c>).
    /// </summary>
    public static Dictionary<string, List<(long Step, float Value)>> Accumulate(string directory)
    {
        var series = new Dictionary<string, List<(long Step, float Value)>>();
        double fileVersion = 0;
        bool seenStart = false;
        long mostRecentStep = -1;
        foreach (var path in RunFiles(directory))
            foreach (var e in Read(path, tolerateTruncatedTail: true))
            {
                if (e.FileVersion is { } v) fileVersion = double.Parse(v["brain.Event:".Length..], System.Globalization.CultureInfo.InvariantCulture);
                if (fileVersion >= 2)
                {
                    if (e.SessionStatus == Start)
                    {
                        if (seenStart)
                            foreach (var s in series.Values) s.RemoveAll(p => p.Step >= e.Step);
                        seenStart = true;
                    }
                }
                else if (e.Values.Count > 0 && e.Step < mostRecentStep)
                    foreach (var (tag, _) in e.Values)
                        if (series.TryGetValue(tag, out var s)) s.RemoveAll(p => p.Step >= e.Step);
                if (e.Values.Count > 0) mostRecentStep = e.Step;
                foreach (var (tag, value) in e.Values)
                    if (value is { } x)
                    {
                        if (!series.TryGetValue(tag, out var s)) series[tag] = s = [];
                        s.Add((e.Step, x));
                    }
            }
        return series;
    }

    // event.proto: Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; SessionLog session_log = 7; }
    private static Event DecodeEvent(byte[] m)
    {
        double wall = 0;
        long step = 0;
        string? version = null, msg = null;
        int? status = null;
        var values = new List<(string, float?)>();
        foreach (var f in Fields(m))
            switch (f.Number)
            {
                case 1: wall = BitConverter.Int64BitsToDouble((long)f.Scalar); break;
                case 2: step = (long)f.Scalar; break;
                case 3: version = Encoding.UTF8.GetString(f.Bytes!); break;
                case 5:
                    // Summary { repeated Value value = 1; } Value { string tag = 1; float simple_value = 2; }
                    foreach (var v in Fields(f.Bytes!).Where(x => x.Number == 1))
                    {
                        string tag = "";
                        float? simple = null;
                        foreach (var x in Fields(v.Bytes!))
                            if (x.Number == 1) tag = Encoding.UTF8.GetString(x.Bytes!);
                            else if (x.Number == 2) simple = BitConverter.Int32BitsToSingle((int)x.Scalar);
                        values.Add((tag, simple));
                    }
                    break;
                case 7:
                    // SessionLog { SessionStatus status = 1; string checkpoint_path = 2; string msg = 3; }
                    status = 0;
                    foreach (var x in Fields(f.Bytes!))
                        if (x.Number == 1) status = (int)x.Scalar;
                        else if (x.Number == 3) msg = Encoding.UTF8.GetString(x.Bytes!);
                    break;
            }
        return new Event(wall, step, version, status, msg, values);
    }

    private readonly record struct Field(int Number, ulong Scalar, byte[]? Bytes);

    private static List<Field> Fields(byte[] m)
    {
        int p = 0;
        ulong Varint()
        {
            ulong r = 0;
            for (int shift = 0; ; shift += 7)
            {
                byte b = m[p++];
                r |= (ulong)(b & 0x7f) << shift;
                if (b < 0x80) return r;
            }
        }
        var list = new List<Field>();
        while (p < m.Length)
        {
            ulong key = Varint();
            int number = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: list.Add(new(number, Varint(), null)); break;
                case 1: list.Add(new(number, BinaryPrimitives.ReadUInt64LittleEndian(m.AsSpan(p)), null)); p += 8; break;
                case 5: list.Add(new(number, BinaryPrimitives.ReadUInt32LittleEndian(m.AsSpan(p)), null)); p += 4; break;
                case 2:
                    int n = (int)Varint();
                    list.Add(new(number, 0, m.AsSpan(p, n).ToArray()));
                    p += n;
                    break;
                default: throw new InvalidDataException($"wire type {wire}");
            }
        }
        return list;
    }

    public static uint MaskedCrc(ReadOnlySpan<byte> data)
    {
        uint crc = 0xffffffffu;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
        }
        crc = ~crc;
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }
}
