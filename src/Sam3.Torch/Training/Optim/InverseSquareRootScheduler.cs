namespace Sam3.Torch.Training.Optim;

/// <summary>
/// sam3.train.optim.schedulers.InverseSquareRootParamScheduler: after warm-up, <c>base·1/sqrt((step + timescale -
/// warmup)/timescale)</c>; times a linear warm-up <c>min(1, step/warmup)</c> and a linear cool-down
/// <c>min(1, (total - step)/cooldown)</c> with <c>total = step/where</c> (where = fraction of training done, in (0,1]).
/// Computed in float64 as upstream's Python floats.
/// </summary>
internal sealed class InverseSquareRootScheduler
{
    public double BaseLr { get; }
    public ScheduleConfig Config { get; }

    public InverseSquareRootScheduler(double baseLr, ScheduleConfig config)
    {
        if (config.Timescale <= 0) throw new ArgumentOutOfRangeException(nameof(config), config.Timescale, "timescale must be positive");
        BaseLr = baseLr;
        Config = config;
    }

    public double At(int step, double where)
    {
        double lr = BaseLr;
        double totalSteps;
        if (where > 0)
            totalSteps = step / where;
        else
            totalSteps = 1;
        int warmup = Config.WarmupSteps, cooldown = Config.CooldownSteps, timescale = Config.Timescale;
        int shift = timescale - warmup;
        if (warmup < step) lr = lr / Math.Sqrt((step + shift) / (double)timescale);
        if (warmup != 0) lr = lr * Math.Min(1.0, step / (double)warmup);
        if (cooldown != 0) lr = lr * Math.Min(1.0, (totalSteps - step) / cooldown);
        return lr;
    }
}
