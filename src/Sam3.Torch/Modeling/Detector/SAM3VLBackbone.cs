using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Text;
using Sam3.Torch.Modeling.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Detector;

/// <summary>
/// Image features of one backbone pass (vl_combiner <c>forward_image</c>): per kept level (highest resolution first)
/// the NCHW feature map and its position encoding. <see cref="Sam2"/> holds the SAM2 neck's levels (interactive heads
/// and tracker) when the model has them. Owns its tensors.
/// </summary>
internal sealed class BackboneOutput : IDisposable
{
    public Tensor[] BackboneFpn { get; }
    public Tensor[] VisionPosEnc { get; }
    public BackboneOutput? Sam2 { get; set; }
    /// <summary>
    /// The ViT trunk's output, kept when the SAM2 neck was deferred (<see cref="SAM3VLBackbone.ForwardImage"/> with
    /// <c>withSam2: false</c>) so that <see cref="SAM3VLBackbone.ForwardSam2"/> can compute it later; null otherwise.
    /// </summary>
    public Tensor? DeferredTrunk { get; set; }
    /// <summary>The lowest-resolution kept level (upstream <c>vision_features</c>).</summary>
    public Tensor VisionFeatures => BackboneFpn[^1];
    public long BatchSize => BackboneFpn[0].shape[0];

    public BackboneOutput(Tensor[] backboneFpn, Tensor[] visionPosEnc, BackboneOutput? sam2 = null)
    {
        BackboneFpn = backboneFpn;
        VisionPosEnc = visionPosEnc;
        Sam2 = sam2;
    }

    /// <summary>Detaches every tensor from dispose scopes (this object owns them until disposed).</summary>
    public BackboneOutput Own()
    {
        foreach (var t in BackboneFpn.Concat(VisionPosEnc)) t.DetachFromDisposeScope();
        DeferredTrunk?.DetachFromDisposeScope();
        Sam2?.Own();
        return this;
    }

    public void Dispose()
    {
        foreach (var t in BackboneFpn.Concat(VisionPosEnc)) t.Dispose();
        DeferredTrunk?.Dispose();
        Sam2?.Dispose();
    }
}

/// <summary>
/// The vision + language backbone without fusion (vl_combiner.SAM3VLBackbone): <c>vision_backbone</c> (ViT + dual
/// neck) and <c>language_backbone</c> (text encoder). <c>scalp</c> drops the lowest-resolution neck levels.
/// </summary>
internal sealed class SAM3VLBackbone : nn.Module
{
    public readonly Sam3DualViTDetNeck vision_backbone;
    public readonly VETextEncoder language_backbone;
    public int scalp { get; }

    public SAM3VLBackbone(Sam3Config cfg) : base(nameof(SAM3VLBackbone))
    {
        vision_backbone = new Sam3DualViTDetNeck(cfg);
        language_backbone = new VETextEncoder(cfg);
        scalp = cfg.Neck.Scalp;
        RegisterComponents();
    }

    /// <summary>Runs the ViT and both necks on normalised images [B,3,S,S]; drops the scalp levels.</summary>
    /// <param name="images">Normalised images.</param>
    /// <param name="probe">Receives intermediates named as the parity fixtures (vit.block{i}, neck.sam3_fpn.{i}, ...).</param>
    /// <param name="withSam2">False: skip the SAM2 neck and keep the trunk's output in <see cref="BackboneOutput.DeferredTrunk"/>
    /// instead (for <see cref="ForwardSam2"/> on demand); ignored when the model has no SAM2 neck.</param>
    public BackboneOutput ForwardImage(Tensor images, Action<string, Tensor>? probe = null, bool withSam2 = true)
    {
        using var scope = NewDisposeScope();
        bool defer = !withSam2 && vision_backbone.sam2_convs is not null;
        NeckOutput neck;
        Tensor? trunkOut = null;
        if (probe is null && !defer) neck = vision_backbone.forward(images);
        else
        {
            var trace = probe is null ? null : new List<(string name, Tensor value)>();
            trunkOut = trace is null ? vision_backbone.trunk.forward(images) : vision_backbone.trunk.Forward(images, trace);
            if (probe is not null)
            {
                foreach (var (name, t) in trace!) probe("vit." + name, t);
                probe("vit.out.0", trunkOut);
            }
            neck = vision_backbone.ForwardNecks(trunkOut, withSam2: !defer);
            if (probe is not null)
                for (int i = 0; i < neck.Sam3Out.Length; i++)
                {
                    probe($"neck.sam3_fpn.{i}", neck.Sam3Out[i]);
                    probe($"neck.sam3_pos.{i}", neck.Sam3Pos[i]);
                    if (neck.Sam2Out is not null) probe($"neck.sam2_fpn.{i}", neck.Sam2Out[i]);
                }
        }
        using var _ = neck;
        int keep = neck.Sam3Out.Length - scalp;
        BackboneOutput? sam2 = null;
        if (neck.Sam2Out is not null && neck.Sam2Pos is not null)
            sam2 = new BackboneOutput(neck.Sam2Out.Take(keep).Select(t => t.alias()).ToArray(), neck.Sam2Pos.Take(keep).Select(t => t.alias()).ToArray());
        var result = new BackboneOutput(neck.Sam3Out.Take(keep).Select(t => t.alias()).ToArray(), neck.Sam3Pos.Take(keep).Select(t => t.alias()).ToArray(), sam2);
        if (defer) result.DeferredTrunk = trunkOut!.alias();
        return result.Own();
    }

    /// <summary>
    /// The SAM2 neck's kept levels (scalp dropped) from a trunk output kept by <see cref="ForwardImage"/> with
    /// <c>withSam2: false</c>: the same values as the <see cref="BackboneOutput.Sam2"/> an eager pass makes. Owns its tensors.
    /// </summary>
    public BackboneOutput ForwardSam2(Tensor trunkOut)
    {
        using var scope = NewDisposeScope();
        var (outs, pos) = vision_backbone.ForwardSam2Neck(trunkOut);
        int keep = outs.Length - scalp;
        return new BackboneOutput(outs.Take(keep).ToArray(), pos.Take(keep).ToArray()).Own();
    }

    /// <summary>Encodes token ids [T,L] (see <see cref="VETextEncoder.forward"/>).</summary>
    public TextEncoderOutput ForwardText(Tensor tokenIds, Tensor? paddingMask = null, bool skipPaddedPositions = false)
        => language_backbone.forward(tokenIds, paddingMask, skipPaddedPositions);
}
