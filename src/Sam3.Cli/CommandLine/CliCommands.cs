namespace Sam3.Cli;

/// <summary>The command table of <c>sam3</c>: every command, its options with their help, and its handler.</summary>
internal static class CliCommands
{
    private static CliOptionSpec Opt(string name, string valueName, string description) => new(name, description, CliOptionKind.Value, valueName);
    private static CliOptionSpec Many(string name, string valueName, string description) => new(name, description, CliOptionKind.Repeated, valueName);
    private static CliOptionSpec Flag(string name, string description) => new(name, description, CliOptionKind.Flag);
    private static CliOptionSpec Required(CliOptionSpec o) => o with { Required = true };

    private static readonly CliOptionSpec Checkpoint = Opt("checkpoint", "PATH",
        "a checkpoint file (sam3.pt, *.safetensors), or a folder holding one with its config.json and tokenizer, as downloaded");
    private static readonly CliOptionSpec Config = Opt("config", "full|tiny|PATH",
        "model configuration: built-in full or tiny, or a config.json (default: config.json beside the checkpoint, else full)");
    private static readonly CliOptionSpec Vocab = Opt("vocab", "PATH",
        "tokenizer: bpe_simple_vocab_16e6.txt.gz, or vocab.json with merges.txt beside it (default: looked up beside the checkpoint)");
    private static readonly CliOptionSpec Force = Flag("force", "replace output files that already exist (only once the new ones are complete)");
    private static readonly CliOptionSpec Device = Opt("device", "cpu|cuda", "where the model runs (default cpu)");

