using Sam3.Torch;

namespace Sam3.Cli;

internal static class Program
{
    public const string Usage = """
        sam3 — SAM3 (Segment Anything Model 3) on TorchSharp

        Usage:
          sam3 inspect CHECKPOINT [--config full|tiny|PATH]
              Format, key layout, key and parameter counts, dtypes; checks the keys and shapes against the image
              model of a configuration (default full). Exit code 1 when they do not fit.
          sam3 convert IN OUT.safetensors [--layout hf|original] [--force]
              Convert a PyTorch checkpoint (.pt) to safetensors (memory-mappable); --force replaces an existing OUT.
          sam3 segment --checkpoint PATH --image IMG [--image IMG ...] --out DIR [--text "red car"]
                       [--box cx,cy,w,h[:neg] ...] [--box-xyxy x0,y0,x1,y1[:neg] ...] [--threshold 0.5] [--config full|tiny|PATH]
              Segment images; writes an overlay PNG and COCO-RLE JSON per image.
          sam3 label --checkpoint PATH (--images DIR|LIST --prompts "cat,dog" | --queries FILE.jsonl) --out RESULTS.json
                     [--threshold 0.5] [--max-dets 100] [--shard i/N] [--config full|tiny|PATH]
              Label a dataset (batched queries): COCO results + categories file; resumable, shardable.
          sam3 label merge --out RESULTS.json SHARD0.json SHARD1.json ...
              Join the shard outputs of a label run.
          sam3 track --checkpoint PATH --video FILE|DIR --out DIR [--point x,y[:neg]@FRAME ...] [--box x0,y0,x1,y1@FRAME ...]
                     [--obj ID] [--reverse] [--config full|tiny|PATH]
              Track objects through a video (SAM2-style tracker); writes tracks.jsonl (COCO RLE) and overlay.mp4.
          sam3 serve --checkpoint PATH [--port 8080] [--host 127.0.0.1]
              Serve the click-to-segment page and a JSON API (OpenAPI at /openapi/v1.json) on loopback.
          sam3 video --checkpoint PATH --video FILE|DIR --text "person" --out DIR [--point x,y[:neg]@FRAME --obj ID]
                     [--direction forward|backward|both] [--config full|tiny|PATH]
              Find and track every instance of a text prompt; writes frames.jsonl, results.json (YouTube-VIS), overlay.mp4.
          sam3 eval --checkpoint PATH --data DIR [--split valid] [--config full|tiny|PATH] [--out REPORT.json]
              COCO box/mask AP and cgF1 of the model on a COCO-format split (Roboflow layout or a COCO json).
          sam3 finetune --checkpoint PATH --data DIR --out DIR [--epochs N] [--lr 0.1] [--freeze none|vision|text|backbones|heads-only]
                        [--batch N] [--accum N] [--seed N] [--lora attention:8:16,mlp:8:16] [--eval-split valid|test|none] [--tensorboard on|off]
              Fine-tune the detector on a COCO folder; checkpoints every epoch and on Ctrl-C (rerun resumes), losses.csv,
              tensorboard/, validation AP/cgF1 before and after (summary.json).
          sam3 parity --reference DIR [--scenario a,b,c] [--checkpoint F] [--atol X --rtol Y]
              Run reference scenarios (PyTorch fixtures) through this library; prints 'parity: N passed, M failed'.
          sam3 COMMAND --help
          sam3 --help | --version

        Common options: --verbose (print stack traces of errors), --threads N (CPU threads per operation; default: physical cores)
        Exit codes: 0 success, 1 failure, 2 usage error
        """;

    /// <summary>What <c>sam3 --version</c> prints.</summary>
    public static string VersionLine => $"sam3 {typeof(Sam3Exception).Assembly.GetName().Version?.ToString(3)}";

    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>
    /// Runs one command; returns the process exit code (0 ok, 1 failure, 2 usage error). System.CommandLine parses
    /// (help, response files <c>@FILE</c>, completions through the <c>[suggest]</c> directive); every error leaves as
    /// one line <c>sam3: message</c> on stderr.
    /// </summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, bool? stderrIsTerminal = null)
    {
        bool verbose = args.Contains("--verbose");
        try
        {
            var root = CliSpec.Build(CliCommands.All, new CliContext(stdout, stderr, stderrIsTerminal ?? Commands.IsConsoleTerminal(stderr)), Usage);
            if (args.Length > 0 && args[0] is "--help" or "-h" or "-?" or "help")
            {
                // the overview, written by hand: every command with its synopsis (each command's --help is generated)
                stdout.WriteLine(Usage);
                return 0;
            }
            var result = root.Parse(args);
            if (result.Errors.Count > 0) throw new UsageException(CliSpec.Describe(result));
            if (result.CommandResult.Command is not System.CommandLine.RootCommand && result.Action is not System.CommandLine.Help.HelpAction)
                CliThreads.Apply(result.GetValue(CliSpec.Threads));
            return result.Invoke(new System.CommandLine.InvocationConfiguration
            {
                Output = stdout,
                Error = stderr,
                EnableDefaultExceptionHandler = false,
            });
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"sam3: {e.Message}");
            return 2;
        }
        catch (Sam3Exception e)
        {
            stderr.WriteLine($"sam3: {e.Message}");
            if (verbose) stderr.WriteLine(e);
            return 1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            stderr.WriteLine($"sam3: {e.Message}");
            if (verbose) stderr.WriteLine(e);
            return 1;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"sam3: internal error: {e.GetType().Name}: {e.Message}{(verbose ? "" : " (run with --verbose for details)")}");
            if (verbose) stderr.WriteLine(e);
            return 1;
        }
    }
}
