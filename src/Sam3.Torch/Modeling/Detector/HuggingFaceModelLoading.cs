using Sam3.Torch.Loading;
using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Detector;

/// <summary>
/// Loading of checkpoints that lack the detector's point projections into <see cref="Sam3ImageModel"/>: the Hugging Face
/// <c>transformers</c> layout (hub <c>model.safetensors</c>, read through <see cref="HuggingFaceCheckpoint"/>) and a
/// released-layout file converted from it. Strict as <see cref="StrictLoader"/> (one error listing every missing,
/// unexpected, misshaped key) except that the six point-projection tensors may be absent — all together — in which case
/// they are zeroed and the geometry encoder refuses point prompts with a <see cref="Sam3PromptException"/> saying why
/// (boxes, text and the interactive SAM1-style heads are complete and work). Tensors are copied one at a time from the
/// memory-mapped file into the model's parameters (q/k/v thirds straight into their row slices), so the peak is the
/// model plus one tensor.
/// </summary>
internal static class HuggingFaceModelLoading
{
    private const string PointProjectionModelPrefix = "geometry_encoder.points_";

    /// <summary>
    /// True when <see cref="Sam3ModelLoader.LoadInto"/> must take this path: the HF layout, or the released layout
    /// without any of the point projections the model has.
    /// </summary>
    public static bool Handles(Sam3ImageModel model, ICheckpoint checkpoint)
    {
        var layout = StateDictMapper.DetectLayout(checkpoint.Names);
        if (layout == CheckpointLayout.HuggingFace) return true;
        return layout == CheckpointLayout.Released && model.geometry_encoder.points_direct_project is not null
               && !checkpoint.Names.Any(n => n.StartsWith(HuggingFaceLayout.PointProjectionPrefix, StringComparison.Ordinal));
    }

    public static void LoadInto(Sam3ImageModel model, ICheckpoint checkpoint, Sam3LoadOptions options)
    {
        bool hf = StateDictMapper.DetectLayout(checkpoint.Names) == CheckpointLayout.HuggingFace;
        using var view = hf ? new HuggingFaceCheckpoint(checkpoint) : null;
        ICheckpoint released = (ICheckpoint?)view ?? checkpoint;
        bool inst = model.inst_interactive_predictor is not null;
        var mapping = StateDictMapper.ReleasedToImageModel(released.Names, inst);

        var all = ExpectedTensor.FromModule(model);
        var pointKeys = all.Where(e => e.Key.StartsWith(PointProjectionModelPrefix, StringComparison.Ordinal)).Select(e => e.Key)
                           .ToHashSet(StringComparer.Ordinal);
        bool pointsProvided = mapping.Any(m => pointKeys.Contains(m.Target));
        // Some but not all of them: the strict comparison names the missing ones.
        var expected = pointsProvided ? all : all.Where(e => !pointKeys.Contains(e.Key)).ToList();

        var comparison = StrictLoader.Compare(released, expected, new StrictLoadOptions
        {
            Mapping = mapping,
            IgnoreUnexpected = inst ? null : StateDictMapper.IsSam2NeckKey,
        });
        if (!comparison.IsMatch) throw comparison.ToException(checkpoint.Path);

        var target = model.state_dict();
        int total = comparison.Matched.Count, done = 0;
        using (torch.no_grad())
        {
            foreach (var (map, _) in comparison.Matched)
            {
                if (view is not null) view.CopyInto(map.Source, target[map.Target]);
                else
                {
                    using var scope = NewDisposeScope();
                    target[map.Target].copy_(released.Load(map.Source));
                }
                options.Progress?.Report((++done, total, map.Target));
            }
            if (!pointsProvided)
            {
                foreach (var k in pointKeys) target[k].zero_();
                model.geometry_encoder.PointProjectionsUnavailable = HuggingFaceLayout.MissingPointProjectionsReason;
            }
        }

        // RoPE tables: the HF layout has none (the model recomputes them); a released-layout file has them, verify as usual.
        if (view is null)
        {
            var buffers = new List<ComplexBuffer>();
            try
            {
                foreach (var map in comparison.ComplexBuffers)
                {
                    Tensor t;
                    using (var scope = NewDisposeScope()) t = released.Load(map.Source).MoveToOuterDisposeScope();
                    buffers.Add(new ComplexBuffer(map.Target, map.Source, t.DetachFromDisposeScope()));
                }
                Sam3ModelLoader.VerifyRopeTables(model, buffers, options.FreqsCisTolerance);
            }
            finally
            {
                foreach (var b in buffers) b.AsReal.Dispose();
            }
        }
    }
}
