using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>Detections of one frame above the score threshold (upstream <c>det_out</c>).</summary>
internal sealed record DetOut(Tensor Bbox, Tensor Mask, Tensor Scores, float[] ScoresArr);

internal sealed partial class Sam3VideoEngine
{
    // =============================================================== _det_track_one_frame

    /// <summary>
    /// _det_track_one_frame: detection, tracker propagation, update planning (association, hot-start, reconditioning,
    /// occlusion suppression, memory encoding), execution (new / removed masklets) and the frame's masks.
    /// </summary>
    private (SortedDictionary<int, Tensor> ObjIdToMask, VideoFrameStats Stats) DetTrackOneFrame(VideoInferenceState s, int frameIdx, bool reverse, Prompt? geometricPrompt,
                                                                                               bool allowNewDetections)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var det = RunBackboneAndDetection(s, frameIdx, reverse, geometricPrompt, allowNewDetections);
        s.Metadata ??= new MaskletMetadata();
        var md = s.Metadata;
        var prevIds = md.ObjIds.ToArray();
        var (trkMasks, trkScores) = RunTrackerPropagation(s, frameIdx, reverse, prevIds);

        // ---- planning (rank 0)
        var assoc = AssociateDetTrk(det.Mask, det.ScoresArr, trkMasks, prevIds);
        var newDetInds = assoc.NewDetInds;
        if (Settings.SuppressDetCloseToBoundary && newDetInds.Length > 0)
        {
            var boxes = det.Bbox.index_select(0, torch.tensor(newDetInds.Select(i => (long)i).ToArray()).to(det.Bbox.device));
            var keepB = SuppressDetectionsCloseToBoundary(boxes).cpu().data<bool>().ToArray();
            newDetInds = newDetInds.Where((_, i) => keepB[i]).ToArray();
        }
        int prevNum = prevIds.Length, newNum = newDetInds.Length, dropped = 0;
        int maxObjects = Settings.MaxNumObjects > 0 ? Settings.MaxNumObjects : 10000;
        if (!s.IsImageOnly && prevNum + newNum > maxObjects)
        {
            int keepN = maxObjects - prevNum;
            dropped = newNum - keepN;
            // keep the top-scoring detections (stable argsort reversed, as numpy's argsort()[::-1])
            newDetInds = keepN <= 0 ? [] : keepN == newNum ? newDetInds
                : Enumerable.Range(0, newNum).OrderBy(i => det.ScoresArr[newDetInds[i]]).ThenBy(i => i).Reverse().Take(keepN).Select(i => newDetInds[i]).ToArray();
            newNum = newDetInds.Length;
        }
        int startId = md.MaxObjId + 1;
        var newObjIds = Enumerable.Range(startId, newNum).ToArray();
        var newlyRemoved = ProcessHotstart(md, frameIdx, reverse, assoc.DetToMatchedTrkObjIds, newObjIds, assoc.EmptyTrkObjIds, assoc.UnmatchedTrkObjIds);

        // reconditioning (periodic; the bbox-IoU variant is off by default)
        var reconditioned = new HashSet<int>();
        if (Settings.ReconstructionBboxIouThresh > 0 && assoc.TrkIdToMaxIouHighConfDet.Count > 0)
            throw new Sam3ConfigException("reconstruction_bbox_iou_thresh > 0 is not implemented");
        bool periodic = Settings.ReconditionEveryNthFrame > 0 && frameIdx % Settings.ReconditionEveryNthFrame == 0 && assoc.TrkIdToMaxIouHighConfDet.Count > 0;
        if (periodic) ReconditionMasklets(s, frameIdx, det, assoc.TrkIdToMaxIouHighConfDet, prevIds, trkScores);

        // memory encoding of the tracked masks (occlusion suppression first)
        var lastOccludedNew = new Dictionary<int, long>();
        if (trkMasks.shape[0] > 0)
        {
            if (Settings.SuppressOverlappingBasedOnRecentOcclusionThreshold > 0.0)
                trkMasks = SuppressOverlappingBasedOnRecentOcclusion(frameIdx, trkMasks, prevIds, md.ObjIdToLastOccluded, lastOccludedNew, newlyRemoved, reverse);
            TrackerUpdateMemories(s, frameIdx, trkMasks);
        }

