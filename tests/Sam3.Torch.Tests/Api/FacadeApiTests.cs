using NUnit.Framework;
using Sam3.Torch.Batched;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;
using Sam3.Torch.Visualization;

namespace Sam3.Torch.Tests.Api;

/// <summary>
/// The batched and video facades through the public entry point: created from <see cref="Sam3Model"/>, prompted with the
/// shared vocabulary (<see cref="BoxPrompt"/>, <see cref="PointPrompt"/>, <see cref="Box"/>), returning caller-owned
/// data equal to the tensor path's (batched) or to the pixel-space calls (video).
/// </summary>
[TestFixture, Category("Fast")]
public class FacadeApiTests
{
    private Sam3Model _model = null!;

    [OneTimeSetUp]
    public void Load() => _model = Sam3Model.Load(TinyWeights.Path, new Sam3ModelOptions
    {
        Config = Sam3Config.Tiny, TokenizerPath = SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"),
    });

    [OneTimeTearDown]
    public void Unload() => _model?.Dispose();

    [Test]
    public void BatchedResultsAreImmutableCopiesOfTheTensorPath()
    {
        var image = ImageLoader.Load(SharedData.Parity("inputs", "groceries.jpg"));
        var meta = new InferenceMetadata(5, 5, 3, image.Height, image.Width);
        // a box given normalised (cxcywh) must act as the same box in pixels (upstream takes pixel xyxy)
        var pixel = BoxPrompt.Xyxy(368, 166, 444, 342);
        var normalised = new BoxPrompt(pixel.Box.ToNormalized(image.Width, image.Height).As(BoxFormat.Cxcywh));
        var post = new PostProcessImage { MaxDetsPerImg = 4, DetectionThreshold = -1 };
        var predictor = _model.CreateBatchedPredictor();
        var results = predictor.Predict([new Datapoint(image, [new FindQuery("bag", meta, [pixel])])], post);
        var again = predictor.Predict([new Datapoint(image, [new FindQuery("bag", meta, [normalised])])], post);
        using var tensors = predictor.PredictTensors([new Datapoint(image, [new FindQuery("bag", meta, [pixel])])], post);

        Assert.That(results.Keys, Is.EqualTo(new long[] { 5 }));
        var dets = results[5];
        var t = tensors[5];
        Assert.That(dets, Has.Count.EqualTo(t.Count).And.Count.EqualTo(4));
        var scores = t.ScoreArray();
        var boxes = t.BoxArray();
        var labels = t.LabelArray();
        for (int k = 0; k < dets.Count; k++)
        {
            Assert.That(dets[k].Score, Is.EqualTo(scores[k]));
            Assert.That(dets[k].Label, Is.EqualTo(labels[k]));
            Assert.That(dets[k].Box.ToXyxy(), Is.EqualTo((boxes[k][0], boxes[k][1], boxes[k][2], boxes[k][3])));
            Assert.That(dets[k].Box.Space, Is.EqualTo(CoordinateSpace.Pixels));
            Assert.That(dets[k].Mask, Is.Not.Null);
            Assert.That((dets[k].Mask!.Width, dets[k].Mask!.Height), Is.EqualTo((image.Width, image.Height)));
            Assert.That(Math.Abs(again[5][k].Score - dets[k].Score), Is.LessThanOrEqualTo(1e-5), "normalised cxcywh box = pixel box");
        }
    }

    [Test]
    public void VideoTrackerTakesTheSharedPromptTypes()
    {
        using var tracker = _model.CreateVideoTracker();
        var frames = Enumerable.Range(0, 3).Select(_ => ImageLoader.Load(SharedData.Parity("inputs", "video_0001", "0.jpg"))).ToList();
        using var a = tracker.Open(frames.Count, frames[0].Width, frames[0].Height, i => frames[i]);
        using var b = tracker.Open(frames.Count, frames[0].Width, frames[0].Height, i => frames[i]);
        int w = a.Width, h = a.Height;
        var px = a.AddBox(0, 1, Box.FromXyxy(300, 200, 700, 600), [PointPrompt.Pixel(500, 400)]);
        var norm = b.AddBox(0, 1, Box.FromXyxy(300, 200, 700, 600).ToNormalized(w, h).As(BoxFormat.Xywh), [PointPrompt.Normalized(500f / w, 400f / h)]);
        Assert.That(norm.Objects[0].Mask, Is.EqualTo(px.Objects[0].Mask), "the same prompt in another space and format");
        Assert.Throws<Sam3PromptException>(() => a.AddPoints(0, 1, [PointPrompt.Pixel(w + 5, 10)]));
        var mask = BinaryMask.FromBytes(px.Objects[0].Mask, w, h);
        Assert.That(a.AddMask(1, 1, mask).Objects.Select(o => o.ObjectId), Is.EqualTo(new[] { 1 }));
    }
}
