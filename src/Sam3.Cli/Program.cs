using TorchSharp;
Sam3.Torch.IO.NativeLoaderFix.EnsurePatched();
var t = torch.ones(2, 3);
Console.WriteLine($"{t.sum().item<float>()} {Sam3.Torch.IO.NativeLoaderFix.LastOutcome}");