        // metadata update
        var updated = prevIds.Concat(newObjIds).Where(id => !newlyRemoved.Contains(id)).ToList();
        if (Settings.MaskletConfirmationEnable) UpdateMaskletConfirmation(md, prevIds, updated, assoc.DetToMatchedTrkObjIds, newObjIds);
        md.ObjIds = updated;
        md.ObjIdToLastOccluded = lastOccludedNew;
        var frameScores = md.TrackerScores(frameIdx);
        for (int i = 0; i < newNum; i++)
        {
            md.ObjIdToScore[newObjIds[i]] = det.ScoresArr[newDetInds[i]];
            frameScores[newObjIds[i]] = det.ScoresArr[newDetInds[i]];
        }
        if (newNum > 0) md.MaxObjId = Math.Max(md.MaxObjId, newObjIds.Max());
        foreach (int id in newlyRemoved)
        {
            md.ObjIdToScore[id] = (float)Settings.RemovedObjectScore;
            frameScores[id] = (float)Settings.RemovedObjectScore;
            md.ObjIdToLastOccluded.Remove(id);
        }

        // ---- execution
        if (newNum > 0) TrackerAddNewObjects(s, frameIdx, newObjIds, det.Mask.index_select(0, torch.tensor(newDetInds.Select(i => (long)i).ToArray()).to(det.Mask.device)));
        foreach (int id in newlyRemoved) TrackerRemoveObject(s, id);

