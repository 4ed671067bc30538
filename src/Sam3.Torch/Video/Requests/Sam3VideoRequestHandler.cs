namespace Sam3.Torch.Video;

/// <summary>
/// The request/response form of the video predictor, for code ported from Python: <see cref="Handle"/> is upstream's
/// <c>Sam3VideoPredictor.handle_request</c> (<c>start_session</c>, <c>add_prompt</c>, <c>remove_object</c>,
/// <c>reset_session</c>, <c>close_session</c>) and <see cref="HandleStream"/> its <c>handle_stream_request</c>
/// (<c>propagate_in_video</c>), over the typed session API (<see cref="Sam3VideoSession"/>). Sessions are kept by id;
/// the handler is thread-safe (calls on one session are serialised, different sessions run in parallel).
/// Requests and responses carry upstream's field names in JSON (<see cref="Sam3VideoRequest.FromJson"/>,
/// <see cref="Sam3VideoResponse.ToJson"/>). <see cref="Dispose"/> closes every session (upstream <c>shutdown</c>);
/// the predictor stays with its owner.
/// </summary>
public sealed class Sam3VideoRequestHandler : IDisposable
{
    private readonly Sam3VideoPredictor _predictor;
    private readonly Sam3VideoSessionOptions? _sessionOptions;
    private readonly Dictionary<string, Sam3VideoSession> _sessions = new(StringComparer.Ordinal);
    private readonly object _gate = new();
    private bool _disposed;

    /// <param name="predictor">The loaded video predictor (not owned).</param>
    /// <param name="sessionOptions">Options of every session started by <c>start_session</c>.</param>
    public Sam3VideoRequestHandler(Sam3VideoPredictor predictor, Sam3VideoSessionOptions? sessionOptions = null)
    {
        _predictor = predictor ?? throw new ArgumentNullException(nameof(predictor));
        _sessionOptions = sessionOptions;
    }

    /// <summary>Ids of the open sessions.</summary>
    public IReadOnlyList<string> SessionIds { get { lock (_gate) return _sessions.Keys.ToArray(); } }

