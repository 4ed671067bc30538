using BenchmarkDotNet.Running;

// Patch TorchSharp's native library before anything loads it: BenchmarkDotNet's generated child projects do not
// import Directory.Build.targets, so the build-time patch does not reach their output folders.
Sam3.Torch.IO.NativeLoaderFix.EnsurePatched();
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
