using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Vision;
using TorchSharp;
using EncoderLayer = Sam3.Torch.Modeling.Encoder.TransformerEncoderLayer;
using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>One stochastic module and the probability <see cref="TrainingMode.Apply"/> gave it.</summary>
/// <param name="Module">Module name in the image model (upstream naming, e.g. <c>transformer.decoder.layers.0.self_attn</c>).</param>
/// <param name="Kind">"dropout" (residual/FFN dropout of a layer or MLP), "attention_dropout" or "drop_path".</param>
/// <param name="Probability">The probability now in effect when training.</param>
internal sealed record StochasticSetting(string Module, string Kind, double Probability);

/// <summary>
/// Puts the image detector into training mode: <c>train()</c> on the detector modules (DAC query doubling, aux outputs,
/// one-to-many outputs follow <c>training</c>) and the dropout / drop-path probabilities of upstream's training build
/// (model_builder: 0.1 in the geometry encoder, fusion encoder and decoder layers and their attentions and in the
/// dot-product scoring's prompt MLP; 0 in the text encoder, the ViT MLPs and the segmentation head's attention; ViT
/// stochastic depth <c>linspace(0, drop_path_rate, depth)</c>), or all zero with
/// <see cref="TrainingModelOptions.Deterministic"/>. The SAM1-style interactive heads (<c>inst_interactive_predictor</c>)
/// are not part of detector training and stay in eval mode.
/// </summary>
internal static class TrainingMode
{
    private const string InteractivePrefix = "inst_interactive_predictor";

    /// <summary>Applies the options; returns every stochastic module with its probability (in module order).</summary>
    public static IReadOnlyList<StochasticSetting> Apply(Sam3ImageModel model, TrainingModelOptions? options = null)
    {
        options ??= TrainingModelOptions.Default;
        var cfg = model.Config;
        double dropPathRate = options.DropPathRate ?? cfg.Vit.DropPathRate;
        if (dropPathRate < 0 || dropPathRate >= 1)
            throw new ArgumentOutOfRangeException($"{nameof(options)}.{nameof(TrainingModelOptions.DropPathRate)}", dropPathRate,
                $"drop_path_rate must be in [0, 1), got {dropPathRate}" + (options.DropPathRate is null ? " (the model config's)" : ""));
        if (options.ActivationCheckpointing && !options.Deterministic && dropPathRate > 0)
            throw new ArgumentException($"activation checkpointing needs drop-path 0 (drop_path_rate is {dropPathRate}): the recomputed " +
                                        "blocks would draw another stochastic-depth mask; set DropPathRate = 0 or Deterministic",
                $"{nameof(options)}.{nameof(TrainingModelOptions.ActivationCheckpointing)}");
        model.train();
        model.inst_interactive_predictor?.eval();
        model.backbone.vision_backbone.trunk.use_act_checkpoint = options.ActivationCheckpointing;
        model.transformer.encoder.use_act_checkpoint = options.TransformerActivationCheckpointing;
        model.transformer.decoder.use_act_checkpoint = options.TransformerActivationCheckpointing;

        var settings = new List<StochasticSetting>();
        foreach (var (name, module) in model.named_modules())
        {
            if (name.StartsWith(InteractivePrefix, StringComparison.Ordinal)) continue;
            double? p = Configured(name, module, cfg, dropPathRate);
            if (p is null) continue;
            double value = options.Deterministic ? 0.0 : p.Value;
            switch (module)
            {
                case TransformerDecoderLayer d: d.dropout = value; settings.Add(new(name, "dropout", value)); break;
                case EncoderLayer e: e.dropout_value = value; settings.Add(new(name, "dropout", value)); break;
                case Mlp m: m.dropout = value; settings.Add(new(name, "dropout", value)); break;
                case Modeling.Vision.VitMlp v: v.drop = value; settings.Add(new(name, "dropout", value)); break;
                case MultiheadAttention a: a.dropout = value; settings.Add(new(name, "attention_dropout", value)); break;
                case DropPath dp: dp.drop_prob = value; settings.Add(new(name, "drop_path", value)); break;
            }
        }
        return settings;
    }

    /// <summary>Back to inference: <c>eval()</c> (dropout and drop-path are inactive in eval whatever their probability).</summary>
    public static void Exit(Sam3ImageModel model)
    {
        model.eval();
        model.backbone.vision_backbone.trunk.use_act_checkpoint = false;
        model.transformer.encoder.use_act_checkpoint = false;
        model.transformer.decoder.use_act_checkpoint = false;
    }

    /// <summary>Upstream's training-build probability of a stochastic module, or null when the module has none.</summary>
    private static double? Configured(string name, nn.Module module, Sam3Config cfg, double dropPathRate)
    {
        var hc = cfg.HardcodedInClasses;
        switch (module)
        {
            case TransformerDecoderLayer:
                return hc.DecoderDropout;
            case EncoderLayer:
                return name.StartsWith("geometry_encoder.", StringComparison.Ordinal) ? cfg.GeometryEncoder.Dropout : cfg.Encoder.Dropout;
            case Mlp:
                return name == "dot_prod_scoring.prompt_mlp" ? hc.DotProdPromptMlpDropout : 0.0;
            case Modeling.Vision.VitMlp:
                return 0.0;
            case DropPath:
                return ViTBlockIndex(name) is int i && cfg.Vit.Depth > 1 ? dropPathRate * i / (cfg.Vit.Depth - 1) : 0.0;
            case MultiheadAttention:
                if (name.StartsWith("transformer.decoder.", StringComparison.Ordinal)) return hc.DecoderDropout;
                if (name.StartsWith("transformer.encoder.", StringComparison.Ordinal)) return cfg.Encoder.Dropout;
                if (name.StartsWith("geometry_encoder.", StringComparison.Ordinal)) return cfg.GeometryEncoder.Dropout;
                if (name.StartsWith("segmentation_head.", StringComparison.Ordinal)) return hc.SegCrossAttendPromptDropout;
                return 0.0; // text encoder
            default:
                return null;
        }
    }

    // "backbone.vision_backbone.trunk.blocks.3.drop_path" → 3
    private static int? ViTBlockIndex(string name)
    {
        const string marker = ".blocks.";
        int at = name.LastIndexOf(marker, StringComparison.Ordinal);
        if (at < 0) return null;
        var rest = name[(at + marker.Length)..];
        int dot = rest.IndexOf('.');
        return int.TryParse(dot < 0 ? rest : rest[..dot], out int i) ? i : null;
    }
}
