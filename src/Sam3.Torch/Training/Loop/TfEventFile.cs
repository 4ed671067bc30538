using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;

namespace Sam3.Torch.Training.Loop;

/// <summary>
/// One TensorBoard event file, written without TensorFlow: TFRecord records (little-endian u64 length, masked CRC-32C of
/// the length, the data, masked CRC-32C of the data) holding <c>tensorboard.Event</c> protos (event.proto / summary.proto
/// field numbers below). The file starts with the <c>file_version</c> event <c>brain.Event:2</c>, which tells TensorBoard's
/// loader to take restarts from <c>SessionLog</c> events (<see cref="WriteSessionStart"/>).
/// <para>
/// Every call appends whole records and closes the file again (a killed process leaves at most a truncated last record,
/// which TensorBoard's reader skips). Wall times are Unix seconds, as TensorBoard's relative and wall-time axes expect.
/// </para>
/// </summary>
internal sealed class TfEventFile
{
    /// <summary>What every event file name contains (TensorBoard's <c>IsSummaryEventsFile</c> test) and starts with.</summary>
    public const string NamePrefix = "events.out.tfevents.";

    /// <summary>The <c>file_version</c> of current event files; version 2 selects the <c>SessionLog.START</c> purge.</summary>
    public const string FileVersion = "brain.Event:2";

    // event.proto: message Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; ...
    // Summary summary = 5; ... SessionLog session_log = 7; ... } }
    internal const int EventWallTime = 1, EventStep = 2, EventFileVersion = 3, EventSummary = 5, EventSessionLog = 7;
    // event.proto: message SessionLog { SessionStatus status = 1; string checkpoint_path = 2; string msg = 3; }, START = 1
    internal const int SessionLogStatus = 1, SessionLogMsg = 3, SessionStatusStart = 1;
    // summary.proto: message Summary { repeated Value value = 1; } message Value { string tag = 1; float simple_value = 2; }
    internal const int SummaryValue = 1, ValueTag = 1, ValueSimpleValue = 2;

    private const int WireVarint = 0, WireFixed64 = 1, WireLengthDelimited = 2, WireFixed32 = 5;
    private const uint CrcMaskDelta = 0xa282ead8u;

    public string Path { get; }

    private TfEventFile(string path) => Path = path;

    /// <summary>
    /// A new event file in <paramref name="directory"/> whose name sorts after every event file already there (TensorBoard
    /// reads a run's files in name order, so a restart's events come after those of the run it continues), beginning with
    /// the <c>file_version</c> event.
    /// </summary>
    public static TfEventFile Create(string directory)
    {
        Directory.CreateDirectory(directory);
        long micros = (DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) / 10;
        foreach (var existing in Directory.EnumerateFiles(directory, NamePrefix + "*"))
            if (StampOf(System.IO.Path.GetFileName(existing)) is { } stamp && stamp >= micros) micros = stamp + 1;
        string name = NamePrefix + (micros / 1_000_000).ToString("D10", CultureInfo.InvariantCulture) + "." +
                      (micros % 1_000_000).ToString("D6", CultureInfo.InvariantCulture) + "." + SafeHostName() + "." +
                      Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        var file = new TfEventFile(System.IO.Path.Combine(directory, name));
        var version = new ProtoWriter();
        version.Double(EventWallTime, WallTime());
        version.String(EventFileVersion, FileVersion);
        file.AppendRecords([version.ToArray()]);
        return file;
    }

    /// <summary>
    /// <c>Event{step, session_log: {status: START}}</c>: TensorBoard's event accumulator takes every START after a run's
    /// first as a restart and drops the events already read whose step is ≥ <paramref name="step"/>.
    /// </summary>
    public void WriteSessionStart(long step, string message)
    {
        var log = new ProtoWriter();
        log.Varint(SessionLogStatus, SessionStatusStart);
        log.String(SessionLogMsg, message);
        var e = new ProtoWriter();
        e.Double(EventWallTime, WallTime());
        e.Varint(EventStep, (ulong)step);
        e.Message(EventSessionLog, log);
        AppendRecords([e.ToArray()]);
    }

