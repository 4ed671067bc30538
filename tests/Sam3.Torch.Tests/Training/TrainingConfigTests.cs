using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;

namespace Sam3.Torch.Tests.Training;

/// <summary>The default training configuration equals the fine-tuning config recorded in h_training_step's parameters.</summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class TrainingConfigTests
{
    private static double D(JsonElement e, string name) => e.GetProperty(name).GetDouble();

    [Test]
    public void DefaultsEqualTheFixtureParameters()
    {
        using var fx = Fixtures.Tiny("h_training_step");
        var p = fx.Parameters;
        var c = TrainingConfig.Default;

        var m = p.GetProperty("matcher");
        Assert.That(m.GetProperty("_target_").GetString(), Does.EndWith("BinaryHungarianMatcherV2"));
        Assert.That((c.Matcher.CostClass, c.Matcher.CostBbox, c.Matcher.CostGiou), Is.EqualTo((D(m, "cost_class"), D(m, "cost_bbox"), D(m, "cost_giou"))));
        Assert.That((c.Matcher.Focal, c.Matcher.Alpha, c.Matcher.Gamma, c.Matcher.Stable),
            Is.EqualTo((m.GetProperty("focal").GetBoolean(), D(m, "alpha"), D(m, "gamma"), m.GetProperty("stable").GetBoolean())));

        var o = p.GetProperty("o2m_matcher");
        Assert.That((c.O2mMatcher.Alpha, c.O2mMatcher.Threshold, c.O2mMatcher.Topk), Is.EqualTo((D(o, "alpha"), D(o, "threshold"), o.GetProperty("topk").GetInt32())));

        var l = p.GetProperty("loss");
        Assert.That(c.Loss.O2mWeight, Is.EqualTo(D(l, "o2m_weight")));
        Assert.That(c.Loss.UseO2mMatcherOnO2mAux, Is.EqualTo(l.GetProperty("use_o2m_matcher_on_o2m_aux").GetBoolean()));
        Assert.That(c.Loss.ScaleByFindBatchSize, Is.EqualTo(l.GetProperty("scale_by_find_batch_size").GetBoolean()));
        Assert.That(c.Loss.Normalization.ToString().ToLowerInvariant(), Is.EqualTo(l.GetProperty("normalization").GetString()));
        var bw = l.GetProperty("boxes").GetProperty("weight_dict");
        Assert.That((c.Loss.Boxes.LossBbox, c.Loss.Boxes.LossGiou), Is.EqualTo((D(bw, "loss_bbox"), D(bw, "loss_giou"))));
        var ia = l.GetProperty("iabce");
        var iw = ia.GetProperty("weight_dict");
        var ic = c.Loss.Iabce;
        Assert.That((ic.LossCe, ic.PresenceLoss, ic.PosWeight, ic.Alpha, ic.Gamma),
            Is.EqualTo((D(iw, "loss_ce"), D(iw, "presence_loss"), D(ia, "pos_weight"), D(ia, "alpha"), D(ia, "gamma"))));
        Assert.That((ic.WeakLoss, ic.UsePresence, ic.PosFocal, ic.PadScalePos),
            Is.EqualTo((ia.GetProperty("weak_loss").GetBoolean(), ia.GetProperty("use_presence").GetBoolean(), ia.GetProperty("pos_focal").GetBoolean(), D(ia, "pad_scale_pos"))));
        Assert.That(ic.PadNQueries, Is.EqualTo(ia.GetProperty("pad_n_queries_config_value").GetInt32()));
        var mk = l.GetProperty("masks");
        var mc = c.Loss.Masks!;
        Assert.That((mc.FocalAlpha, mc.FocalGamma, mc.LossMask, mc.LossDice, mc.ComputeAux),
            Is.EqualTo((D(mk, "focal_alpha"), D(mk, "focal_gamma"), D(mk.GetProperty("weight_dict"), "loss_mask"), D(mk.GetProperty("weight_dict"), "loss_dice"), mk.GetProperty("compute_aux").GetBoolean())));
        var ss = l.GetProperty("semantic_seg");
        var sw = ss.GetProperty("weight_dict");
        var sc = c.Loss.SemanticSeg!;
        Assert.That((sc.PresenceHead, sc.PresenceLoss, sc.Focal, sc.FocalAlpha, sc.FocalGamma, sc.Downsample),
            Is.EqualTo((ss.GetProperty("presence_head").GetBoolean(), ss.GetProperty("presence_loss").GetBoolean(), ss.GetProperty("focal").GetBoolean(),
                D(ss, "focal_alpha"), D(ss, "focal_gamma"), ss.GetProperty("downsample").GetBoolean())));
        Assert.That((sc.LossSemanticSeg, sc.LossSemanticPresence, sc.LossSemanticDice),
            Is.EqualTo((D(sw, "loss_semantic_seg"), D(sw, "loss_semantic_presence"), D(sw, "loss_semantic_dice"))));

        var os = p.GetProperty("optim_settings");
        var oc = c.Optimizer;
        Assert.That((oc.LrTransformerBase, oc.LrVisionBackboneBase, oc.LrLanguageBackboneBase, oc.LrScale, oc.LayerDecay, oc.WeightDecay),
            Is.EqualTo((D(os, "lr_transformer_base"), D(os, "lr_vision_backbone_base"), D(os, "lr_language_backbone_base"), D(os, "lr_scale"), D(os, "lrd_vision_backbone"), D(os, "wd"))));
        Assert.That((c.Schedule.Timescale, c.Schedule.WarmupSteps, c.Schedule.CooldownSteps),
            Is.EqualTo((os.GetProperty("scheduler_timescale").GetInt32(), os.GetProperty("scheduler_warmup").GetInt32(), os.GetProperty("scheduler_cooldown").GetInt32())));
        var gc = p.GetProperty("gradient_clip");
        Assert.That((c.GradientClip.MaxNorm, c.GradientClip.NormType), Is.EqualTo(((double?)D(gc, "max_norm"), D(gc, "norm_type"))));
        var pg0 = p.GetProperty("optimizer").GetProperty("param_groups")[0];
        Assert.That((oc.Beta1, oc.Beta2, oc.Eps), Is.EqualTo((pg0.GetProperty("betas")[0].GetDouble(), pg0.GetProperty("betas")[1].GetDouble(), D(pg0, "eps"))));
    }
}
