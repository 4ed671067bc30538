namespace Sam3.Torch.Training.Evaluation;

/// <summary>
/// Minimum-cost assignment of a rectangular cost matrix, the shortest-augmenting-path algorithm of scipy's
/// <c>linear_sum_assignment</c> (Crouse 2016, scipy/optimize/rectangular_lsap): rows are added one at a time, each
/// through a Dijkstra-like search over the reduced costs that prefers, among equal costs, a free column; the matrix is
/// transposed when it has more rows than columns. Same pairs as scipy, ties included, for finite costs.
/// </summary>
internal static class LinearSumAssignment
{
    /// <summary>Returns (rows, cols) of the optimal assignment, rows ascending; <paramref name="maximize"/> negates the costs.</summary>
    public static (int[] Rows, int[] Cols) Solve(double[,] cost, bool maximize = false)
    {
        int nr = cost.GetLength(0), nc = cost.GetLength(1);
        if (nr == 0 || nc == 0) return ([], []);
        bool transpose = nc < nr;
        if (transpose) (nr, nc) = (nc, nr);
        var c = new double[nr * nc];
        for (int i = 0; i < nr; i++)
            for (int j = 0; j < nc; j++)
            {
                double v = transpose ? cost[j, i] : cost[i, j];
                if (double.IsNaN(v) || double.IsNegativeInfinity(v)) throw new ArgumentException("cost matrix holds NaN or -inf", nameof(cost));
                c[i * nc + j] = maximize ? -v : v;
            }
        var u = new double[nr];
        var v2 = new double[nc];
        var spc = new double[nc];
        var path = new int[nc];
        var col4row = new int[nr];
        var row4col = new int[nc];
        var sr = new bool[nr];
        var sc = new bool[nc];
        var remaining = new int[nc];
        Array.Fill(path, -1); Array.Fill(col4row, -1); Array.Fill(row4col, -1);
        for (int curRow = 0; curRow < nr; curRow++)
        {
            int sink = AugmentingPath(nc, c, u, v2, path, row4col, spc, curRow, sr, sc, remaining, out double minVal);
            if (sink < 0) throw new ArgumentException("cost matrix is infeasible", nameof(cost));
            u[curRow] += minVal;
            for (int i = 0; i < nr; i++) if (sr[i] && i != curRow) u[i] += minVal - spc[col4row[i]];
            for (int j = 0; j < nc; j++) if (sc[j]) v2[j] -= minVal - spc[j];
            int jj = sink;
            while (true)
            {
                int i = path[jj];
                row4col[jj] = i;
                (col4row[i], jj) = (jj, col4row[i]);
                if (i == curRow) break;
            }
        }
        var a = new int[nr];
        var b = new int[nr];
        if (transpose)
        {
            var order = Enumerable.Range(0, nr).OrderBy(i => col4row[i]).ToArray();
            for (int k = 0; k < nr; k++) { a[k] = col4row[order[k]]; b[k] = order[k]; }
        }
        else
            for (int i = 0; i < nr; i++) { a[i] = i; b[i] = col4row[i]; }
        return (a, b);
    }

    private static int AugmentingPath(int nc, double[] cost, double[] u, double[] v, int[] path, int[] row4col, double[] spc,
        int i, bool[] sr, bool[] sc, int[] remaining, out double minVal)
    {
        minVal = 0;
        int numRemaining = nc;
        for (int it = 0; it < nc; it++) remaining[it] = nc - it - 1;
        Array.Fill(sr, false); Array.Fill(sc, false); Array.Fill(spc, double.PositiveInfinity);
        int sink = -1;
        while (sink == -1)
        {
            int index = -1;
            double lowest = double.PositiveInfinity;
            sr[i] = true;
            for (int it = 0; it < numRemaining; it++)
            {
                int j = remaining[it];
                double r = minVal + cost[i * nc + j] - u[i] - v[j];
                if (r < spc[j]) { path[j] = i; spc[j] = r; }
                if (spc[j] < lowest || (spc[j] == lowest && row4col[j] == -1)) { lowest = spc[j]; index = it; }
            }
            minVal = lowest;
            if (double.IsPositiveInfinity(minVal)) return -1;
            int jj = remaining[index];
            if (row4col[jj] == -1) sink = jj;
            else i = row4col[jj];
            sc[jj] = true;
            remaining[index] = remaining[--numRemaining];
        }
        return sink;
    }
}
