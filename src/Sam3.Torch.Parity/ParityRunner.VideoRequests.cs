using System.Text.Json;
using Sam3.Torch.Video;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    /// <summary>
    /// Scenario f2 through the request form (default): every recorded request JSON of <c>parameters.calls</c> is read by
    /// <see cref="Sam3VideoRequest.FromJson"/> and handled by <see cref="Sam3VideoRequestHandler"/>, as the reference
    /// handled it with <c>handle_request</c> / <c>handle_stream_request</c>. False = the same sequence on the pipeline
    /// directly (<see cref="RunVideoPredictorInteractive"/>).
    /// </summary>
    public bool VideoRequestForm { get; set; } = true;

    /// <summary>
    /// f2 replayed through the request form: responses are compared as the direct replay compares the pipeline's outputs
    /// (ids, probabilities, boxes, masks; out_binary_masks of frames with several objects as the non-overlap step applied
    /// to the recorded inputs), plus the recorded response fields (frame_index, out_obj_ids, is_success), yielded frames,
    /// tracker-state compositions and action-history lengths.
    /// </summary>
    private void RunVideoPredictorRequests(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        var (temporal, baseSettings, textNms, boxNms) = InteractiveVideoSettings(p);
        string frames = FramesFolder(fx, p.GetProperty("frames").GetString()!);

        string call = "";
        Sam3VideoEngine? engine = null;
        using var predictor = Sam3VideoPredictor.FromModel(VideoModel, Tokenizer, temporal, baseSettings with { DetNmsThresh = textNms });
        predictor.EngineCreated = en =>
        {
            engine = en;
            en.DetectorProbe = (f, n, t) => ctx.Offer($"{call}.frame{f}.{n}", t);
            en.OutputProbe = (f, n, t) =>
            {
                if (n == "nonoverlap_in.masks") ctx.OfferMask($"{call}.frame{f}.{n}", t, Tolerance);
                else ctx.Offer($"{call}.frame{f}.{n}", t);
            };
        };
        using var handler = new Sam3VideoRequestHandler(predictor);

        void OfferResponse(Sam3VideoResponse r, Sam3VideoSession session)
        {
            using var scope = NewDisposeScope();
            var o = r.Outputs ?? throw new Sam3Exception($"{call}: response without outputs");
            int n = o.OutObjIds.Length, h = session.Height, w = session.Width;
            string pre = $"{call}.frame{r.FrameIndex}.";
            ctx.Offer(pre + "out_obj_ids", torch.tensor(o.OutObjIds.Select(i => (long)i).ToArray()));
            ctx.Offer(pre + "out_probs", torch.tensor(o.OutProbs));
            ctx.Offer(pre + "out_boxes_xywh", torch.tensor(o.OutBoxesXywh.SelectMany(b => b).ToArray()).reshape(n, 4));
            var masks = n == 0 ? torch.zeros(0, h, w, ScalarType.Bool)
                : torch.tensor(o.OutBinaryMasks.SelectMany(m => m.Data).ToArray()).reshape(n, h, w).to(ScalarType.Bool);
            string inKey = pre + "nonoverlap_in.masks_packbits";
            if (fx.Has(inKey) && fx.Has(pre + "nonoverlap_in.scores") && fx.Has(pre + "out_binary_masks_packbits"))
            {
                // the constraint applied to the recorded inputs (ill-conditioned scores, README-video-extra.md)
                var refIn = Context.UnpackBits(fx.Get(inKey), w);
                ctx.OfferMask(pre + "out_binary_masks", engine!.ApplyObjectWiseNonOverlap(refIn, fx.Get(pre + "nonoverlap_in.scores")), Tolerance);
            }
            else ctx.OfferMask(pre + "out_binary_masks", masks, Tolerance);
        }

        void CheckResponse(string where, JsonElement recorded, Sam3VideoResponse r)
        {
            if (recorded.TryGetProperty("frame_index", out var fi) && fi.GetInt32() != r.FrameIndex)
                throw new Sam3Exception($"{where}: frame_index {r.FrameIndex}, reference {fi.GetInt32()}");
            if (recorded.TryGetProperty("is_success", out var ok) && ok.GetBoolean() != r.IsSuccess)
                throw new Sam3Exception($"{where}: is_success {r.IsSuccess}, reference {ok.GetBoolean()}");
            if (recorded.TryGetProperty("out_obj_ids", out var ids))
            {
                var want = ids.EnumerateArray().Select(x => x.GetInt32()).ToList();
                var ours = r.Outputs?.OutObjIds ?? [];
                if (!want.SequenceEqual(ours))
                    throw new Sam3Exception($"{where} frame {r.FrameIndex}: out_obj_ids [{string.Join(",", ours)}], reference [{string.Join(",", want)}]");
            }
        }

        foreach (var c in p.GetProperty("calls").EnumerateArray())
        {
            call = c.GetProperty("call").GetString()!;
            var request = Sam3VideoRequest.FromJson(c.GetProperty("request").GetRawText());
            if (request.Type == "start_session") request = request with { ResourcePath = frames };
            string id = request.SessionId ?? throw new Sam3Exception($"{call}: the recorded request has no session_id");
            if (request.Type == "propagate_in_video")
            {
                var session = Session(handler, id, call);
                var yielded = new List<int>();
                var perFrame = c.TryGetProperty("per_frame", out var pf) ? pf.EnumerateArray().ToList() : [];
                foreach (var r in handler.HandleStream(request))
                {
                    OfferResponse(r, session);
                    if (yielded.Count < perFrame.Count) CheckResponse(call, perFrame[yielded.Count], r);
                    yielded.Add(r.FrameIndex ?? -1);
                }
                if (c.TryGetProperty("yielded_frames", out var yf))
                {
                    var want = yf.EnumerateArray().Select(x => x.GetInt32()).ToList();
                    if (!want.SequenceEqual(yielded))
                        throw new Sam3Exception($"{call}: yielded frames [{string.Join(",", yielded)}], reference [{string.Join(",", want)}]");
                }
            }
            else
            {
                var r = handler.Handle(request);
                if (request.Type == "start_session" && r.SessionId != id) throw new Sam3Exception($"{call}: session_id '{r.SessionId}', requested '{id}'");
                if (request.Type == "add_prompt") OfferResponse(r, Session(handler, id, call));
                if (request.Type == "reset_session")
                    engine!.Settings = engine.Settings with { DetNmsThresh = boxNms }; // the script's change for the box part
                if (c.TryGetProperty("response", out var resp) && resp.ValueKind == JsonValueKind.Object) CheckResponse(call, resp, r);
            }
            if (handler.TryGetSession(id, out var s))
            {
                var state = s.Internals.State;
                if (c.TryGetProperty("tracker_states_obj_ids", out var tso))
                {
                    var want = string.Join("|", tso.EnumerateArray().Select(a => string.Join(",", a.EnumerateArray().Select(x => x.GetInt32()))));
                    var ours = string.Join("|", state.TrackerStates.Select(st => string.Join(",", st.ObjIds)));
                    if (want != ours) throw new Sam3Exception($"{call}: tracker states [{ours}], reference [{want}]");
                }
                if (c.TryGetProperty("action_history", out var ah))
                    ctx.Detections.Add(($"{call}: action history length", ah.GetArrayLength(), state.ActionHistory.Count));
            }
            else if (request.Type != "close_session") throw new Sam3Exception($"{call}: session '{id}' is not open");
        }
        if (handler.SessionIds.Count != 0) throw new Sam3Exception($"sessions left open after the replay: {string.Join(", ", handler.SessionIds)}");
    }

    private static Sam3VideoSession Session(Sam3VideoRequestHandler handler, string id, string call) =>
        handler.TryGetSession(id, out var s) ? s : throw new Sam3Exception($"{call}: session '{id}' is not open");
}