        // ---- outputs
        var objIdToMask = BuildOutputs(s, det, trkMasks, prevIds, newDetInds, newObjIds, reconditioned, assoc.TrkIdToMaxIouHighConfDet);
        var stats = new VideoFrameStats(md.ObjIds.Count, dropped);
        if (trkScores.shape[0] > 0)
        {
            var sig = trkScores.sigmoid().cpu().data<float>().ToArray();
            for (int i = 0; i < prevIds.Length; i++) frameScores[prevIds[i]] = sig[i];
        }
        foreach (var t in objIdToMask.Values) t.DetachFromDisposeScope();
        return (objIdToMask, stats);
    }

    // =============================================================== detection

    /// <summary>Text features of find_text_batch = [prompt or placeholder, "visual"], cached for the latest batch.</summary>
    private TextEncoderOutputOwned TextFeatures(VideoInferenceState s)
    {
        var key = (s.TextSlot0, VisualText);
        if (s.Text is not null && s.TextKey == key) return s.Text;
        s.Text?.Dispose();
        using var scope = NewDisposeScope();
        var (ids, pad) = Tokenizer.TokenizeToTensors([key.Item1, key.Item2]);
        var enc = Detector.backbone.ForwardText(ids.to(ModelDevice), pad.to(ModelDevice));
        s.Text = new TextEncoderOutputOwned(enc.LanguageFeatures.DetachFromDisposeScope(), enc.LanguageMask.DetachFromDisposeScope());
        s.TextKey = key;
        return s.Text;
    }

    /// <summary>
    /// run_backbone_and_detection: detector outputs of the frame from the look-ahead buffer (computing the frame when
    /// missing, dropping the previous one and pre-computing the next one in tracking order, as the one-GPU multigpu
    /// buffer does), detections above the score threshold, and the frame's tracker features.
    /// </summary>
    private DetOut RunBackboneAndDetection(VideoInferenceState s, int frameIdx, bool reverse, Prompt? geometricPrompt, bool allowNewDetections)
    {
        var text = TextFeatures(s);
        var prompt = geometricPrompt ?? Prompt.Empty(1, ModelDevice);
        if (!s.DetBuffer.ContainsKey(frameIdx)) BuildDetectorFrame(s, frameIdx, text, prompt);
        var d = s.DetBuffer[frameIdx];
        // drop the previous chunk, pre-compute the next
        int prev = reverse ? frameIdx + 1 : frameIdx - 1;
        if (prev >= 0 && prev < s.NumFrames && s.DetBuffer.Remove(prev, out var old)) old.Dispose();
        int next = reverse ? frameIdx - 1 : frameIdx + 1;
        if (next >= 0 && next < s.NumFrames && s.IsFrameAvailable(next) && !s.DetBuffer.ContainsKey(next)) BuildDetectorFrame(s, next, text, prompt);

        var probs = d.PredLogits.sigmoid();
        if (!allowNewDetections) probs = probs - Settings.DisallowedDetProbOffset;
        var pos = probs.gt(Settings.ScoreThresholdDetection).nonzero().squeeze(1);
        var scores = probs.index_select(0, pos);
        var result = new DetOut(d.PredBoxesXyxy.index_select(0, pos), d.PredMasks.index_select(0, pos), scores, scores.cpu().data<float>().ToArray());

        // tracker features of this frame (the previous frame's are dropped)
        if (s.TrackerFeatures.Remove(frameIdx, out var oldF)) oldF.Dispose();
        s.TrackerFeatures[frameIdx] = new FrameFeatures
        {
            FrameIndex = frameIdx,
            Fpn = d.Tracker.Fpn.Select(t => t.alias().DetachFromDisposeScope()).ToArray(),
            Pos = d.Tracker.Pos.Select(t => t.alias().DetachFromDisposeScope()).ToArray(),
        };
        int drop = reverse ? frameIdx + 1 : frameIdx - 1;
        if (s.TrackerFeatures.Remove(drop, out var dropF)) dropF.Dispose();
        return result;
    }

    /// <summary>_build_multigpu_buffer_next_chunk for one frame: backbone, grounding, mask NMS, SAM2 features.</summary>
    private void BuildDetectorFrame(VideoInferenceState s, int frameIdx, TextEncoderOutputOwned text, Prompt prompt)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var image = s.Frames.Normalized(frameIdx, ModelDevice);
        using var bb = Detector.backbone.ForwardImage(image);
        var textIds = torch.tensor(new long[] { s.TextId }, device: ModelDevice);
        var imgIds = torch.zeros(1, dtype: ScalarType.Int64, device: ModelDevice);
        Action<string, Tensor>? probe = DetectorProbe is null ? null : (n, t) =>
        {
            if (n is "geo.out.0" or "geo.out.1") DetectorProbe(frameIdx, "det." + n, t);
        };
        using var g = Detector.ForwardGrounding(bb, text.LanguageFeatures, text.LanguageMask, textIds, imgIds, prompt, probe);
        DetectorProbe?.Invoke(frameIdx, "det.grounding.pred_logits", g.PredLogits!);
        DetectorProbe?.Invoke(frameIdx, "det.grounding.pred_boxes", g.PredBoxes!);
        DetectorProbe?.Invoke(frameIdx, "det.grounding.presence_logit_dec", g.PresenceLogitDec!);
        var logits = g.PredLogits![0, .., 0].clone();
        var masks = g.PredMasks![0];
        if (Settings.DetNmsThresh > 0.0)
        {
            var keep = NmsMasks(logits.sigmoid(), masks, Settings.ScoreThresholdDetection, Settings.DetNmsThresh);
            logits = logits - Settings.NmsSuppressedLogitOffset * keep.logical_not().to(ScalarType.Float32);
        }
        var sam2 = bb.Sam2 ?? throw new Sam3StateException("the backbone has no SAM2 neck (load the model with the tracker heads)");
        var feats = Tracker.FeaturesFromSam2Neck(frameIdx, sam2.BackboneFpn, sam2.VisionPosEnc);
        s.DetBuffer[frameIdx] = new DetectorFrame
        {
            PredLogits = logits.DetachFromDisposeScope(),
            PredBoxesXyxy = g.PredBoxesXyxy![0].clone().DetachFromDisposeScope(),
            PredMasks = masks.clone().DetachFromDisposeScope(),
            Tracker = feats,
        };
    }

    /// <summary>
    /// perflib nms_masks: detections above <paramref name="probThreshold"/>, greedy NMS on their mask IoU (CPU order:
    /// numpy argsort descending), returns the keep flags [Q].
    /// </summary>
    public static Tensor NmsMasks(Tensor probs, Tensor masks, double probThreshold, double iouThreshold)
    {
        using var scope = NewDisposeScope();
        var valid = probs.gt(probThreshold);
        var validIdx = valid.nonzero().squeeze(1).cpu().data<long>().ToArray();
        var keep = new bool[probs.shape[0]];
        if (validIdx.Length == 0) return torch.tensor(keep).to(probs.device).MoveToOuterDisposeScope();
        var sel = torch.tensor(validIdx).to(probs.device);
        var p = probs.index_select(0, sel).to(ScalarType.Float32).cpu().data<float>().ToArray();
        var ious = MaskIou(masks.index_select(0, sel).gt(0), masks.index_select(0, sel).gt(0)).cpu();
        var iou = ious.data<float>().ToArray();
        int n = p.Length;
        var order = NumpyArgsortDescending(p);
        while (order.Count > 0)
        {
            int i = order[0];
            keep[validIdx[i]] = true;
            var rest = new List<int>();
            for (int k = 1; k < order.Count; k++)
                if (iou[i * n + order[k]] <= iouThreshold) rest.Add(order[k]);
            order = rest;
        }
        return torch.tensor(keep).to(probs.device).MoveToOuterDisposeScope();
    }

    /// <summary>numpy <c>scores.argsort()[::-1]</c>: quicksort ascending (ties in unspecified but, for small n, insertion order), reversed.</summary>
    private static List<int> NumpyArgsortDescending(float[] p)
    {
        var asc = Enumerable.Range(0, p.Length).OrderBy(i => p[i]).ThenBy(i => i).ToList();
        asc.Reverse();
        return asc;
    }

    // =============================================================== tracker propagation

    /// <summary>_propogate_tracker_one_frame_local_gpu (without memory encoding) + hole filling: low-res masks [O,h,w] and object-score logits [O].</summary>
    private (Tensor Masks, Tensor Scores) RunTrackerPropagation(VideoInferenceState s, int frameIdx, bool reverse, int[] expectedIds)
    {
        var ids = new List<int>();
        var masks = new List<Tensor>();
        var scores = new List<Tensor>();
        var feats = s.TrackerFeatures[frameIdx];
        foreach (var st in s.TrackerStates)
        {
            if (st.NumObjects == 0) continue;
            Tracker.UseFrameFeatures(st, feats);
            var (oIds, low, sc) = Tracker.PropagateOneFrame(st, frameIdx, reverse, runMemEncoder: false);
            ids.AddRange(oIds);
            masks.Add(low.squeeze(1));
            scores.Add(sc.squeeze(1));
            low.Dispose();
            sc.Dispose();
        }
        if (!ids.SequenceEqual(expectedIds))
            throw new Sam3StateException($"tracker objects [{string.Join(",", ids)}] differ from the metadata [{string.Join(",", expectedIds)}]");
        int lr = Tracker.Net.low_res_mask_size;
        if (masks.Count == 0) return (torch.zeros(0, lr, lr, device: ModelDevice), torch.zeros(0, device: ModelDevice));
        var m = torch.cat(masks.ToArray(), 0);
        var sc2 = torch.cat(scores.ToArray(), 0);
        m = MaskPost.FillHolesInMaskScores(m.unsqueeze(1), Settings.FillHoleArea, Config.HardcodedInClasses.VideoFillHoleLogit).squeeze(1);
        return (m, sc2);
    }

    // =============================================================== association

    private sealed record Association(int[] NewDetInds, int[] UnmatchedTrkObjIds, SortedDictionary<int, int[]> DetToMatchedTrkObjIds,
                                      Dictionary<int, int> TrkIdToMaxIouHighConfDet, List<int> TrkIdOrder, int[] EmptyTrkObjIds);

    /// <summary>_associate_det_trk: match detections and masklets by mask IoU (many-to-one), find new detections.</summary>
    private Association AssociateDetTrk(Tensor detMasks, float[] detScores, Tensor trkMasks, int[] trkObjIds)
    {
        int nDet = (int)detMasks.shape[0], nTrk = (int)trkMasks.shape[0];
        if (nTrk == 0)
            return new Association(Enumerable.Range(0, nDet).ToArray(), [], new(), new(), new(), []);
        if (nDet == 0)
        {
            var nonEmpty0 = trkMasks.gt(0).flatten(1).any(1).cpu().data<bool>().ToArray();
            return new Association([], trkObjIds.Where((_, i) => nonEmpty0[i]).ToArray(), new(), new(), new(), trkObjIds.Where((_, i) => !nonEmpty0[i]).ToArray());
        }
        if (detMasks.shape[^2] != trkMasks.shape[^2] || detMasks.shape[^1] != trkMasks.shape[^1])
        {
            long detArea = detMasks.shape[^2] * detMasks.shape[^1], trkArea = trkMasks.shape[^2] * trkMasks.shape[^1];
            if (detArea < trkArea)
                trkMasks = nn.functional.interpolate(trkMasks.unsqueeze(1), [detMasks.shape[^2], detMasks.shape[^1]], mode: InterpolationMode.Bilinear, align_corners: false).squeeze(1);
            else
                detMasks = nn.functional.interpolate(detMasks.unsqueeze(1), [trkMasks.shape[^2], trkMasks.shape[^1]], mode: InterpolationMode.Bilinear, align_corners: false).squeeze(1);
        }
        var ious = MaskIou(detMasks.gt(0), trkMasks.gt(0)).cpu().data<float>().ToArray();
        float Iou(int d, int t) => ious[d * nTrk + t];
        var trkMatched = new bool[nTrk];
        for (int t = 0; t < nTrk; t++) for (int d = 0; d < nDet; d++) if (Iou(d, t) >= Settings.TrkAssocIouThresh) trkMatched[t] = true;
        var nonEmpty = trkMasks.gt(0).flatten(1).any(1).cpu().data<bool>().ToArray();
        var unmatched = Enumerable.Range(0, nTrk).Where(t => nonEmpty[t] && !trkMatched[t]).Select(t => trkObjIds[t]).ToArray();
        var empty = Enumerable.Range(0, nTrk).Where(t => !nonEmpty[t]).Select(t => trkObjIds[t]).ToArray();
        var isNew = new bool[nDet];
        for (int d = 0; d < nDet; d++)
        {
            bool any = false;
            for (int t = 0; t < nTrk; t++) if (Iou(d, t) >= Settings.AssocIouThresh) any = true;
            isNew[d] = detScores[d] >= Settings.NewDetThresh && !any;
        }
        var newInds = Enumerable.Range(0, nDet).Where(d => isNew[d]).ToArray();
        var detToMatched = new SortedDictionary<int, int[]>();
        var trkToDet = new Dictionary<int, int>();
        var trkOrder = new List<int>();
        for (int d = 0; d < nDet; d++)
        {
            detToMatched[d] = Enumerable.Range(0, nTrk).Where(t => Iou(d, t) >= Settings.AssocIouThresh).Select(t => trkObjIds[t]).ToArray();
            int best = 0;
            float bestIou = Iou(d, 0);
            for (int t = 1; t < nTrk; t++) if (Iou(d, t) > bestIou) { best = t; bestIou = Iou(d, t); }
            bool highConf = detScores[d] >= Settings.HighConfThresh && !isNew[d];
            bool highIou = bestIou >= Settings.HighIouThresh;
            if (highConf && highIou)
            {
                int obj = trkObjIds[best];
                if (!trkToDet.ContainsKey(obj)) trkOrder.Add(obj);
                trkToDet[obj] = d;
            }
        }
        return new Association(newInds, unmatched, detToMatched, trkToDet, trkOrder, empty);
    }

    /// <summary>_suppress_detections_close_to_boundary on normalised xyxy boxes: keep the centre inside the margin.</summary>
    private Tensor SuppressDetectionsCloseToBoundary(Tensor boxes)
    {
        var cx = (boxes[.., 0] + boxes[.., 2]) / 2;
        var cy = (boxes[.., 1] + boxes[.., 3]) / 2;
        double m = Settings.DetBoundaryMargin;
        return cx.gt(m) & cx.lt(1.0 - m) & cy.gt(m) & cy.lt(1.0 - m);
    }

    // =============================================================== hot-start

    /// <summary>_process_hotstart: keep-alive counters, removal of unmatched / duplicated young masklets, suppression.</summary>
    private HashSet<int> ProcessHotstart(MaskletMetadata md, int frameIdx, bool reverse, SortedDictionary<int, int[]> detToMatched, int[] newObjIds,
                                         int[] emptyTrkObjIds, int[] unmatchedTrkObjIds)
    {
        var st = Settings;
        var newlyRemoved = new HashSet<int>();
        var suppressed = md.Suppressed(frameIdx);
        int hotstartDiff = reverse ? frameIdx + st.HotstartDelay : frameIdx - st.HotstartDelay;
        foreach (int id in newObjIds)
        {
            md.ObjFirstFrameIdx.TryAdd(id, frameIdx);
            if (md.TrkKeepAlive.ContainsKey(id)) throw new Sam3StateException($"object id {id} was already tracked");
            md.TrkKeepAlive[id] = st.InitTrkKeepAlive;
        }
        var matched = new List<int>();
        foreach (var arr in detToMatched.Values) foreach (int id in arr) if (!matched.Contains(id)) matched.Add(id);
        foreach (int id in matched) md.TrkKeepAlive[id] = Math.Min(st.MaxTrkKeepAlive, md.KeepAlive(id) + 1);
        foreach (int id in unmatchedTrkObjIds)
        {
            if (!md.UnmatchedFrameInds.TryGetValue(id, out var l)) md.UnmatchedFrameInds[id] = l = new List<int>();
            l.Add(frameIdx);
            md.TrkKeepAlive[id] = Math.Max(st.MinTrkKeepAlive, md.KeepAlive(id) - 1);
        }
        if (st.DecreaseTrkKeepAliveForEmptyMasklets)
            foreach (int id in emptyTrkObjIds) md.TrkKeepAlive[id] = Math.Max(st.MinTrkKeepAlive, md.KeepAlive(id) - 1);

        foreach (var (id, frames) in md.UnmatchedFrameInds)
        {
            if (md.RemovedObjIds.Contains(id) || newlyRemoved.Contains(id)) continue;
            if (frames.Count >= st.HotstartUnmatchThresh)
            {
                int first = md.ObjFirstFrameIdx[id];
                bool within = (first > hotstartDiff && !reverse) || (first < hotstartDiff && reverse);
                if (within) newlyRemoved.Add(id);
            }
            int ka = md.KeepAlive(id);
            md.TrkKeepAlive[id] = ka; // defaultdict access
            if (ka <= 0 && !st.SuppressUnmatchedOnlyWithinHotstart && !md.RemovedObjIds.Contains(id) && !newlyRemoved.Contains(id))
                suppressed.Add(id);
        }

        foreach (var arr in detToMatched.Values)
        {
            if (arr.Length < 2) continue;
            int firstAppear = arr[0];
            foreach (int id in arr.Skip(1))
            {
                int f = md.ObjFirstFrameIdx[id], best = md.ObjFirstFrameIdx[firstAppear];
                if (!reverse ? f < best : f > best) firstAppear = id;
            }
            foreach (int id in arr)
                if (id != firstAppear) md.OverlapFrames(firstAppear, id).Add(frameIdx);
        }
        foreach (var ((_, id), frames) in md.OverlapPairToFrameInds)
        {
            if (md.RemovedObjIds.Contains(id) || newlyRemoved.Contains(id)) continue;
            int first = md.ObjFirstFrameIdx[id];
            if ((first > hotstartDiff && !reverse) || (first < hotstartDiff && reverse))
                if (frames.Count >= st.HotstartDupThresh) newlyRemoved.Add(id);
        }
        md.RemovedObjIds.UnionWith(newlyRemoved);
        return newlyRemoved;
    }

    /// <summary>update_masklet_confirmation_status: consecutive matched frames → confirmed (status 1).</summary>
    private void UpdateMaskletConfirmation(MaskletMetadata md, int[] prevIds, List<int> updatedIds, SortedDictionary<int, int[]> detToMatched, int[] newObjIds)
    {
        var status = new List<int>();
        var consecutive = new List<int>();
        foreach (int id in updatedIds)
        {
            int pi = Array.IndexOf(prevIds, id);
            status.Add(pi >= 0 ? md.ConfirmationStatus[pi] : 0);
            consecutive.Add(pi >= 0 ? md.ConsecutiveDetNum[pi] : 0);
        }
        var matchedIds = new HashSet<int>(newObjIds);
        foreach (var arr in detToMatched.Values) matchedIds.UnionWith(arr);
        for (int i = 0; i < updatedIds.Count; i++)
        {
            consecutive[i] = matchedIds.Contains(updatedIds[i]) ? consecutive[i] + 1 : 0;
            if (consecutive[i] >= Settings.MaskletConfirmationConsecutiveDetThresh) status[i] = 1;
        }
        md.ConfirmationStatus = status;
        md.ConsecutiveDetNum = consecutive;
    }

    // =============================================================== reconditioning, occlusion, memories

    /// <summary>_recondition_masklets: re-prompt confident masklets with their matched detection's mask (then preflight).</summary>
    private void ReconditionMasklets(VideoInferenceState s, int frameIdx, DetOut det, Dictionary<int, int> trkToDet, int[] prevIds, Tensor trkScores)
    {
        var scores = trkScores.cpu().data<float>().ToArray();
        foreach (var (trkObjId, detIdx) in trkToDet)
        {
            var newMask = det.Mask[detIdx..(detIdx + 1)];
            var binary = nn.functional.interpolate(newMask.unsqueeze(1), [_inputMaskSize, _inputMaskSize], mode: InterpolationMode.Bilinear, align_corners: false)
                .squeeze(1)[0].gt(0);
            int objIdx = Array.IndexOf(prevIds, trkObjId);
            float objScore = scores[objIdx];
            var reconditionedStates = new List<TrackerState>();
            foreach (var st in s.TrackerStates)
            {
                if (st.ObjIds.Contains(trkObjId) && objScore > Settings.ReconditionMinObjectScore)
                {
                    Tracker.UseFrameFeatures(st, s.TrackerFeatures[frameIdx]);
                    using var _ = Tracker.AddNewMask(st, frameIdx, trkObjId, binary);
                    if (!reconditionedStates.Contains(st)) reconditionedStates.Add(st);
                }
            }
            foreach (var st in reconditionedStates) Tracker.PropagatePreflight(st, runMemEncoder: true);
        }
    }

    /// <summary>
    /// _suppress_overlapping_based_on_recent_occlusion: among masklets overlapping (IoU ≥ threshold), the more recently
    /// occluded one is suppressed (mask set to −10) before memory encoding; records each object's last occluded frame.
    /// </summary>
    private Tensor SuppressOverlappingBasedOnRecentOcclusion(int frameIdx, Tensor masks, int[] objIds, Dictionary<int, long> lastOccludedPrev,
                                                             Dictionary<int, long> lastOccludedNew, HashSet<int> newlyRemoved, bool reverse)
    {
        const long neverOccluded = -1, alwaysOccluded = 100000;
        var binary = masks.gt(0);
        int n = objIds.Length;
        var last = objIds.Select(id => lastOccludedPrev.TryGetValue(id, out var v) ? v : newlyRemoved.Contains(id) ? alwaysOccluded : neverOccluded).ToArray();
        var toSuppress = new bool[n];
        if (n > 1)
        {
            var iou = MaskIou(binary, binary).cpu().data<float>().ToArray();
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++)
                {
                    if (!(iou[i * n + j] >= Settings.SuppressOverlappingBasedOnRecentOcclusionThreshold)) continue;
                    bool iLater = reverse ? last[i] < last[j] : last[i] > last[j];
                    bool jLater = reverse ? last[j] < last[i] : last[j] > last[i];
                    if (iLater && last[j] > -1) toSuppress[i] = true;
                    if (jLater && last[i] > -1) toSuppress[j] = true;
                }
        }
        var occluded = binary.flatten(1).any(1).logical_not().cpu().data<bool>().ToArray();
        for (int i = 0; i < n; i++) lastOccludedNew[objIds[i]] = occluded[i] || toSuppress[i] ? frameIdx : last[i];
        if (!toSuppress.Any(x => x)) return masks;
        var sup = torch.tensor(toSuppress).to(masks.device);
        return torch.where(sup[.., TensorIndex.None, TensorIndex.None], torch.tensor((float)Settings.SuppressedMaskLogit, device: masks.device), masks);
    }

    /// <summary>
    /// _tracker_update_memories: masks resized to the memory encoder's input size, the pairwise area-shrinkage
    /// suppression, an object-score proxy ±10 from the mask area, then each state's memory of the frame.
    /// </summary>
    private void TrackerUpdateMemories(VideoInferenceState s, int frameIdx, Tensor lowResMasks)
    {
        if (s.TrackerStates.Count == 0) return;
        var highRes = nn.functional.interpolate(lowResMasks.unsqueeze(1), [_interpolSize[0], _interpolSize[1]], mode: InterpolationMode.Bilinear, align_corners: false);
        highRes = SuppressObjectPwAreaShrinkage(highRes);
        var proxy = torch.where(highRes.gt(0).flatten(2).any(2), torch.tensor(Settings.MemoryObjectScoreProxy, dtype: ScalarType.Float32),
                                torch.tensor(-Settings.MemoryObjectScoreProxy, dtype: ScalarType.Float32));
        int start = 0;
        var feats = s.TrackerFeatures[frameIdx];
        foreach (var st in s.TrackerStates)
        {
            int n = st.NumObjects;
            if (n == 0) continue;
            Tracker.UseFrameFeatures(st, feats);
            Tracker.UpdateMemories(st, frameIdx, highRes[start..(start + n)], proxy[start..(start + n)]);
            start += n;
        }
    }

    /// <summary>_suppress_object_pw_area_shrinkage: masks that keep &lt; 30 % of their area under the pixel-wise non-overlap constraint are clamped to ≤ −10.</summary>
    private Tensor SuppressObjectPwAreaShrinkage(Tensor predMasks)
    {
        var nonOverlap = Tracker.Net.ApplyNonOverlappingConstraints(predMasks);
        var before = predMasks.gt(0).sum([-1, -2]).clamp(min: 1.0);
        var after = nonOverlap.gt(0).sum([-1, -2]);
        var keep = (after / before).ge(Settings.ShrinkThreshold);
        var keepMask = keep[.., .., TensorIndex.None, TensorIndex.None].expand_as(predMasks);
        return torch.where(keepMask, predMasks, predMasks.clamp(max: Settings.SuppressedMaskLogit));
    }

    // =============================================================== execution

    /// <summary>_tracker_add_new_objects: a new tracker state holding the new objects (binarised detection masks as mask prompts), preflighted.</summary>
    private void TrackerAddNewObjects(VideoInferenceState s, int frameIdx, int[] newObjIds, Tensor newMasks)
    {
        var masks = nn.functional.interpolate(newMasks.unsqueeze(1), [_inputMaskSize, _inputMaskSize], mode: InterpolationMode.Bilinear, align_corners: false)
            .squeeze(1).gt(0);
        var st = Tracker.InitState(new SharedFrameSource(s.Frames.Source));
        try
        {
            Tracker.UseFrameFeatures(st, s.TrackerFeatures[frameIdx]);
            for (int i = 0; i < newObjIds.Length; i++)
            {
                using var _ = Tracker.AddNewMask(st, frameIdx, newObjIds[i], masks[i]);
            }
            Tracker.PropagatePreflight(st, runMemEncoder: true);
        }
        catch
        {
            st.Dispose();
            throw;
        }
        s.TrackerStates.Add(st);
    }

    /// <summary>_tracker_remove_object: removes the object from every state; states left empty are dropped.</summary>
    private void TrackerRemoveObject(VideoInferenceState s, int objId)
    {
        var before = s.TrackerStates.ToList();
        s.TrackerStates.Clear();
        foreach (var st in before)
        {
            var (ids, updated) = Tracker.RemoveObject(st, objId, strict: false, needOutput: false);
            foreach (var (_, t) in updated) t.Dispose();
            if (ids.Count > 0) s.TrackerStates.Add(st);
            else st.Dispose();
        }
    }

    // =============================================================== outputs

    /// <summary>build_outputs: masks of the tracked masklets, of the new detections (hole-filled) and of reconditioned objects, at video resolution.</summary>
    private SortedDictionary<int, Tensor> BuildOutputs(VideoInferenceState s, DetOut det, Tensor trkMasks, int[] prevIds, int[] newDetInds, int[] newObjIds,
                                                       HashSet<int> reconditioned, Dictionary<int, int> trkToDet)
    {
        int h = s.OrigHeight, w = s.OrigWidth;
        var result = new SortedDictionary<int, Tensor>();
        if (prevIds.Length > 0)
        {
            var video = nn.functional.interpolate(trkMasks.unsqueeze(1), [h, w], mode: InterpolationMode.Bilinear, align_corners: false).gt(0);
            for (int i = 0; i < prevIds.Length; i++) result[prevIds[i]] = video[i];
        }
        if (newDetInds.Length > 0)
        {
            var low = det.Mask.index_select(0, torch.tensor(newDetInds.Select(i => (long)i).ToArray(), device: det.Mask.device)).unsqueeze(1);
            low = MaskPost.FillHolesInMaskScores(low, Settings.FillHoleArea, Config.HardcodedInClasses.VideoFillHoleLogit);
            var video = nn.functional.interpolate(low, [h, w], mode: InterpolationMode.Bilinear, align_corners: false).gt(0);
            for (int i = 0; i < newObjIds.Length; i++) result[newObjIds[i]] = video[i];
        }
        foreach (int id in reconditioned)
        {
            if (!trkToDet.TryGetValue(id, out int d)) continue;
            var m = det.Mask[d][TensorIndex.None, TensorIndex.None].to(ScalarType.Float32);
            result[id] = nn.functional.interpolate(m, [h, w], mode: InterpolationMode.Bilinear, align_corners: false).gt(0).squeeze(0);
        }
        return result;
    }
}
