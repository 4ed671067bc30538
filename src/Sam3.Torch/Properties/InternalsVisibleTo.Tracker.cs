// The tracker's engine types (Sam3.Torch.Video) are internal; the test suite exercises them directly.
[assembly: System.Runtime.CompilerServices.InternalsVisibleTo("Sam3.Torch.Tests")]