    /// <summary>One <c>Event{step, summary: {value: [{tag, simple_value}]}}</c> per scalar, appended together.</summary>
    public void WriteScalars(long step, IEnumerable<KeyValuePair<string, float>> scalars)
    {
        double wallTime = WallTime();
        var records = new List<byte[]>();
        foreach (var (tag, value) in scalars)
        {
            var v = new ProtoWriter();
            v.String(ValueTag, tag);
            v.Float(ValueSimpleValue, value);
            var summary = new ProtoWriter();
            summary.Message(SummaryValue, v);
            var e = new ProtoWriter();
            e.Double(EventWallTime, wallTime);
            e.Varint(EventStep, (ulong)step);
            e.Message(EventSummary, summary);
            records.Add(e.ToArray());
        }
        if (records.Count > 0) AppendRecords(records);
    }

    private void AppendRecords(IReadOnlyList<byte[]> records)
    {
        using var ms = new MemoryStream();
        Span<byte> header = stackalloc byte[12];
        Span<byte> footer = stackalloc byte[4];
        foreach (var data in records)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(header[8..], MaskedCrc32C(header[..8]));
            BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc32C(data));
            ms.Write(header);
            ms.Write(data);
            ms.Write(footer);
        }
        using var fs = new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read);
        ms.WriteTo(fs);
    }

    /// <summary>TFRecord's masked CRC-32C: the checksum rotated right by 15 bits plus <c>0xa282ead8</c>.</summary>
    internal static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + CrcMaskDelta;
    }

    /// <summary>CRC-32C (Castagnoli; initial value and final xor all ones).</summary>
    internal static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = uint.MaxValue;
        foreach (byte b in data) crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }

    private static double WallTime() => (DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks) / (double)TimeSpan.TicksPerSecond;

    /// <summary>The microsecond stamp of a name this class wrote (<c>…tfevents.SSSSSSSSSS.UUUUUU.host.pid</c>); null for other names.</summary>
    private static long? StampOf(string name)
    {
        var parts = name[NamePrefix.Length..].Split('.');
        return parts.Length >= 2 && parts[0].Length == 10 && parts[1].Length == 6
               && long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out long s)
               && long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out long u)
            ? s * 1_000_000 + u : null;
    }

    private static string SafeHostName()
    {
        string host;
        try { host = Environment.MachineName; }
        catch (InvalidOperationException) { host = "localhost"; }
        var sb = new StringBuilder(host.Length);
        foreach (char c in host) sb.Append(char.IsAsciiLetterOrDigit(c) || c == '-' ? c : '_');
        return sb.Length == 0 ? "localhost" : sb.ToString();
    }

    /// <summary>The few protobuf encodings an event needs (proto3: tag varint, then the value).</summary>
    private sealed class ProtoWriter
    {
        private readonly MemoryStream _s = new();

        public byte[] ToArray() => _s.ToArray();

        public void Varint(int field, ulong value)
        {
            Key(field, WireVarint);
            Raw(value);
        }

        public void Double(int field, double value)
        {
            Key(field, WireFixed64);
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteDoubleLittleEndian(b, value);
            _s.Write(b);
        }

        public void Float(int field, float value)
        {
            Key(field, WireFixed32);
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteSingleLittleEndian(b, value);
            _s.Write(b);
        }

        public void String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public void Message(int field, ProtoWriter inner) => Bytes(field, inner.ToArray());

        private void Bytes(int field, byte[] value)
        {
            Key(field, WireLengthDelimited);
            Raw((ulong)value.Length);
            _s.Write(value);
        }

        private void Key(int field, int wire) => Raw((ulong)((field << 3) | wire));

        private void Raw(ulong v)
        {
            while (v >= 0x80)
            {
                _s.WriteByte((byte)(v | 0x80));
                v >>= 7;
            }
            _s.WriteByte((byte)v);
        }
    }
}
