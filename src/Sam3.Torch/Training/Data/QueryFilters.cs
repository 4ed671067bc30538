namespace Sam3.Torch.Training.Data;

/// <summary>Raised when a filter leaves a datapoint without any find query (upstream raises <c>ValueError</c> and the data set moves on to the next index).</summary>
internal sealed class EmptyDatapointException(string filter) : Exception($"no find query left after {filter}")
{
    public string Filter { get; } = filter;
}

/// <summary>What a query filter wants removed (upstream <c>FilterDataPointQueries</c>).</summary>
internal abstract class QueryFilter
{
    /// <summary>Indices of find queries to delete and (image, object) pairs to delete.</summary>
    public abstract (HashSet<int> FindIds, HashSet<(int Image, int Object)> ObjectIds) Identify(Datapoint dp);
}

/// <summary>Drops crowd objects (upstream <c>FilterCrowds</c>); the queries stay (a query whose objects were all crowds becomes a negative).</summary>
internal sealed class FilterCrowds : QueryFilter
{
    public override (HashSet<int>, HashSet<(int, int)>) Identify(Datapoint dp)
    {
        var objs = new HashSet<(int, int)>();
        for (int i = 0; i < dp.Images.Count; i++)
            for (int o = 0; o < dp.Images[i].Objects.Count; o++)
                if (dp.Images[i].Objects[o].IsCrowd) objs.Add((i, o));
        return ([], objs);
    }
}

/// <summary>Drops objects whose area bookkeeping is below 1e-6 (upstream <c>FilterEmptyTargets</c>).</summary>
internal sealed class FilterEmptyTargets : QueryFilter
{
    public const double MinArea = 1e-6;

    public override (HashSet<int>, HashSet<(int, int)>) Identify(Datapoint dp)
    {
        var objs = new HashSet<(int, int)>();
        for (int i = 0; i < dp.Images.Count; i++)
            for (int o = 0; o < dp.Images[i].Objects.Count; o++)
                if (dp.Images[i].Objects[o].Area < MinArea) objs.Add((i, o));
        return ([], objs);
    }
}

/// <summary>Drops find queries with more than <see cref="MaxNumObjects"/> targets (upstream <c>FilterFindQueriesWithTooManyOut</c>).</summary>
internal sealed class FilterFindQueriesWithTooManyOut(int maxNumObjects) : QueryFilter
{
    public int MaxNumObjects { get; } = maxNumObjects;

    public override (HashSet<int>, HashSet<(int, int)>) Identify(Datapoint dp)
    {
        var finds = new HashSet<int>();
        for (int i = 0; i < dp.FindQueries.Count; i++)
            if (dp.FindQueries[i].ObjectIdsOutput.Count > MaxNumObjects) finds.Add(i);
        return (finds, []);
    }
}

/// <summary>
/// Applies a <see cref="QueryFilter"/> the way upstream's <c>FlexibleFilterFindGetQueries</c> does: delete the
/// queries, make processing orders contiguous, delete objects that are filtered or no longer referenced by any query
/// (re-indexing the queries' targets), then delete images no query looks at.
/// </summary>
internal sealed class FlexibleFilterFindGetQueries(QueryFilter filter) : IDatapointTransform
{
    public QueryFilter Filter { get; } = filter;

    public Datapoint Apply(Datapoint dp, Random rng)
    {
        var (findIds, objIds) = Filter.Identify(dp);
        var kept = new List<DatapointQuery>();
        for (int i = 0; i < dp.FindQueries.Count; i++)
            if (!findIds.Contains(i)) kept.Add(dp.FindQueries[i]);
        if (kept.Count > 0 && !kept.Any(q => q.QueryProcessingOrder == 0))
            throw new InvalidOperationException("Invalid find queries: they need to start at query_processing_order = 0");
        dp.FindQueries = kept;
        if (kept.Count == 0) throw new EmptyDatapointException(Filter.GetType().Name);

        var stages = kept.Select(q => q.QueryProcessingOrder).Distinct().Order().ToList();
        foreach (var q in kept) q.QueryProcessingOrder = stages.IndexOf(q.QueryProcessingOrder);

        for (int img = 0; img < dp.Images.Count; img++)
        {
            var objects = dp.Images[img].Objects;
            var used = new HashSet<int>(kept.Where(q => q.ImageId == img).SelectMany(q => q.ObjectIdsOutput));
            var unused = new HashSet<int>(Enumerable.Range(0, objects.Count).Where(o => !used.Contains(o)));
            foreach (var (fi, fo) in objIds) if (fi == img) unused.Add(fo);
            if (unused.Count == 0) continue;
            var map = new Dictionary<int, int>();
            var newObjects = new List<DatapointObject>();
            for (int o = 0; o < objects.Count; o++)
            {
                if (unused.Contains(o)) { objects[o].Dispose(); continue; }
                map[o] = newObjects.Count;
                newObjects.Add(objects[o]);
            }
            dp.Images[img].Objects = newObjects;
            foreach (var q in kept.Where(q => q.ImageId == img))
                q.ObjectIdsOutput = q.ObjectIdsOutput.Where(o => !unused.Contains(o)).Select(o => map[o]).ToList();
        }

        var keepImages = new HashSet<int>(kept.Select(q => q.ImageId));
        var imageMap = new Dictionary<int, int>();
        var newImages = new List<DatapointImage>();
        for (int i = 0; i < dp.Images.Count; i++)
        {
            if (!keepImages.Contains(i)) { dp.Images[i].Dispose(); continue; }
            imageMap[i] = newImages.Count;
            newImages.Add(dp.Images[i]);
        }
        dp.Images = newImages;
        foreach (var q in kept) q.ImageId = imageMap[q.ImageId];
        return dp;
    }
}
