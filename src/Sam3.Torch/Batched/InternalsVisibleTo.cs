using System.Runtime.CompilerServices;

// The batched engine's internals (collation, transform, forward hooks) are tested directly.
[assembly: InternalsVisibleTo("Sam3.Torch.Tests")]
