using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

// Patch TorchSharp's native library before anything loads it: BenchmarkDotNet's generated child projects do not
// import Directory.Build.targets, so the build-time patch does not reach their output folders.
Sam3.Torch.IO.NativeLoaderFix.EnsurePatched();

// `profile [gemm] [blocks] [post] [model]`: the Stopwatch/CPU-time profile of the image path (ComputeProfile.cs).
if (args.Length > 0 && args[0] == "profile") return Sam3.Torch.Benchmarks.ComputeProfile.Run(args[1..]);
// `heads`: per-op profile of the detector decoder (HeadsProfile.cs).
if (args.Length > 0 && args[0] == "heads") return Sam3.Torch.Benchmarks.HeadsProfile.Run(args[1..]);
// Peak memory per stage of one image + text prompt (not a BenchmarkDotNet run): see MemoryStages.
if (args.Length > 0 && args[0] == "memory") return Sam3.Torch.Benchmarks.MemoryStages.Run(args[1..]);
// Tiny-model scenario outputs for benchmarks/reference/gpu/autocast_contract.py --compare-only (Precision/PrecisionDump.cs).
if (args.Length > 0 && args[0] == Sam3.Torch.Benchmarks.Precision.PrecisionDump.Verb) return Sam3.Torch.Benchmarks.Precision.PrecisionDump.Run(args[1..]);
// Time and memory of fine-tuning steps phase by phase (not a BenchmarkDotNet run): see TrainStepMemory.
if (args.Length > 0 && args[0] == Sam3.Torch.Benchmarks.TrainStepMemory.Verb) return Sam3.Torch.Benchmarks.TrainStepMemory.Run(args[1..]);
// First-call overhead of set_image / set_text_prompt in a fresh process (FirstCall.cs).
if (args.Length > 0 && args[0] == Sam3.Torch.Benchmarks.FirstCall.Verb) return Sam3.Torch.Benchmarks.FirstCall.Run(args[1..]);
// benchmarks/reference/run.sh drives the side-by-side harness through this verb (no BenchmarkDotNet).
if (args.Length > 0 && args[0] == Sam3.Torch.Benchmarks.Reference.ReferenceMode.Verb)
    Environment.Exit(Sam3.Torch.Benchmarks.Reference.ReferenceMode.Run(args));

// BenchmarkDotNet's own --inProcess adds a second, default-settings job next to a class's configured job (the model
// benchmarks would then run twice, once with pilot and overhead stages). Handle the switch here instead: the model
// benchmarks' config moves its own job in process (SAM3_BENCH_INPROCESS=1), and classes without a config get an
// in-process default job that BenchmarkDotNet drops wherever a class defines its own.
IConfig? config = null;
if (args.Any(a => a.Equals("--inProcess", StringComparison.OrdinalIgnoreCase) || a == "-i"))
{
    args = args.Where(a => !a.Equals("--inProcess", StringComparison.OrdinalIgnoreCase) && a != "-i").ToArray();
    Environment.SetEnvironmentVariable("SAM3_BENCH_INPROCESS", "1");
    config = DefaultConfig.Instance.AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance).AsDefault());
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
return 0;
