using Sam3.Torch.Config;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Text;
using CpuBf16Support = Sam3.Torch.Precision.CpuBf16Support;
using PrecisionPolicy = Sam3.Torch.Precision.PrecisionPolicy;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch;

/// <summary>Numeric precision of a loaded model's weights and activations.</summary>
public enum Sam3Precision
{
    /// <summary>float32 everywhere (the CPU default; the parity fixtures are fp32).</summary>
    Float32,
    /// <summary>
    /// The bf16 policy, upstream's CUDA bf16 autocast made explicit: matmul/linear/convolution/attention weights and
    /// inputs in bfloat16; LayerNorm, positional tables, box coordinates, residual streams and upstream's fp32 islands
    /// (the detector decoder's FFN) in float32; TF32 matmuls on CUDA. Outputs match float32 within a few hundredths
    /// of a score and a pixel or two of a box. Meant for CUDA and for CPUs with native bf16 (<c>avx512_bf16</c> or
    /// <c>amx_bf16</c>); on other CPUs it is several times slower than float32 (a load note says so).
    /// </summary>
    BFloat16,
}

/// <summary>Options of <see cref="Sam3Model.Load"/>.</summary>
public sealed record Sam3ModelOptions
{
    /// <summary>
    /// The architecture. Null: a <c>config.json</c> beside the checkpoint (this library's schema), else the configuration
    /// named in the checkpoint's metadata, else <see cref="Sam3Config.Full"/> (the released model).
    /// </summary>
    public Sam3Config? Config { get; init; }

    /// <summary>
    /// Tokenizer vocabulary: <c>bpe_simple_vocab_16e6.txt.gz</c>, or a <c>vocab.json</c> with <c>merges.txt</c> beside it.
    /// Null: looked for beside the checkpoint.
    /// </summary>
    public string? TokenizerPath { get; init; }

    /// <summary>LibTorch device, e.g. <c>"cpu"</c> (default), <c>"cuda"</c>, <c>"cuda:1"</c>.</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>Numeric precision (default float32; <see cref="Sam3Precision.BFloat16"/> is the bf16 policy, for CUDA).</summary>
    public Sam3Precision Precision { get; init; } = Sam3Precision.Float32;

    /// <summary>Build the SAM1-style interactive heads (needed by <see cref="Sam3Model.CreateInteractivePredictor"/>).</summary>
    public bool EnableInteractivePredictor { get; init; } = true;

    /// <summary>
    /// With a transformers <c>config.json</c> (Hugging Face layout) whose numerics differ from the original architecture
    /// (the ViT layer-norm epsilon: 1e-6 there, 1e-5 in the original), use the file's values instead of the original ones.
    /// </summary>
    public bool UseTransformersNumerics { get; init; }
}

/// <summary>Where <see cref="Sam3Model.LoadAsync"/> is: a stage ("reading checkpoint", ...) and its progress.</summary>
public readonly record struct LoadProgress(string Stage, int Done, int Total, string? Item);

/// <summary>
/// A loaded SAM3 model: the network's weights, its configuration and its tokenizer. Create predictors from it
/// (<see cref="CreateImagePredictor"/>, <see cref="CreateInteractivePredictor"/>); they share these weights. Dispose
/// the model to free its weights (predictors and image states of a disposed model refuse further calls).
/// </summary>
/// <example>
/// <code>
/// using var model = Sam3Model.Load("sam3/");          // sam3.pt + bpe_simple_vocab_16e6.txt.gz
/// using var predictor = model.CreateImagePredictor();
/// using var image = predictor.SetImage("truck.jpg");
/// foreach (var d in predictor.SetTextPrompt(image, "wheel")[0]) Console.WriteLine($"{d.Score:F2} {d.Box}");
/// </code>
/// </example>
public sealed class Sam3Model : IDisposable
{
    // before the first tensor of the process, where possible: LibTorch's allocator reads its huge-page switch once
    static Sam3Model() => IO.HugePageAllocation.Request();

    private readonly AsyncLocal<ActivationRecorder?> _recorder = new();
    private Sam3ImageModel? _network;

    private Sam3Model(Sam3ImageModel network, ClipBpeTokenizer tokenizer, string? checkpointPath, string? tokenizerPath, Sam3ModelOptions options,
        IReadOnlyList<string>? notes = null)
    {
        LoadNotes = notes ?? [];
        _network = network;
        Tokenizer = tokenizer;
        CheckpointPath = checkpointPath;
        TokenizerPath = tokenizerPath;
        Device = options.Device;
        Precision = options.Precision;
        TorchDevice = network.parameters().First().device;
    }

