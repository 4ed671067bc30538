using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 track</c> and <c>sam3 video</c> take a checkpoint folder as <c>Sam3Model.Load</c> does: its checkpoint, its
/// config.json and its tokenizer (no --vocab, no --config needed); a missing path is the lookup's typed error.
/// </summary>
[TestFixture, Category("Slow")]
public class CheckpointFolderCliTests
{
    private string _folder = null!;

    [OneTimeSetUp]
    public void MakeFolder()
    {
        _folder = Directory.CreateTempSubdirectory("sam3-ckpt-folder-").FullName;
        File.CreateSymbolicLink(Path.Combine(_folder, "model.safetensors"), SharedData.Parity("tiny", "model.safetensors"));
        File.CreateSymbolicLink(Path.Combine(_folder, "config.json"), SharedData.Parity("tiny", "config.json"));
        File.CreateSymbolicLink(Path.Combine(_folder, "bpe_simple_vocab_16e6.txt.gz"), SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
    }

    [OneTimeTearDown]
    public void RemoveFolder() => Directory.Delete(_folder, true);

    private static (int Code, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, e.ToString());
    }

    [Test]
    public void TheFolderGivesCheckpointConfigAndTokenizer()
    {
        var (_, files) = ModelArguments.Resolve(_folder, config: null, vocab: null, requireTokenizer: true);
        Assert.That(Path.GetFileName(files.CheckpointPath), Is.EqualTo("model.safetensors"));
        Assert.That(files.Config.ImageSize, Is.EqualTo(Sam3.Torch.Config.Sam3Config.Load(SharedData.Parity("tiny", "config.json")).ImageSize));
        Assert.That(Path.GetFileName(files.TokenizerPath), Is.EqualTo("bpe_simple_vocab_16e6.txt.gz"));

        string noVocab = Directory.CreateTempSubdirectory("sam3-ckpt-novocab-").FullName;
        try
        {
            File.CreateSymbolicLink(Path.Combine(noVocab, "model.safetensors"), SharedData.Parity("tiny", "model.safetensors"));
            Assert.That(ModelArguments.Resolve(noVocab, null, null, requireTokenizer: false).Files.TokenizerPath, Is.Empty);
            Assert.Throws<Sam3VocabularyException>(() => ModelArguments.Resolve(noVocab, null, null, requireTokenizer: true));
        }
        finally
        {
            Directory.Delete(noVocab, true);
        }
        string missing = Path.Combine(_folder, "nope");
        var ex = Assert.Throws<Sam3CheckpointException>(() => ModelArguments.Resolve(missing, null, null, requireTokenizer: true));
        Assert.That(ex!.Message, Does.Contain("checkpoint not found").And.Contain(missing));
    }

    [Test]
    public void TrackAndVideoRunFromTheFolderWithoutVocabOrConfig()
    {
        string video = SharedData.Parity("inputs", "video_0001");
        string outTrack = Directory.CreateTempSubdirectory("sam3-folder-track-").FullName;
        string outVideo = Directory.CreateTempSubdirectory("sam3-folder-video-").FullName;
        try
        {
            var (code, err) = Run("track", "--checkpoint", _folder, "--video", video, "--out", outTrack, "--point", "560,400@0", "--obj", "1",
                                  "--max-frames", "1", "--no-video");
            Assert.That(code, Is.EqualTo(0), err);
            Assert.That(File.ReadAllLines(Path.Combine(outTrack, "tracks.jsonl")), Has.Length.EqualTo(2));

            (code, err) = Run("video", "--checkpoint", _folder, "--video", video, "--text", "person", "--direction", "forward", "--out", outVideo, "--no-video");
            Assert.That(code, Is.EqualTo(0), err);
            Assert.That(File.ReadAllLines(Path.Combine(outVideo, "frames.jsonl")), Has.Length.EqualTo(8));
            Assert.That(File.Exists(Path.Combine(outVideo, "results.json")), Is.True);
        }
        finally
        {
            Directory.Delete(outTrack, true);
            Directory.Delete(outVideo, true);
        }
    }
}
