using Sam3.Torch;
using Sam3.Torch.Loading;

namespace Sam3.Cli;

/// <summary>
/// The model options shared by the video commands (<c>--checkpoint FILE|DIR</c>, <c>--config</c>, <c>--vocab</c>), resolved
/// as <see cref="Sam3Model.Load"/> resolves them: a folder gives its checkpoint, its <c>config.json</c> and its tokenizer,
/// a file takes the configuration and tokenizer beside it; <c>--config</c> and <c>--vocab</c> override.
/// </summary>
internal static class ModelArguments
{
    /// <summary>Finds the files before the (slow) model load, so that a wrong path fails at once with the lookup's message.</summary>
    /// <param name="checkpoint">--checkpoint: a file or a folder.</param>
    /// <param name="config">--config: full, tiny or a JSON path (null: the lookup's choice).</param>
    /// <param name="vocab">--vocab (null: the tokenizer beside the checkpoint).</param>
    /// <param name="requireTokenizer">False for commands that take no text.</param>
    public static (Sam3ModelOptions Options, ModelFiles Files) Resolve(string checkpoint, string? config, string? vocab, bool requireTokenizer)
    {
        var options = new Sam3ModelOptions
        {
            Config = config is null ? null : SegmentCommand.ResolveConfig(config),
            TokenizerPath = vocab,
        };
        return (options, ModelFolder.Locate(checkpoint, options, requireTokenizer));
    }
}
