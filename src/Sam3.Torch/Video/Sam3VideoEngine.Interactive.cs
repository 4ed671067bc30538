using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>Which propagation the action history calls for (upstream <c>parse_action_history_for_propagation</c>).</summary>
internal enum PropagationType { Full, Partial, Fetch }

/// <summary>
/// Instance interactivity (upstream <c>Sam3VideoInferenceWithInstanceInteractivity</c>): point prompts that refine a
/// detected object or add a new one (in a tracker state of its own), object removal, and the action history that turns
/// a propagation request into a full detection+tracking run, a tracker-only run of the touched objects (partial), or a
/// fetch of the cached outputs.
/// </summary>
internal sealed partial class Sam3VideoEngine
{
    /// <summary>use_prev_mem_frame of point refinements (upstream default False).</summary>
    public bool UsePrevMemFrame { get; init; }
    /// <summary>Detector-added conditioning frames within this many frames of a user refinement are cleared (upstream 16).</summary>
    public int RefinementDetectorCondFrameRemovalWindow { get; init; } = 16;

    private static void AddActionHistory(VideoInferenceState s, string type, int? frame = null, List<int>? objIds = null) =>
        s.ActionHistory.Add((type, frame, objIds));

    private static bool HasObjectBeenRefined(VideoInferenceState s, int objId) =>
        s.ActionHistory.Any(a => a.Type is "add" or "refine" && a.ObjIds is { Count: > 0 } ids && ids.Contains(objId));

    /// <summary>parse_action_history_for_propagation.</summary>
    public (PropagationType Type, List<int>? ObjIds) ParseActionHistory(VideoInferenceState s)
    {
        var h = s.ActionHistory;
        if (h.Count == 0) return (PropagationType.Full, null);
        var last = h[^1];
        if (last.Type.StartsWith("propagation"))
        {
            if (last.Type == "propagation_fetch") return (PropagationType.Fetch, null);
            bool twice = h.Count > 1 && h[^2].Type is "propagation_partial" or "propagation_full";
            if (twice || last.Frame == 0 || last.Frame == s.NumFrames - 1) return (PropagationType.Fetch, null);
            return (last.Type == "propagation_full" ? PropagationType.Full : PropagationType.Partial, last.ObjIds);
        }
        var ids = new List<int>();
        for (int i = h.Count - 1; i >= 0; i--)
        {
            if (h[i].Type.StartsWith("propagation")) break;
            if (h[i].Type is "add" or "refine" && h[i].ObjIds is { } o) ids.AddRange(o);
        }
        // list(set(ids)): small non-negative ints iterate in ascending order
        var unique = ids.Distinct().OrderBy(x => x).ToList();
        return unique.Count > 0 ? (PropagationType.Partial, unique) : (PropagationType.Fetch, null);
    }

    private static string TypeName(PropagationType t) => t switch
    {
        PropagationType.Full => "propagation_full",
        PropagationType.Partial => "propagation_partial",
        _ => "propagation_fetch",
    };

    /// <summary>
    /// propagate_in_video of the interactive model: decides full / partial / fetch from the action history, records it,
    /// and yields caller-owned outputs. <paramref name="observedType"/> receives the decision.
    /// </summary>
    public IEnumerable<VideoFrameOutput> Propagate(VideoInferenceState s, int? startFrameIdx, int? maxFrameNumToTrack, bool reverse,
                                                   Action<PropagationType>? observedType = null, Action<int>? onFrameStart = null,
                                                   CancellationToken cancellationToken = default)
    {
        CheckState(s);
        var (type, objIds) = ParseActionHistory(s);
        AddActionHistory(s, TypeName(type), startFrameIdx, objIds);
        observedType?.Invoke(type);
        if (type == PropagationType.Full)
            return PropagateFull(s, startFrameIdx, maxFrameNumToTrack, reverse, onFrameStart, cancellationToken);
        return PropagatePartialOrFetch(s, type, objIds, startFrameIdx, maxFrameNumToTrack, reverse, onFrameStart, cancellationToken);
    }

