using NUnit.Framework;
using Sam3.Torch.Training.Matching;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// The assignment solver: optimality against brute force on small matrices, and the tie-breaking rules of scipy's
/// linear_sum_assignment (which upstream's matchers use), derived by hand from its shortest-augmenting-path procedure.
/// </summary>
[TestFixture, Category("Fast")]
public class LinearSumAssignmentTests
{
    private static double Total(double[,] c, long[] r, long[] k) => r.Select((ri, i) => c[ri, k[i]]).Sum();

    private static IEnumerable<int[]> Permutations(int n, int k)
    {
        // injective maps from k rows into n columns
        IEnumerable<int[]> Rec(int[] prefix)
        {
            if (prefix.Length == k) { yield return prefix; yield break; }
            for (int j = 0; j < n; j++)
                if (!prefix.Contains(j))
                    foreach (var p in Rec([.. prefix, j])) yield return p;
        }
        return Rec([]);
    }

    private static double BruteForce(double[,] c)
    {
        int nr = c.GetLength(0), nc = c.GetLength(1);
        bool t = nc < nr;
        int r = Math.Min(nr, nc), n = Math.Max(nr, nc);
        double best = double.PositiveInfinity;
        foreach (var p in Permutations(n, r))
        {
            double s = 0;
            for (int i = 0; i < r; i++) s += t ? c[p[i], i] : c[i, p[i]];
            best = Math.Min(best, s);
        }
        return best;
    }

    [Test]
    public void OptimalOnRandomMatricesOfEveryShape()
    {
        var rng = new Random(1234);
        for (int trial = 0; trial < 300; trial++)
        {
            int nr = rng.Next(1, 6), nc = rng.Next(1, 6);
            var c = new double[nr, nc];
            bool integers = trial % 2 == 0; // small integers: many ties
            for (int i = 0; i < nr; i++) for (int j = 0; j < nc; j++) c[i, j] = integers ? rng.Next(0, 3) : rng.NextDouble() * 10 - 5;
            var (rows, cols) = LinearSumAssignment.Solve(c);
            Assert.That(rows, Has.Length.EqualTo(Math.Min(nr, nc)));
            Assert.That(rows, Is.Ordered.Ascending);
            Assert.That(rows.Distinct().Count(), Is.EqualTo(rows.Length));
            Assert.That(cols.Distinct().Count(), Is.EqualTo(cols.Length));
            Assert.That(Total(c, rows, cols), Is.EqualTo(BruteForce(c)).Within(1e-9), $"trial {trial}");
        }
    }

    [Test]
    public void ConstantMatrixGivesTheIdentity()
    {
        // scipy fills the scan list in reverse column order so that a constant matrix yields the identity (scipy #11602):
        // every column has the same reduced cost, the first unassigned column met in the scan list wins.
        var c = new double[4, 4];
        var (rows, cols) = LinearSumAssignment.Solve(c);
        Assert.That(rows, Is.EqualTo(new long[] { 0, 1, 2, 3 }));
        Assert.That(cols, Is.EqualTo(new long[] { 0, 1, 2, 3 }));
    }

    [Test]
    public void WideConstantRowsTakeTheLowestFreeColumns()
    {
        // 2x4 all-equal: row 0 scans columns 3,2,1,0 all at reduced cost 0 and all free; ties prefer a later free column,
        // so the last in scan order (column 0) wins; row 1 then gets column 1.
        var (rows, cols) = LinearSumAssignment.Solve(new double[2, 4]);
        Assert.That(rows, Is.EqualTo(new long[] { 0, 1 }));
        Assert.That(cols, Is.EqualTo(new long[] { 0, 1 }));
    }

    [Test]
    public void TallMatrixIsTransposedAndSortedByRow()
    {
        // 3 predictions x 1 target, predictions 0 and 2 tie at the minimum: the transposed 1x3 problem scans columns
        // 2,1,0; column 2 (cost 0) is taken first as the lowest, column 0 ties with it and is also free -> preferred.
        var c = new double[,] { { 0.0 }, { 1.0 }, { 0.0 } };
        var (rows, cols) = LinearSumAssignment.Solve(c);
        Assert.That(rows, Is.EqualTo(new long[] { 0 }));
        Assert.That(cols, Is.EqualTo(new long[] { 0 }));
        // a strict minimum wins regardless of position
        var (rows2, _) = LinearSumAssignment.Solve(new double[,] { { 1.0 }, { 1.0 }, { 0.5 } });
        Assert.That(rows2, Is.EqualTo(new long[] { 2 }));
    }

    [Test]
    public void TieBetweenTwoOptimalAssignmentsFollowsTheScanOrder()
    {
        // [[1,1],[1,1]] has two optimal assignments (cost 2). Row 0: columns scanned 1,0, both free at reduced cost 1:
        // column 0 (later, also free) wins. Row 1 gets column 1: identity.
        var (r1, c1) = LinearSumAssignment.Solve(new double[,] { { 1, 1 }, { 1, 1 } });
        Assert.That(c1, Is.EqualTo(new long[] { 0, 1 }));
        // [[0,0],[0,1]]: row 0 takes column 0 (tie, later free column), row 1 prefers column 0 (cost 0) and pushes row 0
        // along the zero-cost path to column 1: rows -> cols (1, 0), total 0.
        var (r2, c2) = LinearSumAssignment.Solve(new double[,] { { 0, 0 }, { 0, 1 } });
        Assert.That(r2, Is.EqualTo(new long[] { 0, 1 }));
        Assert.That(c2, Is.EqualTo(new long[] { 1, 0 }));
    }

    [Test]
    public void InvalidEntriesAreRejected()
    {
        Assert.Throws<ArgumentException>(() => LinearSumAssignment.Solve(new double[,] { { double.NaN, 1 } }));
        Assert.Throws<ArgumentException>(() => LinearSumAssignment.Solve(new double[,] { { double.NegativeInfinity, 1 } }));
        Assert.Throws<ArgumentException>(() => LinearSumAssignment.Solve(new double[,] { { double.PositiveInfinity, double.PositiveInfinity } }));
        var (r, c) = LinearSumAssignment.Solve(new double[0, 3]);
        Assert.That(r, Is.Empty);
        Assert.That(c, Is.Empty);
    }
}
