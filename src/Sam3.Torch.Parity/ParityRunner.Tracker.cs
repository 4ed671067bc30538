using System.Text.Json;
using System.Text.RegularExpressions;
using Sam3.Torch.Video;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    /// <summary>
    /// Scenarios e (<c>tracker_video</c>) and e2 (<c>tracker_interactive</c>): the SAM2-style tracker on a frame folder
    /// (<see cref="TrackerPredictor"/> over the image model's backbone and tracker weights). Frames, video size, object
    /// ids, frames, points, boxes, the ellipse mask and the call sequence (e2: <c>parameters.calls</c> with
    /// <c>parameters.settings</c>) come from the scenario JSON; every recorded tensor is compared (bit-packed masks are
    /// unpacked), and the object ids per frame, processing orders, memory-attention compositions, refused calls and
    /// returned ids recorded in the JSON are checked as counts.
    /// </summary>
    private void RunTracker(Context ctx, string kind)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        var predictor = TrackerPredictor.FromImageModel(Model);
        string prefix = "";
        predictor.Probe = (n, t) => ctx.Offer(prefix + n, t);
        string framesDir = FramesFolder(fx, p.GetProperty("frames").GetString()!);
        var states = new Dictionary<string, TrackerState>();
        try
        {
            TrackerState NewState(bool offer)
            {
                var st = predictor.InitState(new FolderFrameSource(framesDir));
                if (p.TryGetProperty("video_hw", out var hw) && (hw[0].GetInt32() != st.VideoHeight || hw[1].GetInt32() != st.VideoWidth))
                    throw new Sam3Exception($"scenario video_hw {hw[0]}x{hw[1]} differs from the decoded frames {st.VideoHeight}x{st.VideoWidth}");
                if (offer)
                {
                    using var scope = NewDisposeScope();
                    var frames = Enumerable.Range(0, st.NumFrames)
                        .Select(i => torch.tensor(st.Frames.Resized(i), new long[] { Config.Tracker.ImageSize, Config.Tracker.ImageSize, 3 }, dtype: ScalarType.Byte))
                        .ToArray();
                    ctx.Offer("input.frames_resized_uint8", torch.stack(frames));
                    ctx.Offer("init_state.images_frame0", st.Frames.Normalized(0)[0]);
                }
                return st;
            }

            void OfferVideoRes(string pre, Tensor logits)
            {
                using var scope = NewDisposeScope();
                ctx.OfferMask(pre + "video_res_masks", logits.gt(0), Tolerance);
                ctx.Offer(pre + "video_res_logits_f16", logits.to(ScalarType.Float16));
            }

            void Propagate(string tag, TrackerState st, int? start, int? max, bool reverse, JsonElement? record)
            {
                var expectedFrames = record is { } r && r.TryGetProperty("per_frame", out var pf) ? pf.EnumerateArray().ToList() : null;
                if (record is { } r2 && r2.TryGetProperty("processing_order", out var po))
                {
                    var order = predictor.ProcessingOrder(st, start, max, reverse).ToList();
                    var want = po.EnumerateArray().Select(x => x.GetInt32()).ToList();
                    ctx.Detections.Add(($"{tag}.processing_order (length, first frame)", want.Count * 10000 + want.FirstOrDefault(), order.Count * 10000 + order.FirstOrDefault()));
                }
                string tagDot = tag.Length > 0 ? tag + "." : "";
                var memLog = new List<MemoryAttentionInfo>();
                predictor.MemoryAttentionObserved = memLog.Add;
                int k = 0;
                string preflightPrefix = kind == "tracker_video" ? $"frame{start ?? 0}." : $"{tagDot}preflight.";
                foreach (var res in predictor.Propagate(st, start, max, reverse, preflight: true,
                             onFrameStart: f => { prefix = $"{tagDot}frame{f}."; memLog.Clear(); }, onPreflight: () => prefix = preflightPrefix))
                {
                    using (res)
                    {
                        string pre = $"{tagDot}frame{res.FrameIndex}.";
                        ctx.Offer(pre + "low_res_masks", res.LowResMasks);
                        OfferVideoRes(pre, res.VideoResLogits);
                        ctx.Offer(pre + "obj_scores", res.ObjectScores);
                        if (expectedFrames is not null)
                        {
                            if (k >= expectedFrames.Count) throw new Sam3Exception($"{tag}: more frames yielded than recorded ({expectedFrames.Count})");
                            var e = expectedFrames[k];
                            if (e.GetProperty("frame_idx").GetInt32() != res.FrameIndex)
                                throw new Sam3Exception($"{tag}: yielded frame {res.FrameIndex}, the reference yielded frame {e.GetProperty("frame_idx").GetInt32()}");
                            var ids = e.GetProperty("obj_ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
                            if (!ids.SequenceEqual(res.ObjectIds))
                                throw new Sam3Exception($"{tag} frame {res.FrameIndex}: object ids [{string.Join(",", res.ObjectIds)}], reference [{string.Join(",", ids)}]");
                            if (e.TryGetProperty("memory_attention", out var ma))
                            {
                                var want = ma.ValueKind == JsonValueKind.Array ? ma.EnumerateArray().ToList() : [];
                                ctx.Detections.Add(($"{pre}memory_attention calls", want.Count, memLog.Count));
                                for (int i = 0; i < Math.Min(want.Count, memLog.Count); i++)
                                {
                                    ctx.Detections.Add(($"{pre}memory_attention.prompt_len", want[i].GetProperty("prompt_len").GetInt32(), memLog[i].PromptLength));
                                    ctx.Detections.Add(($"{pre}memory_attention.num_obj_ptr_tokens", want[i].GetProperty("num_obj_ptr_tokens").GetInt32(), memLog[i].NumObjPtrTokens));
                                    ctx.Detections.Add(($"{pre}memory_attention.num_spatial_memory_frames", want[i].GetProperty("num_spatial_memory_frames").GetInt32(), memLog[i].NumSpatialMemoryFrames));
                                }
                            }
                        }
                        k++;
                    }
                }
                prefix = "";
                predictor.MemoryAttentionObserved = null;
                if (expectedFrames is not null) ctx.Detections.Add(($"{(tag.Length > 0 ? tag : "propagate_in_video")}: frames yielded", expectedFrames.Count, k));
            }

            if (kind == "tracker_video")
            {
                // scenario e: obj 1 = a point, obj 2 = a box, both on the first frame of the recorded propagation
                var perFrame = p.GetProperty("per_frame").EnumerateArray().ToList();
                int frame0 = perFrame[0].GetProperty("frame_idx").GetInt32();
                var ids = perFrame[0].GetProperty("obj_ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
                if (ids.Count != 2) throw new NotSupportedException($"scenario e with {ids.Count} objects (a point object and a box object expected)");
                var st = states["st"] = NewState(true);
                var pt = Floats(p.GetProperty("obj1_point_xy_normalised"));
                var bx = Floats(p.GetProperty("obj2_box_xyxy_normalised"));
                prefix = $"add_obj{ids[0]}.";
                using (var v = predictor.AddNewPointsOrBox(st, frame0, ids[0], [(pt[0], pt[1])], [1])) OfferVideoRes(prefix, v);
                prefix = $"add_obj{ids[1]}.";
                using (var v = predictor.AddNewPointsOrBox(st, frame0, ids[1], box: (bx[0], bx[1], bx[2], bx[3]))) OfferVideoRes(prefix, v);
                prefix = "";
                Propagate("", st, frame0, st.NumFrames, false, p);
                return;
            }

            // scenario e2: the recorded call sequence
            var set = p.GetProperty("settings");
            int Int(string n) => set.GetProperty(n).GetInt32();
            List<(float, float)> Points(string n) => set.GetProperty(n).EnumerateArray().Select(Floats).Select(a => (a[0], a[1])).ToList();
            List<int> Labels(string n) => set.GetProperty(n).EnumerateArray().Select(x => x.GetInt32()).ToList();
            foreach (var call in p.GetProperty("calls").EnumerateArray())
            {
                string tag = call.GetProperty("call").GetString()!;
                string api = call.TryGetProperty("api", out var a) ? a.GetString() ?? "" : "";
                string stName = Regex.IsMatch(api, @"\(st3\b|\bst3 = ") ? "st3" : "st";
                prefix = tag + ".";
                if (tag == "init_state")
                {
                    states["st"] = NewState(true);
                }
                else if (tag.EndsWith("_same_state"))
                {
                    string result = call.GetProperty("result").GetString() ?? "";
                    bool refused = false;
                    using var mask = Ellipse(states["st"], set.GetProperty("obj3_ellipse"));
                    try
                    {
                        using var _ = predictor.AddNewMask(states["st"], Int("obj3_frame"), Int("obj3_id"), mask);
                    }
                    catch (Sam3StateException)
                    {
                        refused = true;
                    }
                    ctx.Detections.Add(($"{tag}: refused (1) / accepted (0)", result.StartsWith("RuntimeError") ? 1 : 0, refused ? 1 : 0));
                }
                else if (Regex.Match(tag, @"^add_obj(\d+)_mask$") is { Success: true } mm)
                {
                    if (states.Remove(stName, out var previous)) previous.Dispose();
                    var st = states[stName] = NewState(false);
                    var mask = Ellipse(st, set.GetProperty("obj3_ellipse"));
                    using (mask)
                    {
                        ctx.OfferMask(prefix + "input_mask", mask, Tolerance);
                        using var v = predictor.AddNewMask(st, Int("obj3_frame"), int.Parse(mm.Groups[1].Value), mask);
                        OfferVideoRes(prefix, v);
                    }
                }
                else if (Regex.Match(tag, @"^add_obj(\d+)$") is { Success: true } am)
                {
                    int id = int.Parse(am.Groups[1].Value);
                    bool clear = !api.Contains("clear_old_points=False");
                    Tensor v;
                    if (id == Int("obj1_id"))
                        v = predictor.AddNewPointsOrBox(states[stName], Int("obj1_frame"), id, Points("obj1_points_xy"), Labels("obj1_labels"), clear);
                    else if (id == Int("obj2_id"))
                    {
                        var b = Floats(set.GetProperty("obj2_box_xyxy"));
                        v = predictor.AddNewPointsOrBox(states[stName], Int("obj2_frame"), id, box: (b[0], b[1], b[2], b[3]), clearOldPoints: clear);
                    }
                    else throw new NotSupportedException($"{tag}: no settings for object {id}");
                    using (v) OfferVideoRes(prefix, v);
                }
                else if (Regex.Match(tag, @"^refine_obj(\d+)$") is { Success: true } rm)
                {
                    bool clear = !api.Contains("clear_old_points=False");
                    using var v = predictor.AddNewPointsOrBox(states[stName], Int("refine_frame"), int.Parse(rm.Groups[1].Value),
                                                              Points("refine_points_xy"), Labels("refine_labels"), clear);
                    OfferVideoRes(prefix, v);
                }
                else if (tag.StartsWith("prop"))
                {
                    int? start = ApiInt(api, "start_frame_idx"), max = ApiInt(api, "max_frame_num_to_track");
                    bool reverse = Regex.IsMatch(api, @"reverse=True");
                    Propagate(tag, states[stName], start, max, reverse, call);
                }
                else if (Regex.Match(tag, @"^remove_obj(\d+)$") is { Success: true } xm)
                {
                    var (ids, updated) = predictor.RemoveObject(states[stName], int.Parse(xm.Groups[1].Value), strict: true, needOutput: true);
                    try
                    {
                        foreach (var (f, v) in updated) ctx.OfferMask($"{prefix}frame{f}.video_res_masks", v.gt(0), Tolerance);
                    }
                    finally
                    {
                        foreach (var (_, v) in updated) v.Dispose();
                    }
                    var want = call.GetProperty("returned_obj_ids").EnumerateArray().Select(x => x.GetInt32()).ToList();
                    if (!want.SequenceEqual(ids)) throw new Sam3Exception($"{tag}: remaining ids [{string.Join(",", ids)}], reference [{string.Join(",", want)}]");
                    if (call.TryGetProperty("tracking_has_started_after", out var ths))
                        ctx.Detections.Add(($"{tag}: tracking_has_started", ths.GetBoolean() ? 1 : 0, states[stName].TrackingHasStarted ? 1 : 0));
                }
                else throw new NotSupportedException($"e2 call '{tag}' is not implemented by this runner");
                prefix = "";
            }
        }
        finally
        {
            predictor.Probe = null;
            foreach (var st in states.Values) st.Dispose();
        }
    }

    private static int? ApiInt(string api, string name)
    {
        var m = Regex.Match(api, name + @"=(\d+|None)");
        if (!m.Success || m.Groups[1].Value == "None") return null;
        return int.Parse(m.Groups[1].Value);
    }

    /// <summary>"inputs/video_0001/0..7.jpg" (or a folder) → the frame folder under the fixture root.</summary>
    private static string FramesFolder(ScenarioFixture fx, string frames)
    {
        string path = fx.ResolvePath(frames);
        if (Directory.Exists(path)) return path;
        string dir = Path.GetDirectoryName(path)!;
        if (!Directory.Exists(dir)) throw new Sam3Exception($"frame folder not found: {dir}");
        return dir;
    }

    /// <summary>The e2 ellipse: pixel (x, y) inside iff ((x+0.5−cx·W)/(rx·W))² + ((y+0.5−cy·H)/(ry·H))² ≤ 1, in float64.</summary>
    private static Tensor Ellipse(TrackerState st, JsonElement e)
    {
        var v = Doubles(e);
        int h = st.VideoHeight, w = st.VideoWidth;
        var data = new bool[h * w];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                double dx = (x + 0.5 - v[0] * w) / (v[2] * w), dy = (y + 0.5 - v[1] * h) / (v[3] * h);
                data[y * w + x] = dx * dx + dy * dy <= 1.0;
            }
        return torch.tensor(data, new long[] { h, w });
    }

    private sealed partial class Context
    {
        /// <summary>
        /// Compares a boolean mask with the recorded <paramref name="name"/>, or with <c>name_packbits</c> (np.packbits
        /// along the last axis, big bit order), unpacked to the mask's width.
        /// </summary>
        public void OfferMask(string name, Tensor mask, Tolerance tolerance)
        {
            var fx = Fixture!;
            if (fx.Has(name))
            {
                Offer(name, mask);
                return;
            }
            string key = name + "_packbits";
            if (!fx.Has(key) || _compared.Contains(key)) return;
            _compared.Add(key);
            runner.Capture?.Invoke(name, mask);
            using var scope = NewDisposeScope();
            var packed = fx.Get(key);
            var reference = Unpack(packed, mask.shape[^1]);
            Comparisons.Add(tolerance.Compare(key, mask, reference, null));
        }

        private static Tensor Unpack(Tensor packed, long width)
        {
            var bytes = packed.contiguous().data<byte>().ToArray();
            long rowBytes = packed.shape[^1];
            long rows = bytes.Length / rowBytes;
            var bits = new bool[rows * width];
            for (long r = 0; r < rows; r++)
                for (long x = 0; x < width; x++)
                    bits[r * width + x] = ((bytes[r * rowBytes + (x >> 3)] >> (int)(7 - (x & 7))) & 1) != 0;
            var shape = packed.shape.ToArray();
            shape[^1] = width;
            return torch.tensor(bits, shape);
        }
    }
}
