namespace Sam3.Torch.Training;

/// <summary>
/// Training-mode switches of the image model (applied by <see cref="TrainingMode.Apply"/>).
/// </summary>
internal sealed record TrainingModelOptions
{
    /// <summary>
    /// Every dropout probability and drop-path rate set to 0 (what the parity fixture <c>h_training_step</c> does with
    /// <c>disable_dropout</c>); the model still runs in training mode (DAC, aux outputs). False = the configured values.
    /// </summary>
    public bool Deterministic { get; init; }

    /// <summary>
    /// Stochastic-depth rate of the last ViT block (spread linearly from 0 over the blocks, as upstream's
    /// <c>linspace(0, drop_path_rate, depth)</c>); null = <see cref="Config.VitConfig.DropPathRate"/>. Ignored when
    /// <see cref="Deterministic"/>.
    /// </summary>
    public double? DropPathRate { get; init; }

    /// <summary>
    /// Recompute the ViT blocks' activations in the backward instead of keeping them (upstream's
    /// <c>use_act_checkpoint</c>): far less memory for a trainable vision encoder, about one more ViT forward of time.
    /// Needs drop-path 0 (<see cref="Deterministic"/> or <see cref="DropPathRate"/> = 0): the recomputation would draw
    /// another stochastic-depth mask.
    /// </summary>
    public bool ActivationCheckpointing { get; init; }

    /// <summary>
    /// Recompute the fusion encoder's and the decoder's layers in the backward instead of keeping their activations
    /// (upstream's builder: <c>use_act_checkpoint=True</c> for both; <see cref="LayerCheckpoint"/>). On by default, as
    /// upstream: at 1008 px the encoder's self-attention over 72×72 image tokens keeps about 2 GB per layer otherwise
    /// (with attention dropout the fused attention kernel is not used on the CPU). Costs about one more encoder and
    /// decoder forward. Dropout masks are reproduced (the generator state is restored for the re-run).
    /// </summary>
    public bool TransformerActivationCheckpointing { get; init; } = true;

    /// <summary>The configured probabilities (upstream's training builder values).</summary>
    public static TrainingModelOptions Default { get; } = new();

    /// <summary>Dropout and drop-path off (fixture / debugging runs).</summary>
    public static TrainingModelOptions DeterministicRun { get; } = new() { Deterministic = true };
}
