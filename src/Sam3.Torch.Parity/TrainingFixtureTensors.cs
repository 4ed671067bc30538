using Sam3.Torch.Training;
using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

/// <summary>
/// Reads the recorded tensors of the training scenario (tiny/h_training_step) into the training types: the targets
/// (<c>data.target.*</c>), the forward outputs (<c>fwd.out.*</c> with aux outputs) and the recorded matchings
/// (<c>match.{o2o,o2m}.{main,aux_i}.*</c>).
/// </summary>
internal static class TrainingFixtureTensors
{
    public static FindTargets Targets(ScenarioFixture fx) => new()
    {
        NumBoxes = fx.Get("data.target.num_boxes"),
        Boxes = fx.Get("data.target.boxes"),
        BoxesXyxy = fx.Get("data.target.boxes_xyxy"),
        BoxesPadded = fx.Get("data.target.boxes_padded"),
        ObjectIds = fx.Get("data.target.object_ids"),
        ObjectIdsPadded = fx.Get("data.target.object_ids_padded"),
        IsExhaustive = fx.Get("data.target.is_exhaustive"),
        Segments = fx.Has("data.target.segments") ? fx.Get("data.target.segments") : null,
        IsValidSegment = fx.Has("data.target.is_valid_segment") ? fx.Get("data.target.is_valid_segment") : null,
    };

    /// <summary>Number of aux outputs recorded (decoder layers 0..L-2).</summary>
    public static int AuxCount(ScenarioFixture fx)
    {
        int n = 0;
        while (fx.Has($"fwd.out.aux_outputs.{n}.pred_logits")) n++;
        return n;
    }

    /// <summary>The recorded outputs; <paramref name="requiresGrad"/> makes every float output a leaf with a gradient.</summary>
    public static TrainingForwardOutputs Outputs(ScenarioFixture fx, bool requiresGrad = false)
    {
        Tensor G(string n) => requiresGrad ? fx.Get(n).requires_grad_(true) : fx.Get(n);
        Tensor? O(string n) => fx.Has(n) ? G(n) : null;
        var final = new FindOutputs
        {
            PredLogits = G("fwd.out.pred_logits"),
            PredBoxes = G("fwd.out.pred_boxes"),
            PredBoxesXyxy = G("fwd.out.pred_boxes_xyxy"),
            PresenceLogitDec = O("fwd.out.presence_logit_dec"),
            PredLogitsO2m = O("fwd.out.pred_logits_o2m"),
            PredBoxesO2m = O("fwd.out.pred_boxes_o2m"),
            PredBoxesXyxyO2m = O("fwd.out.pred_boxes_xyxy_o2m"),
            PredMasks = O("fwd.out.pred_masks"),
            PredMasksO2m = O("fwd.out.pred_masks_o2m"),
            SemanticSeg = O("fwd.out.semantic_seg"),
        };
        var aux = new List<FindOutputs>();
        for (int i = 0; i < AuxCount(fx); i++)
        {
            string p = $"fwd.out.aux_outputs.{i}.";
            aux.Add(new FindOutputs
            {
                PredLogits = G(p + "pred_logits"),
                PredBoxes = G(p + "pred_boxes"),
                PredBoxesXyxy = G(p + "pred_boxes_xyxy"),
                PresenceLogitDec = O(p + "presence_logit_dec"),
                PredLogitsO2m = O(p + "pred_logits_o2m"),
                PredBoxesO2m = O(p + "pred_boxes_o2m"),
                PredBoxesXyxyO2m = O(p + "pred_boxes_xyxy_o2m"),
            });
        }
        return new TrainingForwardOutputs { Final = final, Aux = aux };
    }

    /// <summary>The recorded matching <c>match.{kind}.{stage}</c> (kind o2o/o2m, stage main/aux_i).</summary>
    public static MatchIndices Match(ScenarioFixture fx, string kind, string stage) =>
        new(fx.Get($"match.{kind}.{stage}.batch_idx"), fx.Get($"match.{kind}.{stage}.src_idx"), fx.Get($"match.{kind}.{stage}.tgt_idx"));
}
