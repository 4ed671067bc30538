using BenchmarkDotNet.Attributes;
using Sam3.Torch.Text;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// CLIP BPE tokenizer throughput: a small batch of prompts with a warm BPE cache (the common case: prompts repeat),
/// the same with the cache disabled (every piece goes through BPE), and the cleaning step alone.
/// The vocabulary is shared/parity/inputs/bpe_simple_vocab_16e6.txt.gz (override with SAM3_BPE_VOCAB).
/// </summary>
[MemoryDiagnoser]
public class TokenizerBenchmarks
{
    private static readonly string[] Prompts =
    [
        "person",
        "a red car",
        "traffic light",
        "the man's hat",
        "a photo of a very small yellow rubber duck floating next to a big blue boat on a calm lake at sunset",
    ];

    private ClipBpeTokenizer _cached = null!;
    private ClipBpeTokenizer _uncached = null!;

    [GlobalSetup]
    public void Setup()
    {
        string path = Environment.GetEnvironmentVariable("SAM3_BPE_VOCAB") ?? FindVocabulary();
        _cached = ClipBpeTokenizer.FromBpeGz(path);
        _uncached = ClipBpeTokenizer.FromBpeGz(path, new ClipTokenizerOptions { MaxCacheEntries = 0 });
        _cached.Tokenize(Prompts); // warm the cache
    }

    [Benchmark(Baseline = true)]
    public object TokenizeBatchCached() => _cached.Tokenize(Prompts);

    [Benchmark]
    public object TokenizeBatchUncached() => _uncached.Tokenize(Prompts);

    [Benchmark]
    public int CleanOnly()
    {
        int n = 0;
        foreach (var p in Prompts) n += ClipTextCleaner.Clean(p).Length;
        return n;
    }

    private static string FindVocabulary()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null)
        {
            string candidate = Path.Combine(dir.FullName, "..", "shared", "parity", "inputs", "bpe_simple_vocab_16e6.txt.gz");
            if (File.Exists(Path.Combine(dir.FullName, "Sam3.Torch.sln")) && File.Exists(candidate)) return Path.GetFullPath(candidate);
            dir = dir.Parent;
        }
        throw new FileNotFoundException("bpe_simple_vocab_16e6.txt.gz not found; set SAM3_BPE_VOCAB");
    }
}
