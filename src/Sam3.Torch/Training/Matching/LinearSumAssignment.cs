namespace Sam3.Torch.Training.Matching;

/// <summary>
/// Exact solver of the rectangular linear sum assignment problem, with the same answer as
/// <c>scipy.optimize.linear_sum_assignment</c> (scipy ≥ 1.6, used by upstream's matchers) including ties: the shortest
/// augmenting path method of Crouse (IEEE TAES 52(4), 2016, pp. 1685-1686) in the variant scipy implements:
/// <list type="bullet">
/// <item>a tall matrix (more rows than columns) is transposed first, so rows are always the smaller side;</item>
/// <item>rows are augmented in order 0..nr-1, dual variables u (rows), v (columns) start at 0, costs in float64;</item>
/// <item>the columns still to scan are kept in a list filled in reverse order (nc-1 .. 0) and a scanned column is
///   removed by moving the list's last entry into its slot (this fixes which of several equal reduced costs wins);</item>
/// <item>among equal minimal path costs the first in scan order wins, unless a later one is an unassigned column
///   (a sink), which is then preferred;</item>
/// <item>the result is sorted by row (of the original matrix).</item>
/// </list>
/// Returns (rows, cols) of min(nr, nc) pairs. NaN or -inf entries are rejected; an infeasible matrix (+inf blocking
/// every assignment) raises.
/// </summary>
internal static class LinearSumAssignment
{
    public static (long[] Rows, long[] Cols) Solve(double[,] cost, bool maximize = false)
    {
        int nr = cost.GetLength(0), nc = cost.GetLength(1);
        if (nr == 0 || nc == 0) return ([], []);
        bool transpose = nc < nr;
        int r = transpose ? nc : nr, c = transpose ? nr : nc;
        var m = new double[r * c];
        for (int i = 0; i < nr; i++)
            for (int j = 0; j < nc; j++)
            {
                double x = cost[i, j];
                if (maximize) x = -x;
                if (double.IsNaN(x) || double.IsNegativeInfinity(x))
                    throw new ArgumentException($"cost matrix entry [{i},{j}] = {cost[i, j]} is invalid (NaN or -inf)", nameof(cost));
                if (transpose) m[j * c + i] = x; else m[i * c + j] = x;
            }
        var col4row = SolveWide(r, c, m);
        var rows = new long[r];
        var cols = new long[r];
        if (transpose)
        {
            // rows of the transposed problem are the original columns: sort the pairs by original row (col4row values).
            var order = Enumerable.Range(0, r).OrderBy(i => col4row[i]).ToArray();
            for (int k = 0; k < r; k++) { rows[k] = col4row[order[k]]; cols[k] = order[k]; }
        }
        else
        {
            for (int i = 0; i < r; i++) { rows[i] = i; cols[i] = col4row[i]; }
        }
        return (rows, cols);
    }

    /// <summary>nr ≤ nc, row-major cost; returns the column assigned to each row.</summary>
    private static int[] SolveWide(int nr, int nc, double[] cost)
    {
        var u = new double[nr];
        var v = new double[nc];
        var shortest = new double[nc];
        var path = new int[nc];
        var col4row = new int[nr];
        var row4col = new int[nc];
        var sr = new bool[nr];
        var sc = new bool[nc];
        var remaining = new int[nc];
        Array.Fill(path, -1);
        Array.Fill(col4row, -1);
        Array.Fill(row4col, -1);

        for (int curRow = 0; curRow < nr; curRow++)
        {
            // shortest augmenting path from curRow
            double minVal = 0;
            int numRemaining = nc;
            for (int it = 0; it < nc; it++) remaining[it] = nc - it - 1;
            Array.Fill(sr, false);
            Array.Fill(sc, false);
            Array.Fill(shortest, double.PositiveInfinity);
            int sink = -1;
            int i = curRow;
            while (sink == -1)
            {
                int index = -1;
                double lowest = double.PositiveInfinity;
                sr[i] = true;
                for (int it = 0; it < numRemaining; it++)
                {
                    int j = remaining[it];
                    double red = minVal + cost[i * nc + j] - u[i] - v[j];
                    if (red < shortest[j])
                    {
                        path[j] = i;
                        shortest[j] = red;
                    }
                    if (shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == -1))
                    {
                        lowest = shortest[j];
                        index = it;
                    }
                }
                minVal = lowest;
                if (double.IsPositiveInfinity(minVal))
                    throw new ArgumentException("cost matrix is infeasible (no finite assignment)", nameof(cost));
                int jj = remaining[index];
                if (row4col[jj] == -1) sink = jj;
                else i = row4col[jj];
                sc[jj] = true;
                remaining[index] = remaining[--numRemaining];
            }

            // dual update
            u[curRow] += minVal;
            for (int k = 0; k < nr; k++)
                if (sr[k] && k != curRow) u[k] += minVal - shortest[col4row[k]];
            for (int j = 0; j < nc; j++)
                if (sc[j]) v[j] -= minVal - shortest[j];

            // augment along the path
            int col = sink;
            while (true)
            {
                int row = path[col];
                row4col[col] = row;
                (col4row[row], col) = (col, col4row[row]);
                if (row == curRow) break;
            }
        }
        return col4row;
    }
}