    private IEnumerable<VideoFrameOutput> PropagatePartialOrFetch(VideoInferenceState s, PropagationType type, List<int>? objIds, int? startFrameIdx,
                                                                  int? maxFrameNumToTrack, bool reverse, Action<int>? onFrameStart, CancellationToken ct)
    {
        var (order, _) = ProcessingOrder(s, startFrameIdx, maxFrameNumToTrack, reverse);
        var md = s.Metadata ??= new MaskletMetadata();
        if (type == PropagationType.Fetch)
        {
            foreach (int f in order)
            {
                ct.ThrowIfCancellationRequested();
                onFrameStart?.Invoke(f);
                var masks = new SortedDictionary<int, Tensor>();
                if (s.CachedFrameOutputs.TryGetValue(f, out var cached))
                    foreach (var (id, m) in cached) masks[id] = m.alias();
                using var raw = new RawFrameOutput
                {
                    ObjIdToMask = masks,
                    ObjIdToScore = new Dictionary<int, float>(md.ObjIdToScore),
                    ObjIdToTrackerScore = new Dictionary<int, float>(md.TrackerScores(f)),
                };
                yield return PostprocessOutput(s, f, raw, null, md.Suppressed(f), null);
            }
            yield break;
        }

        var ids = objIds!;
        var states = s.TrackerStates.Where(st => st.ObjIds.Intersect(ids).Any()).ToList();
        // preflight of the touched states (their new inputs' memories); needs the features of the prompted frames
        foreach (var st in states) PreflightWithFeatures(s, st);
        foreach (int f in order)
        {
            ct.ThrowIfCancellationRequested();
            onFrameStart?.Invoke(f);
            VideoFrameOutput post;
            using (var scope = NewDisposeScope())
            using (var noGrad = torch.no_grad())
            {
                PrepareBackboneFeats(s, f, reverse);
                var localIds = new List<int>();
                var lows = new List<Tensor>();
                var scores = new List<Tensor>();
                foreach (var st in states)
                {
                    if (st.NumObjects == 0) continue;
                    Tracker.UseFrameFeatures(st, s.TrackerFeatures[f]);
                    var (oIds, low, sc) = Tracker.PropagateOneFrame(st, f, reverse, runMemEncoder: true);
                    localIds.AddRange(oIds);
                    lows.Add(low.squeeze(1));
                    scores.Add(sc.squeeze(1));
                    low.Dispose();
                    sc.Dispose();
                }
                Tensor lowRes = lows.Count > 0 ? torch.cat(lows.ToArray(), 0) : torch.zeros(0, Tracker.Net.low_res_mask_size, Tracker.Net.low_res_mask_size);
                Tensor trkScores = scores.Count > 0 ? torch.cat(scores.ToArray(), 0) : torch.zeros(0);
                if (lows.Count > 0)
                    lowRes = MaskPost.FillHolesInMaskScores(lowRes.unsqueeze(1), Settings.FillHoleArea, Config.HardcodedInClasses.VideoFillHoleLogit).squeeze(1);
                var scoreArr = trkScores.cpu().data<float>().ToArray();
                var refined = new SortedDictionary<int, Tensor>();
                var frameScores = md.TrackerScores(f);
                foreach (int id in ids)
                {
                    int i = localIds.IndexOf(id);
                    if (i < 0) continue;
                    frameScores[id] = scoreArr[i]; // a raw object-score logit (upstream quirk: others hold probabilities)
                    refined[id] = LowResToVideoRes(s, lowRes[i]);
                }
                var objIdToMask = BuildTrackerOutput(s, f, refined);
                CacheFrameOutputs(s, f, objIdToMask, md.Suppressed(f));
                using var raw = new RawFrameOutput
                {
                    ObjIdToMask = objIdToMask,
                    ObjIdToScore = new Dictionary<int, float>(md.ObjIdToScore),
                    ObjIdToTrackerScore = new Dictionary<int, float>(frameScores),
                };
                post = PostprocessOutput(s, f, raw, null, md.Suppressed(f), null);
            }
            yield return post;
        }
    }

    /// <summary>_convert_low_res_mask_to_video_res: [h,w] logits → [1,H,W] bool.</summary>
    private Tensor LowResToVideoRes(VideoInferenceState s, Tensor lowRes) =>
        nn.functional.interpolate(lowRes[TensorIndex.None, TensorIndex.None].to(ScalarType.Float32), [s.OrigHeight, s.OrigWidth],
                                  mode: InterpolationMode.Bilinear, align_corners: false).squeeze(0).gt(0);