    /// <summary>The architecture of the loaded weights.</summary>
    public Sam3Config Config => Network.Config;
    /// <summary>The checkpoint file the weights came from (null for <see cref="CreateUntrained"/>).</summary>
    public string? CheckpointPath { get; }
    /// <summary>The tokenizer vocabulary used.</summary>
    public string? TokenizerPath { get; }
    /// <summary>The LibTorch device of the weights.</summary>
    public string Device { get; }
    /// <summary>The weights' precision.</summary>
    public Sam3Precision Precision { get; }
    /// <summary>Whether the SAM1-style interactive heads were built (see <see cref="Sam3ModelOptions.EnableInteractivePredictor"/>).</summary>
    public bool HasInteractivePredictor => Network.Tracker is not null;
    /// <summary>Number of parameters of the network.</summary>
    public long ParameterCount => Network.parameters().Sum(p => p.numel());
    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed => _network is null;
    /// <summary>
    /// What loading chose or noticed, one line each: which checkpoint of several in a folder, configuration values of a
    /// transformers <c>config.json</c> that differ from the original architecture, point projections absent from a
    /// Hugging Face file. Empty when there was nothing to say.
    /// </summary>
    public IReadOnlyList<string> LoadNotes { get; }

    internal Sam3ImageModel Network => _network ?? throw new ObjectDisposedException(nameof(Sam3Model));
    internal ClipBpeTokenizer Tokenizer { get; }
    internal torch.Device TorchDevice { get; }
    internal ScalarType DType => Precision == Sam3Precision.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>The recorder's callback while one is active on this call's async flow, else null (no cost).</summary>
    internal Action<string, Tensor>? Probe => _recorder.Value is { IsActive: true } r ? r.Offer : null;

    // ------------------------------------------------------------------ loading

    /// <summary>
    /// Loads a model from a checkpoint file (<c>sam3.pt</c>, or safetensors in the original layout) or from a folder
    /// holding one (as downloaded from the hub), with its configuration and tokenizer found as
    /// <see cref="Sam3ModelOptions"/> describes. Loading is strict: a missing, unexpected or misshaped key is a
    /// <see cref="Sam3CheckpointMismatchException"/> listing every such key.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="path"/> is empty.</exception>
    /// <exception cref="Sam3CheckpointException">No checkpoint at <paramref name="path"/>, or it is unreadable or does not fit the configuration.</exception>
    /// <exception cref="Sam3VocabularyException">No tokenizer vocabulary was found or it is malformed.</exception>
    /// <exception cref="Sam3ConfigException">The configuration is invalid.</exception>
    public static Sam3Model Load(string path, Sam3ModelOptions? options = null) => LoadCore(path, options, null, CancellationToken.None);

    /// <summary>
    /// <see cref="Load"/> on a worker thread, reporting progress (per tensor while reading the checkpoint) and honouring
    /// cancellation between tensors.
    /// </summary>
    public static Task<Sam3Model> LoadAsync(string path, Sam3ModelOptions? options = null, IProgress<LoadProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.Run(() => LoadCore(path, options, progress, cancellationToken), cancellationToken);
    }

    private static Sam3Model LoadCore(string path, Sam3ModelOptions? options, IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        options ??= new Sam3ModelOptions();
        var device = ParseDevice(options.Device, $"{nameof(options)}.{nameof(Sam3ModelOptions.Device)}");
        progress?.Report(new LoadProgress("locating files", 0, 3, path));
        var files = ModelFolder.Locate(path, options);
        ct.ThrowIfCancellationRequested();
        progress?.Report(new LoadProgress("reading tokenizer", 1, 3, files.TokenizerPath));
        var tokenizer = ModelFolder.LoadTokenizer(files.TokenizerPath, files.Config);
        ct.ThrowIfCancellationRequested();
        bool observe = progress is not null || ct.CanBeCanceled;
        var network = Sam3ModelLoader.LoadImageModel(files.CheckpointPath, files.Config, new Sam3LoadOptions
        {
            EnableInstInteractivity = options.EnableInteractivePredictor,
            Device = device,
            Progress = !observe ? null : new SynchronousProgress<(int done, int total, string key)>(p =>
            {
                ct.ThrowIfCancellationRequested();
                progress?.Report(new LoadProgress("reading checkpoint", p.done, p.total, p.key));
            }),
        });
        var notes = files.Notes.ToList();
        if (network.geometry_encoder.PointProjectionsUnavailable is { } why) notes.Add(why);
        ApplyPrecision(network, options.Precision, device, notes);
        return new Sam3Model(network, tokenizer, files.CheckpointPath, files.TokenizerPath, options, notes);
    }

    /// <summary>
    /// A model with the modules' own random initialisation (for tests, benchmarks and training from scratch) and the
    /// tokenizer at <paramref name="tokenizerPath"/>.
    /// </summary>
    public static Sam3Model CreateUntrained(Sam3Config config, string tokenizerPath, Sam3ModelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentException.ThrowIfNullOrWhiteSpace(tokenizerPath);
        options ??= new Sam3ModelOptions();
        var device = ParseDevice(options.Device, $"{nameof(options)}.{nameof(Sam3ModelOptions.Device)}");
        var tokenizer = ModelFolder.LoadTokenizer(tokenizerPath, config);
        var network = Sam3ModelLoader.Build(config, options.EnableInteractivePredictor, device);
        var notes = new List<string>();
        ApplyPrecision(network, options.Precision, device, notes);
        return new Sam3Model(network, tokenizer, null, tokenizerPath, options, notes);
    }

