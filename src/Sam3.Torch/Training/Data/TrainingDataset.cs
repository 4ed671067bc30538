namespace Sam3.Torch.Training.Data;

/// <summary>
/// A <see cref="CocoDataset"/> with a transform pipeline and a seed: what upstream's <c>Sam3ImageDataset.__getitem__</c>
/// + DataLoader + <c>collate_fn_api</c> do. Reproducible: the random draws of sample <c>i</c> in epoch <c>e</c> come
/// from <c>System.Random(Seed(seed, e, i))</c> and the epoch order from <c>System.Random(Seed(seed, e))</c>, so a
/// resumed run sees the same batches. A datapoint that the filters empty is replaced by the next one, as upstream does
/// (at most <see cref="MaxRetries"/> times).
/// </summary>
internal sealed class TrainingDataset(CocoDataset source, IDatapointTransform transforms, int seed, bool withSegMasks = true)
{
    public const int MaxRetries = 100;

    public CocoDataset Source { get; } = source;
    public IDatapointTransform Transforms { get; } = transforms;
    public int Seed { get; } = seed;
    public bool WithSegMasks { get; } = withSegMasks;
    public int Count => Source.Count;

    /// <summary>Datapoint <paramref name="index"/> of epoch <paramref name="epoch"/>, loaded and transformed (caller disposes).</summary>
    public Datapoint Get(int index, int epoch)
    {
        if (Count == 0) throw new Sam3DatasetException(Source.Annotations.JsonPath, "the data set has no datapoints");
        int idx = index;
        for (int attempt = 0; attempt < MaxRetries; attempt++)
        {
            var rng = new Random(DeriveSeed(Seed, epoch, idx));
            var dp = Source.Load(idx);
            try
            {
                return Transforms.Apply(dp, rng);
            }
            catch (EmptyDatapointException)
            {
                dp.Dispose();
                idx = (idx + 1) % Count;
            }
        }
        throw new Sam3DatasetException(Source.Annotations.JsonPath, $"{MaxRetries} datapoints in a row from {index} lost all their queries to the filters");
    }

    /// <summary>Loads, transforms and collates the datapoints <paramref name="indices"/>.</summary>
    public TrainingBatch GetBatch(IReadOnlyList<int> indices, int epoch)
    {
        var dps = new List<Datapoint>(indices.Count);
        try
        {
            foreach (int i in indices) dps.Add(Get(i, epoch));
            return TrainingCollator.Collate(dps, WithSegMasks);
        }
        finally
        {
            foreach (var d in dps) d.Dispose();
        }
    }

    /// <summary>The batches of one epoch: a seeded shuffle (or identity), cut into <paramref name="batchSize"/>; the last partial batch dropped when <paramref name="dropLast"/>.</summary>
    public IReadOnlyList<int[]> EpochBatches(int epoch, int batchSize, bool shuffle = true, bool dropLast = true)
    {
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), $"batch size must be positive, got {batchSize}");
        var order = Enumerable.Range(0, Count).ToArray();
        if (shuffle) new Random(DeriveSeed(Seed, epoch, -1)).Shuffle(order);
        var batches = new List<int[]>();
        for (int i = 0; i < order.Length; i += batchSize)
        {
            if (i + batchSize > order.Length && dropLast) break;
            batches.Add(order[i..Math.Min(order.Length, i + batchSize)]);
        }
        return batches;
    }

    /// <summary>A stable (platform- and run-independent) mix of the seed, epoch and index.</summary>
    public static int DeriveSeed(int seed, int epoch, int index)
    {
        unchecked
        {
            ulong h = 0xcbf29ce484222325UL;
            foreach (int v in new[] { seed, epoch, index })
            {
                h ^= (uint)v;
                h *= 0x100000001b3UL;
                h ^= h >> 29;
            }
            return (int)(h & 0x7fffffff);
        }
    }
}
