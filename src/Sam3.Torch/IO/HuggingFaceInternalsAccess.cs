using System.Runtime.CompilerServices;

// The Hugging Face layout types are internal; the tests and the CLI (assembly "sam3") use them. Redundant once the
// project file declares these (issue 9 on main does); duplicates of this attribute are allowed.
[assembly: InternalsVisibleTo("Sam3.Torch.Tests")]
[assembly: InternalsVisibleTo("sam3")]