    public static IReadOnlyList<CliCommandSpec> All { get; } =
    [
        new("inspect",
            "Print a checkpoint's format, key layout, key and parameter counts and dtypes, and check its keys and shapes " +
            "against the image model of a configuration (exit code 1 when they do not fit).",
            "CHECKPOINT",
            [Opt("config", "full|tiny|PATH", "configuration to check against: full (default), tiny, or a config.json (ours or a transformers one)")],
            (a, c) => InspectCommand.Run(a, c.Stdout, c.Stderr)),
        new("convert",
            "Convert a checkpoint (.pt or safetensors) to a memory-mappable safetensors file with the same keys, or to the " +
            "Hugging Face transformers layout (--layout hf) and back (--layout original). Progress goes to stderr.",
            "IN OUT.safetensors",
            [
                Opt("layout", "hf|original", "write the Hugging Face transformers layout (hf) or convert such a file back (original)"),
                Opt("config", "C", "with --layout original: the transformers config.json of the input (default: beside it)"),
                Opt("sidecar", "F", "with --layout original: where to write the tracker-only tensors"),
                Force,
            ],
            (a, c) => ConvertCommand.Run(a, c.Stdout, c.Stderr, stderrIsTerminal: c.StderrIsTerminal)),
        new("segment",
            "Segment images with a text prompt, box and point prompts, or the interactive (SAM1-style) heads; writes " +
            "DIR/<image>.png (overlay) and DIR/<image>.json (COCO RLE results) per image.",
            null,
            [
                Required(Checkpoint), Config, Vocab,
                Required(Many("image", "IMG", "an image to segment")),
                Opt("text", "\"red car\"", "text prompt (finds every instance)"),
                Many("box", "cx,cy,w,h[:neg]", "box prompt, normalised [0,1] centre and size; :neg marks a negative box"),
                Many("box-xyxy", "x0,y0,x1,y1[:neg]", "box prompt in pixels"),
                Many("point", "x,y[:neg]", "point in pixels; without --text, points and --box-xyxy use the interactive heads: one object per call, or one per box"),
                Flag("multimask", "interactive mode: write all 3 candidate masks with their predicted IoU"),
                Opt("threshold", "0.5", "confidence threshold"),
                Opt("precision", "fp32|bf16", "numeric precision: fp32 (default) or the bf16 policy (for CUDA or CPUs with avx512_bf16/amx_bf16; several times slower on other CPUs)"),
                Flag("masks", "also write one PNG per mask"),
                Required(Opt("out", "DIR", "output folder")),
                Force,
            ],
            (a, c) => SegmentCommand.Run(a, c.Stdout, c.Stderr)),
        new("label",
            "Label a dataset with batched queries: writes RESULTS.json (COCO results) and RESULTS.categories.json (COCO images " +
            "and categories); resumable (a work folder beside the output) and shardable (--shard i/N, then sam3 label merge).",
            null,
            [
                Required(Checkpoint), Config, Vocab,
                Opt("images", "DIR|LIST", "a folder (its .jpg/.jpeg/.png/.bmp/.webp files, sorted by name) or a text file with one image path per line"),
                Opt("prompts", "\"cat,dog\"", "one text query per category on every image (category ids 1, 2, ... in this order)"),
                Opt("queries", "FILE.jsonl", "one query per line: {\"image\", \"text\", \"boxes\" (pixel xyxy), \"box_labels\", \"category_id\", \"id\"}"),
                Required(Opt("out", "RESULTS.json", "results file")),
                Opt("threshold", "0.5", "keep detections with a score above this"),
                Opt("max-dets", "100", "keep at most this many detections per image (top scores)"),
                Opt("batch-images", "1", "images per forward; above 1 is faster on a GPU, results then depend in their last digits on the batching"),
                Opt("shard", "i/N", "label only image positions p with p mod N = i"),
                Device,
                Flag("force", "start over: discard an existing output and its unfinished work folder"),
            ],
            (a, c) => LabelCommand.Run(a, c.Stdout, c.Stderr),
            [
                new("merge", "Join the shard outputs of one label run (every shard 0..N-1 exactly once) into the file one unsharded run writes.",
                    "SHARD.json...",
                    [Required(Opt("out", "RESULTS.json", "the joined results file")), Force],
                    (a, c) => LabelCommand.Merge(a, c.Stdout)),
            ]),
        new("track",
            "Track objects through a video with the SAM2-style tracker from clicks and boxes; writes DIR/tracks.jsonl (one line " +
            "per frame, COCO RLE masks) and DIR/overlay.mp4. Ctrl-C stops cleanly.",
            null,
            [
                Required(Checkpoint), Config,
                Required(Opt("video", "FILE|DIR", "a video file (mp4/mov/avi/mkv/webm) or a folder of <index>.jpg frames")),
                Many("point", "x,y[:neg]@FRAME", "a click in video pixels on frame FRAME"),
                Many("box", "x0,y0,x1,y1@FRAME", "a box in video pixels on frame FRAME (one per object and frame)"),
                Many("obj", "ID", "the object id of the prompts given before it (since the previous --obj); without any --obj every prompt belongs to object 1"),
                Opt("start", "FRAME", "first frame to track (default: the first prompted frame)"),
                Opt("max-frames", "N", "track at most N frames after the start frame"),
                Flag("reverse", "track backwards in time"),
                Opt("fps", "F", "frame rate of the overlay video (default: the input's, or 10 for a folder)"),
                Flag("no-video", "do not write the overlay video"),
                Required(Opt("out", "DIR", "output folder")),
                Force,
            ],
            (a, c) => TrackCommand.RunWithConsoleCancel(a, c.Stdout, c.Stderr)),
        new("video",
            "Find and track every instance of a text prompt through a video (the SAM3 video predictor); writes DIR/frames.jsonl, " +
            "DIR/results.json (YouTube-VIS results) and DIR/overlay.mp4. Ctrl-C stops cleanly.",
            null,
            [
                Required(Checkpoint), Config, Vocab,
                Required(Opt("video", "FILE|DIR", "a video file or a folder of <index>.jpg frames")),
                Required(Opt("text", "T", "what to find and track")),
                Opt("frame", "N", "frame of the text prompt (default 0)"),
                Many("point", "x,y[:neg]@FRAME", "a click in video pixels, for the object of the next --obj"),
                Many("obj", "ID", "object id of the clicks before it (refines a detected object or adds one)"),
                Opt("direction", "forward|backward|both", "propagation direction (default both)"),
                Opt("fps", "F", "frame rate of the overlay video (default: the input's, or 10 for a folder)"),
                Flag("no-video", "do not write the overlay video"),
                Required(Opt("out", "DIR", "output folder")),
                Force,
            ],
            (a, c) => VideoCommand.RunWithConsoleCancel(a, c.Stdout, c.Stderr)),
        new("serve",
            "Serve the click-to-segment page and a JSON API on loopback until Ctrl-C: open http://HOST:PORT/; the API is under " +
            "/api, its OpenAPI document at /openapi/v1.json.",
            null,
            [
                Required(Checkpoint), Config, Vocab, Device,
                Opt("host", "ADDRESS", "interface to listen on (default 127.0.0.1, loopback only; 0.0.0.0 exposes it)"),
                Opt("port", "N", "TCP port (default 8080; 0 picks a free one)"),
                Opt("threshold", "0.5", "default detector confidence threshold"),
                Opt("max-images", "N", "images whose features stay cached (default 8, least recently used dropped)"),
                Opt("max-upload-mb", "N", "largest upload (default 20)"),
                Opt("max-side", "N", "largest image side after decoding (default 4096)"),
            ],
            (a, c) => Serve.ServeCommand.Run(a, c.Stdout, c.Stderr)),
        new("eval",
            "Evaluate a model on a COCO-format split (every category as a text query on every image): COCO box and mask AP " +
            "(COCOeval: 101-point interpolation, area ranges, maxDets) and upstream's cgF1.",
            null,
            [
                Required(Checkpoint), Config, Vocab, Device,
                Required(Opt("data", "DIR", "a Roboflow export (DIR/{train,valid,test}/_annotations.coco.json) or a COCO json")),
                Opt("split", "valid", "which split (default: valid, else test, else train)"),
                Opt("max-images", "N", "evaluate only the first N images (by id)"),
                Opt("out", "REPORT.json", "also write the numbers as JSON"),
            ],
            (a, c) => EvalCommand.Run(a, c.Stdout, c.Stderr)),
        new("finetune",
            "Fine-tune the detector on a COCO folder (Roboflow layout: DATA/train/_annotations.coco.json, categories as text " +
            "queries); writes OUT/checkpoint/ every epoch and on Ctrl-C (rerun to resume exactly), OUT/losses.csv, OUT/tensorboard and " +
            "OUT/model.safetensors (released layout, tracker copied); reports validation AP/cgF1 before and after.",
            null,
            [
                Required(Checkpoint), Config, Vocab,
                Required(Opt("data", "DIR", "the COCO folder")),
                Required(Opt("out", "DIR", "output folder (resumes from OUT/checkpoint when present)")),
                Opt("epochs", "N", "epochs (default 1)"),
                Opt("lr", "0.1", "learning-rate scale: multiplies every part's base rate (default 0.1, the fine-tuning config's lr_scale)"),
                Opt("freeze", "none|vision|text|backbones|heads-only", "parameters to freeze (default none)"),
                Opt("batch", "N", "images per micro-batch (default 1)"),
                Opt("accum", "N", "micro-batches per optimizer step (default 1)"),
                Opt("seed", "N", "data order and augmentation seed (default 0)"),
                Opt("lora", "attention:8:16,mlp:8:16", "train LoRA adapters (part[:rank[:alpha]]) instead of the weights; writes OUT/lora.safetensors and the merged OUT/model.safetensors"),
                Opt("eval-split", "valid|test|none", "split evaluated before and after training (default: valid, else test, else none); table and OUT/summary.json"),
                Opt("tensorboard", "on|off", "TensorBoard event files in OUT/tensorboard (default on)"),
            ],
            (a, c) => FinetuneCommand.RunWithConsoleCancel(a, c)),
        new("parity",
            "Run reference scenarios (PyTorch fixtures: DIR holds inputs/ and the model folder with config.json, " +
            "model.safetensors and <x>_<name>.json/.safetensors) through this library; prints 'parity: N passed, M failed' " +
            "and exits 0 only if every scenario passes.",
            null,
            [
                Required(Opt("reference", "DIR", "the fixture folder")),
                Many("scenario", "a,b,c", "scenarios by prefix (a = a_image_text), comma-separated; default: all"),
                Opt("model", "tiny", "the model folder inside DIR (default tiny)"),
                Opt("checkpoint", "F", "run with this checkpoint file or folder (e.g. DIR/tiny_hf) instead of MODEL/model.safetensors"),
                Opt("atol", "1e-4", "absolute tolerance"),
                Opt("rtol", "1e-4", "relative tolerance"),
                Flag("all-tensors", "list every compared tensor, not only the failing and headline ones"),
            ],
            (a, c) => ParityCommand.Run(a, c.Stdout, c.Stderr)),
    ];
}
