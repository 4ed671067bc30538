using System.Text.Json;
using Sam3.Torch.Config;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using Sam3.Torch.Training;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// The tiny model as the fine-tuning fixture builds it (<c>h_training_step</c>: image model without the interactive heads and
/// SAM2 neck), the shared tokenizer, and the fixture's recorded batch (<c>data.*</c>) as a <see cref="TrainingBatch"/>.
/// </summary>
internal static class TrainingFixture
{
    public const string Scenario = "h_training_step";

    public static Sam3Config Config => Sam3Config.Load(SharedData.Parity("tiny", "config.json"));

    public static Sam3ImageModel LoadTinyModel() =>
        Sam3ModelLoader.LoadImageModel(SharedData.Parity("tiny", "model.safetensors"), Config,
            new Sam3LoadOptions { EnableInstInteractivity = false });

    public static ClipBpeTokenizer Tokenizer() =>
        ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), new ClipTokenizerOptions { Text = Config.Text });

    /// <summary>The whole scenario JSON (top-level keys such as <c>params_without_grad</c>).</summary>
    public static JsonDocument Json() => JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", Scenario + ".json")));

    /// <summary>The recorded batch; the tensors are detached from every dispose scope (the batch owns them).</summary>
    public static TrainingBatch Batch(ScenarioFixture fx)
    {
        Tensor G(string name) => fx.Get(name).DetachFromDisposeScope();
        var texts = fx.Parameters.GetProperty("find_text_batch").EnumerateArray().Select(e => e.GetString()!).ToList();
        return new TrainingBatch
        {
            ImgBatch = G("data.img_batch"),
            FindTextBatch = texts,
            FindImgIds = G("data.find.img_ids"),
            FindTextIds = G("data.find.text_ids"),
            Targets = new FindTargets
            {
                NumBoxes = G("data.target.num_boxes"),
                Boxes = G("data.target.boxes"),
                BoxesXyxy = G("data.target.boxes_xyxy"),
                BoxesPadded = G("data.target.boxes_padded"),
                ObjectIds = G("data.target.object_ids"),
                ObjectIdsPadded = G("data.target.object_ids_padded"),
                IsExhaustive = G("data.target.is_exhaustive"),
                Segments = G("data.target.segments"),
                IsValidSegment = G("data.target.is_valid_segment"),
            },
        };
    }

    /// <summary>Every output tensor of a training forward with its fixture name (<c>fwd.out.*</c>).</summary>
    public static IEnumerable<(string Name, Tensor Value)> Named(TrainingForwardOutputs o)
    {
        foreach (var x in Named("fwd.out.", o.Final)) yield return x;
        for (int i = 0; i < o.Aux.Count; i++)
            foreach (var x in Named($"fwd.out.aux_outputs.{i}.", o.Aux[i])) yield return x;
    }

    private static IEnumerable<(string, Tensor)> Named(string prefix, FindOutputs f)
    {
        var all = new (string, Tensor?)[]
        {
            ("pred_logits", f.PredLogits), ("pred_boxes", f.PredBoxes), ("pred_boxes_xyxy", f.PredBoxesXyxy),
            ("presence_logit_dec", f.PresenceLogitDec), ("pred_logits_o2m", f.PredLogitsO2m), ("pred_boxes_o2m", f.PredBoxesO2m),
            ("pred_boxes_xyxy_o2m", f.PredBoxesXyxyO2m), ("pred_masks", f.PredMasks), ("pred_masks_o2m", f.PredMasksO2m),
            ("semantic_seg", f.SemanticSeg),
        };
        foreach (var (n, t) in all)
            if (t is not null) yield return (prefix + n, t);
    }
}
