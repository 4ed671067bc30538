namespace Sam3.Torch.Parity;

public sealed partial class ParityRunner
{
    private partial void RunPredictInst(Context ctx) =>
        throw new NotSupportedException("scenario kind 'predict_inst' (interactive prediction) is not implemented yet");
}