    /// <summary>
    /// handle_request: <c>start_session</c> → <c>{session_id}</c>; <c>add_prompt</c> → <c>{frame_index, outputs}</c>;
    /// <c>remove_object</c>, <c>reset_session</c>, <c>close_session</c> → <c>{is_success: true}</c>. Closing an unknown
    /// session succeeds (idempotent, as upstream); starting a session with the id of an open one replaces (and closes) it.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown type (<c>propagate_in_video</c> belongs to <see cref="HandleStream"/>) or a missing or inconsistent field.</exception>
    /// <exception cref="Sam3StateException">No open session has the id.</exception>
    public Sam3VideoResponse Handle(Sam3VideoRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_disposed, this);
        switch (request.Type)
        {
            case "start_session":
                return StartSession(request);
            case "add_prompt":
                return AddPrompt(request);
            case "remove_object":
                GetSession(request).RemoveObject(Require(request.ObjId, "obj_id", request), request.IsUserAction ?? true);
                return Success;
            case "reset_session":
                GetSession(request).Reset();
                return Success;
            case "close_session":
            {
                string id = request.SessionId ?? throw Missing("session_id", request);
                Sam3VideoSession? session;
                lock (_gate) _sessions.Remove(id, out session);
                session?.Dispose();
                return Success;
            }
            default:
                throw new ArgumentException($"invalid request type: '{request.Type}' (handle_request takes start_session, add_prompt, remove_object, reset_session, close_session)", nameof(request));
        }
    }

    /// <summary>
    /// handle_stream_request: <c>propagate_in_video</c> → one <c>{frame_index, outputs}</c> per frame, forward then
    /// backward for <c>both</c> (the default), as <see cref="Sam3VideoSession.Propagate"/>. The request is checked when
    /// this method is called; frames are computed while the sequence is enumerated.
    /// </summary>
    /// <exception cref="ArgumentException">Another type, or an invalid <c>propagation_direction</c>.</exception>
    /// <exception cref="Sam3StateException">No open session has the id.</exception>
    public IEnumerable<Sam3VideoResponse> HandleStream(Sam3VideoRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (request.Type != "propagate_in_video")
            throw new ArgumentException($"invalid request type: '{request.Type}' (handle_stream_request takes propagate_in_video)", nameof(request));
        var session = GetSession(request);
        var direction = request.PropagationDirection switch
        {
            null or "both" => PropagationDirection.Both,
            "forward" => PropagationDirection.Forward,
            "backward" => PropagationDirection.Backward,
            var d => throw new ArgumentException($"invalid propagation direction: '{d}' (forward, backward or both)", nameof(request)),
        };
        return Stream(session, direction, request.StartFrameIndex, request.MaxFrameNumToTrack, cancellationToken);
    }

    private static IEnumerable<Sam3VideoResponse> Stream(Sam3VideoSession session, PropagationDirection direction, int? start, int? max, CancellationToken ct)
    {
        foreach (var frame in session.Propagate(direction, start, max, ct))
            yield return new Sam3VideoResponse { FrameIndex = frame.FrameIndex, Outputs = Sam3VideoOutputs.FromFrame(frame) };
    }

    /// <summary>The open session with this id (tests: engine settings and probes).</summary>
    internal bool TryGetSession(string sessionId, out Sam3VideoSession session)
    {
        lock (_gate) return _sessions.TryGetValue(sessionId, out session!);
    }

    private static Sam3VideoResponse Success => new() { IsSuccess = true };

    private Sam3VideoResponse StartSession(Sam3VideoRequest r)
    {
        string path = r.ResourcePath ?? throw Missing("resource_path", r);
        string id = string.IsNullOrEmpty(r.SessionId) ? Guid.NewGuid().ToString() : r.SessionId;
        var session = _predictor.StartSession(path, _sessionOptions);
        Sam3VideoSession? replaced;
        lock (_gate)
        {
            if (_disposed)
            {
                session.Dispose();
                throw new ObjectDisposedException(nameof(Sam3VideoRequestHandler));
            }
            _sessions.Remove(id, out replaced);
            _sessions[id] = session;
        }
        replaced?.Dispose();
        return new Sam3VideoResponse { SessionId = id };
    }

    private Sam3VideoResponse AddPrompt(Sam3VideoRequest r)
    {
        var session = GetSession(r);
        int frame = Require(r.FrameIndex, "frame_index", r);
        VideoFrameResult result;
        if (r.Points is not null)
        {
            // Sam3VideoInferenceWithInstanceInteractivity.add_prompt: points are tracker prompts of one object
            if (r.Text is not null || r.BoundingBoxes is not null)
                throw new ArgumentException("add_prompt: when points are provided, text and bounding_boxes must be absent", "request");
            int objId = Require(r.ObjId, "obj_id", r);
            var labels = r.PointLabels ?? throw Missing("point_labels", r);
            if (r.Points.Length == 0 || labels.Length != r.Points.Length)
                throw new ArgumentException($"add_prompt: {r.Points.Length} points with {labels.Length} point_labels", "request");
            var points = r.Points.Select((p, i) => p is { Length: 2 } ? (p[0], p[1])
                : throw new ArgumentException($"add_prompt: point {i} has {p?.Length ?? 0} coordinates, expected [x, y]", "request")).ToList();
            result = session.AddPoints(frame, objId, points, labels);
        }
        else
        {
            if (r.Text is null && r.BoundingBoxes is null)
                throw new ArgumentException("add_prompt: at least one type of prompt (text, points, bounding_boxes) must be provided", "request");
            List<(float, float, float, float)>? boxes = null;
            List<bool>? boxLabels = null;
            if (r.BoundingBoxes is not null)
            {
                var labels = r.BoundingBoxLabels ?? throw Missing("bounding_box_labels", r);
                if (labels.Length != r.BoundingBoxes.Length)
                    throw new ArgumentException($"add_prompt: {r.BoundingBoxes.Length} bounding_boxes with {labels.Length} bounding_box_labels", "request");
                boxes = r.BoundingBoxes.Select((b, i) => b is { Length: 4 } ? (b[0], b[1], b[2], b[3])
                    : throw new ArgumentException($"add_prompt: bounding box {i} has {b?.Length ?? 0} values, expected [x, y, w, h]", "request")).ToList();
                boxLabels = labels.Select(l => l != 0).ToList();
            }
            result = session.AddPrompt(frame, r.Text, boxes, boxLabels);
        }
        return new Sam3VideoResponse { FrameIndex = result.FrameIndex, Outputs = Sam3VideoOutputs.FromFrame(result) };
    }

    private Sam3VideoSession GetSession(Sam3VideoRequest r)
    {
        string id = r.SessionId ?? throw Missing("session_id", r);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_sessions.TryGetValue(id, out var s)) return s;
        }
        throw new Sam3StateException($"Cannot find session '{id}'; it might have expired or been closed");
    }

    private static int Require(int? value, string field, Sam3VideoRequest r) => value ?? throw Missing(field, r);

    private static ArgumentException Missing(string field, Sam3VideoRequest r) =>
        new($"{r.Type} request without '{field}'", "request");

    /// <summary>Closes every open session (upstream <c>shutdown</c>). The predictor is not disposed.</summary>
    public void Dispose()
    {
        List<Sam3VideoSession> open;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            open = _sessions.Values.ToList();
            _sessions.Clear();
        }
        foreach (var s in open) s.Dispose();
    }
}