    /// <summary>_build_tracker_output: the frame's cached masks with the refined objects replaced (own handles).</summary>
    private static SortedDictionary<int, Tensor> BuildTrackerOutput(VideoInferenceState s, int frameIdx, SortedDictionary<int, Tensor>? refined)
    {
        if (!s.CachedFrameOutputs.TryGetValue(frameIdx, out var cached))
            throw new Sam3StateException($"no cached outputs for frame {frameIdx}: propagate (or prompt) that frame first");
        var d = new SortedDictionary<int, Tensor>();
        foreach (var (id, m) in cached) d[id] = m.alias();
        if (refined is not null)
            foreach (var (id, m) in refined)
            {
                if (d.Remove(id, out var old)) old.Dispose();
                d[id] = m.alias();
            }
        foreach (var t in d.Values) t.DetachFromDisposeScope();
        return d;
    }

    /// <summary>_prepare_backbone_feats: the detector on the frame (fills the feature cache; detections unused).</summary>
    private void PrepareBackboneFeats(VideoInferenceState s, int frameIdx, bool reverse)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        RunBackboneAndDetection(s, frameIdx, reverse, s.PerFrameGeometricPrompt[frameIdx], allowNewDetections: true);
    }

    /// <summary>Preflight of a tracker state whose temporary outputs may sit on frames other than the cached one.</summary>
    private void PreflightWithFeatures(VideoInferenceState s, TrackerState st)
    {
        var frames = new SortedSet<int>();
        foreach (var o in st.Objects) { frames.UnionWith(o.Temp.Cond.Keys); frames.UnionWith(o.Temp.NonCond.Keys); }
        foreach (int f in frames)
            if (!s.TrackerFeatures.ContainsKey(f) && (st.Cached is null || st.Cached.FrameIndex != f))
                throw new Sam3StateException($"tracker features of frame {f} are not cached (upstream requires them too)");
        if (frames.Count == 1 && s.TrackerFeatures.TryGetValue(frames.Min, out var ff)) Tracker.UseFrameFeatures(st, ff);
        Tracker.PropagatePreflight(st, runMemEncoder: true);
    }

    /// <summary>
    /// add_tracker_new_points: points (normalised xy, labels 1/0) on an existing object (refinement, in its tracker state)
    /// or a new object id (a new tracker state). Returns the frame's outputs with the object's new mask.
    /// </summary>
    public VideoFrameOutput AddTrackerNewPoints(VideoInferenceState s, int frameIdx, int objId, IReadOnlyList<(float X, float Y)> points, IReadOnlyList<int> labels)
    {
        CheckState(s);
        if ((uint)frameIdx >= (uint)s.NumFrames) throw new ArgumentOutOfRangeException(nameof(frameIdx), frameIdx, $"frame index outside [0, {s.NumFrames - 1}]");
        if (objId < 0) throw new ArgumentOutOfRangeException(nameof(objId), objId, "object ids are non-negative");
        var md = s.Metadata ??= new MaskletMetadata();
        bool exists = md.ObjIds.Contains(objId);
        PrepareBackboneFeats(s, frameIdx, reverse: false);
        TrackerState st;
        if (!exists)
        {
            int maxObjects = Settings.MaxNumObjects > 0 ? Settings.MaxNumObjects : 10000;
            if (md.ObjIds.Count >= maxObjects)
                throw new Sam3StateException($"cannot add object {objId}: already tracking {md.ObjIds.Count} objects (max_num_objects {maxObjects})");
            st = Tracker.InitState(new SharedFrameSource(s.Frames.Source));
            s.TrackerStates.Add(st);
            md.ObjIds = md.ObjIds.Append(objId).ToList();
            if (Settings.MaskletConfirmationEnable) { md.ConfirmationStatus.Add(0); md.ConsecutiveDetNum.Add(0); }
            md.MaxObjId = Math.Max(md.MaxObjId, objId);
            AddActionHistory(s, "add", frameIdx, [objId]);
        }
        else
        {
            var found = s.TrackerStates.Where(t => t.ObjIds.Contains(objId)).ToList();
            if (found.Count != 1) throw new Sam3StateException($"object {objId} is in {found.Count} tracker states");
            st = found[0];
            AddActionHistory(s, "refine", frameIdx, [objId]);
        }
        md.ObjIdToScore[objId] = 1.0f;
        md.TrackerScores(frameIdx)[objId] = 1.0f;
        md.RemovedObjIds.Remove(objId);
        foreach (var set in md.SuppressedObjIds.Values) set.Remove(objId);
        if (Settings.MaskletConfirmationEnable)
        {
            int idx = md.ObjIds.IndexOf(objId);
            if (idx >= 0 && idx < md.ConfirmationStatus.Count)
            {
                md.ConfirmationStatus[idx] = 1;
                md.ConsecutiveDetNum[idx] = Settings.MaskletConfirmationConsecutiveDetThresh;
            }
        }

        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tracker.UseFrameFeatures(st, s.TrackerFeatures[frameIdx]);
        var video = Tracker.AddNewPointsOrBox(st, frameIdx, objId, points, labels, clearOldPoints: true, relCoordinates: true, usePrevMemFrame: UsePrevMemFrame);
        if (video.shape[0] > 0) video = MaskPost.FillHolesInMaskScores(video, Settings.FillHoleArea, Config.HardcodedInClasses.VideoFillHoleLogit);
        Tracker.UseFrameFeatures(st, s.TrackerFeatures[frameIdx]);
        Tracker.PropagatePreflight(st, runMemEncoder: true);
        ClearDetectorAddedCondFrameInTracker(st, objId, frameIdx);
        int objIdx = st.ObjIds.IndexOf(objId);
        var newMask = video[objIdx].gt(0.0);
        var objIdToMask = BuildTrackerOutput(s, frameIdx, new SortedDictionary<int, Tensor> { [objId] = newMask });
        CacheFrameOutputs(s, frameIdx, objIdToMask, md.Suppressed(frameIdx));
        using var raw = new RawFrameOutput
        {
            ObjIdToMask = objIdToMask,
            ObjIdToScore = new Dictionary<int, float>(md.ObjIdToScore),
            ObjIdToTrackerScore = new Dictionary<int, float>(md.TrackerScores(frameIdx)),
        };
        return PostprocessOutput(s, frameIdx, raw, null, md.Suppressed(frameIdx), null);
    }

    /// <summary>clear_detector_added_cond_frame_in_tracker: mask-only conditioning frames near a refinement are cleared for all objects.</summary>
    private void ClearDetectorAddedCondFrameInTracker(TrackerState st, int objId, int refinedFrame)
    {
        int objIdx = st.ObjIds.IndexOf(objId);
        var slot = st.Objects[objIdx];
        var frames = slot.MaskInputs.Keys.Where(f => !slot.PointInputs.ContainsKey(f) && Math.Abs(f - refinedFrame) <= RefinementDetectorCondFrameRemovalWindow).ToList();
        foreach (int f in frames)
            foreach (int id in st.ObjIds.ToList())
                Tracker.ClearAllPointsInFrame(st, f, id, needOutput: false);
    }

    /// <summary>remove_object: the object leaves its tracker state, the metadata and the cached outputs.</summary>
    public void RemoveObject(VideoInferenceState s, int objId, bool isUserAction = true)
    {
        CheckState(s);
        var md = s.Metadata;
        if (md is null || !md.ObjIds.Contains(objId)) throw new Sam3PromptException($"object {objId} not found (tracked: [{string.Join(",", md?.ObjIds ?? [])}])");
        TrackerRemoveObject(s, objId);
        if (isUserAction) AddActionHistory(s, "remove", null, [objId]);
        int idx = md.ObjIds.IndexOf(objId);
        md.ObjIds = md.ObjIds.Where(i => i != objId).ToList();
        if (Settings.MaskletConfirmationEnable && idx < md.ConfirmationStatus.Count)
        {
            md.ConfirmationStatus.RemoveAt(idx);
            md.ConsecutiveDetNum.RemoveAt(idx);
        }
        md.ObjIdToScore.Remove(objId);
        foreach (var d in s.CachedFrameOutputs.Values)
            if (d.Remove(objId, out var t)) t.Dispose();
    }
}