    /// <summary>The bf16 policy (<see cref="PrecisionPolicy"/>) for <see cref="Sam3Precision.BFloat16"/>, with its CPU note.</summary>
    private static void ApplyPrecision(Sam3ImageModel network, Sam3Precision precision, torch.Device device, List<string> notes)
    {
        if (precision != Sam3Precision.BFloat16) return;
        PrecisionPolicy.Apply(network);
        if (CpuBf16Support.SlowBf16Note(device.type, CpuBf16Support.HasNativeBf16) is { } slow) notes.Add(slow);
    }

    /// <summary>Wraps an already built network (tests, parity runner).</summary>
    internal static Sam3Model FromNetwork(Sam3ImageModel network, ClipBpeTokenizer tokenizer) =>
        new(network, tokenizer, null, null, new Sam3ModelOptions
        {
            Device = network.parameters().First().device.ToString(),
            Precision = network.parameters().Any(p => p.dtype == ScalarType.BFloat16) ? Sam3Precision.BFloat16 : Sam3Precision.Float32,
        });

    private static torch.Device ParseDevice(string device, string paramName)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(device, paramName);
        try
        {
            return torch.device(device);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new ArgumentException($"unknown device '{device}' (expected cpu, cuda or cuda:N)", paramName, e);
        }
    }

    // ------------------------------------------------------------------ predictors

    /// <summary>The text/box/point detector API (upstream <c>Sam3Processor</c>).</summary>
    public Sam3ImagePredictor CreateImagePredictor(ImagePredictorOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return new Sam3ImagePredictor(this, options ?? new ImagePredictorOptions());
    }

    /// <summary>The SAM1-style interactive predictor (upstream <c>predict_inst</c>).</summary>
    /// <exception cref="Sam3StateException">The model was loaded without the interactive heads.</exception>
    public Sam3InteractivePredictor CreateInteractivePredictor(InteractivePredictorOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return new Sam3InteractivePredictor(this, options ?? new InteractivePredictorOptions());
    }

    /// <summary>The batched query API (upstream <c>sam3_image_batched_inference</c>): many images, many queries, one forward.</summary>
    public Batched.Sam3BatchedPredictor CreateBatchedPredictor()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return new Batched.Sam3BatchedPredictor(this);
    }

    /// <summary>The SAM2-style video tracker (upstream <c>build_sam3_video_model().tracker</c>) on these weights.</summary>
    /// <exception cref="Sam3StateException">The model was loaded without the interactive (tracker) heads.</exception>
    public Video.VideoTracker CreateVideoTracker()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (!HasInteractivePredictor) throw new Sam3StateException("the video tracker needs the tracker heads: load with EnableInteractivePredictor = true");
        return new Video.VideoTracker(Network);
    }

    // ------------------------------------------------------------------ introspection

    /// <summary>
    /// Records named intermediate tensors (backbone levels, encoder/decoder layers, heads; the names of the parity
    /// fixtures) of every call made on this async flow (and tasks it starts) while the recorder is not disposed. The recorder keeps CPU copies
    /// of the tensors whose name passes <paramref name="filter"/> (all when null).
    /// </summary>
    public ActivationRecorder Record(Func<string, bool>? filter = null)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return Attach(new ActivationRecorder(this, filter, null));
    }

    /// <summary>
    /// Like <see cref="Record(Func{string, bool}?)"/> but hands each tensor to <paramref name="observer"/> instead of
    /// keeping it: the tensor is valid only during the callback (clone what must outlive it). Nothing is kept.
    /// </summary>
    public ActivationRecorder Record(Action<string, Tensor> observer, Func<string, bool>? filter = null)
    {
        ArgumentNullException.ThrowIfNull(observer);
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        return Attach(new ActivationRecorder(this, filter, observer));
    }

    private ActivationRecorder Attach(ActivationRecorder recorder)
    {
        recorder.Previous = _recorder.Value;
        _recorder.Value = recorder;
        return recorder;
    }

    internal void Detach(ActivationRecorder recorder)
    {
        if (ReferenceEquals(_recorder.Value, recorder)) _recorder.Value = recorder.Previous;
    }

    // ------------------------------------------------------------------ saving

    /// <summary>
    /// Saves the weights (e.g. after fine-tuning) as safetensors in the image model's key layout, loadable with
    /// <see cref="Load"/>. The file is written to a temporary name and renamed when complete; an existing file is
    /// replaced only with <paramref name="overwrite"/>.
    /// </summary>
    public void Save(string path, bool overwrite = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        Sam3ModelLoader.Save(Network, path, overwrite);
    }

    /// <summary>Frees the weights.</summary>
    public void Dispose()
    {
        _network?.Dispose();
        _network = null;
    }

    /// <summary>IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
