using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// A checkpoint in the Hugging Face <c>transformers</c> layout seen as the original released layout (<c>detector.*</c>,
/// <c>tracker.*</c>), so the existing mapping and strict checks apply unchanged. Nothing is read up front: each original
/// tensor is built on demand from the memory-mapped HF tensors (<see cref="HuggingFaceLayout.PlanToOriginal"/>): copies
/// and duplicates are the mapped views themselves, stacked rows and the transposed text projection are views too; only a
/// re-fused q/k/v tensor or the position embedding with its class row is a new tensor, and <see cref="CopyInto"/> writes
/// even those straight into a destination (row slices), so loading a model never holds a second copy of it.
/// <para>
/// Not exposed, because the HF layout does not hold them: the ViT RoPE tables (<c>*.attn.freqs_cis</c>; the model
/// recomputes them) and the detector's six point projections. The class row of <c>pos_embed</c> is zeros (upstream
/// drops it unused: <c>retain_cls_token=False</c>). An optional sidecar of the dropped pieces (<c>hf_dropped.safetensors</c>,
/// original keys plus <see cref="HuggingFaceLayout.ClsRowSidecarKey"/>) supplies them when inverting a conversion.
/// </para>
/// </summary>
internal sealed class HuggingFaceCheckpoint : ICheckpoint
{
    private readonly ICheckpoint _hf;
    private readonly ICheckpoint? _sidecar;
    private readonly bool _ownsSources;
    private readonly Dictionary<string, OriginalTensorPlan> _plans = new(StringComparer.Ordinal);
    private readonly List<string> _sidecarKeys = new();
    private readonly List<string> _names = new();

    /// <param name="hf">The HF-layout checkpoint (its keys are validated: unknown, incomplete or misshaped ones raise).</param>
    /// <param name="sidecar">Optional original-layout pieces the HF layout drops (detector point projections, pos_embed cls row).</param>
    /// <param name="ownsSources">Dispose <paramref name="hf"/> and <paramref name="sidecar"/> with this object.</param>
    public HuggingFaceCheckpoint(ICheckpoint hf, ICheckpoint? sidecar = null, bool ownsSources = false)
    {
        _hf = hf;
        _sidecar = sidecar;
        _ownsSources = ownsSources;
        foreach (var n in hf.Names)
        {
            var info = hf.Info(n);
            if (info.ComplexAsReal || !CheckpointDTypes.IsFloating(info.DType))
                throw new Sam3CheckpointException($"{hf.Path}: Hugging Face tensor '{n}' is {CheckpointDTypes.ToPythonName(info.DType)}" +
                                                  (info.ComplexAsReal ? " (complex)" : "") + "; the layout holds floating-point tensors only");
        }
        foreach (var p in HuggingFaceLayout.PlanToOriginal(hf.Names.Select(n => (n, hf.Info(n).Shape)).ToList()))
        {
            _plans[p.OriginalKey] = p;
            _names.Add(p.OriginalKey);
        }
        if (sidecar is not null)
        {
            foreach (var n in sidecar.Names)
            {
                if (n == HuggingFaceLayout.ClsRowSidecarKey) continue;
                if (_plans.ContainsKey(n)) throw new Sam3CheckpointException($"{sidecar.Path}: '{n}' is also made from the Hugging Face file");
                _sidecarKeys.Add(n);
                _names.Add(n);
            }
            if (sidecar.Contains(HuggingFaceLayout.ClsRowSidecarKey) && _plans.TryGetValue(HuggingFaceLayout.PosEmbedKey, out var pos))
            {
                var s = sidecar.Info(HuggingFaceLayout.ClsRowSidecarKey).Shape;
                if (!s.SequenceEqual(new[] { pos.Shape[0], 1L, pos.Shape[2] }))
                    throw new Sam3CheckpointException($"{sidecar.Path}: '{HuggingFaceLayout.ClsRowSidecarKey}' is [{string.Join(",", s)}], expected [{pos.Shape[0]}, 1, {pos.Shape[2]}]");
            }
        }
    }

    /// <summary>The HF-layout checkpoint underneath.</summary>
    public ICheckpoint Source => _hf;
    public string Path => _hf.Path;
    public CheckpointFormat Format => _hf.Format;
    /// <summary>Original keys (order: first use in the HF file; sidecar keys last).</summary>
    public IReadOnlyList<string> Names => _names;
    public IReadOnlyDictionary<string, string> Metadata => _hf.Metadata;
    public bool Contains(string name) => _plans.ContainsKey(name) || _sidecarKeys.Contains(name);

    /// <summary>True when the class row of pos_embed comes from the sidecar rather than zeros.</summary>
    public bool HasClsRow => _sidecar?.Contains(HuggingFaceLayout.ClsRowSidecarKey) == true;

    /// <summary>How <paramref name="name"/> is rebuilt (null for a sidecar key).</summary>
    public OriginalTensorPlan? Plan(string name) => _plans.GetValueOrDefault(name);

    public CheckpointTensorInfo Info(string name)
    {
        if (_plans.TryGetValue(name, out var p)) return new CheckpointTensorInfo(name, p.Shape, _hf.Info(p.HfKeys[0]).DType, false);
        if (_sidecarKeys.Contains(name)) return _sidecar!.Info(name);
        throw new Sam3CheckpointException($"{Path}: the Hugging Face layout holds no tensor for '{name}'");
    }

    /// <summary>The original tensor <paramref name="name"/> (a view of the mapped HF data where possible).</summary>
    public Tensor Load(string name)
    {
        if (_sidecarKeys.Contains(name)) return _sidecar!.Load(name);
        if (!_plans.TryGetValue(name, out var p)) throw new Sam3CheckpointException($"{Path}: the Hugging Face layout holds no tensor for '{name}'");
        switch (p.Transform)
        {
            case HfTransform.SplitQkv:
            {
                using var scope = NewDisposeScope();
                return torch.cat(p.HfKeys.Select(_hf.Load).ToList(), 0).MoveToOuterDisposeScope();
            }
            case HfTransform.DropClsRow:
            {
                using var scope = NewDisposeScope();
                var rest = _hf.Load(p.HfKeys[0]);
                var cls = HasClsRow ? _sidecar!.Load(HuggingFaceLayout.ClsRowSidecarKey).to(rest.dtype)
                                    : torch.zeros(rest.shape[0], 1, rest.shape[2], dtype: rest.dtype);
                return torch.cat([cls, rest], 1).MoveToOuterDisposeScope();
            }
            case HfTransform.StackRows:
                return _hf.Load(p.HfKeys[0]).narrow(0, p.Part, 1);
            case HfTransform.Transpose:
                return _hf.Load(p.HfKeys[0]).t();
            default: // Copy, Duplicate (the preferred name)
                return _hf.Load(p.HfKeys[0]);
        }
    }

    /// <summary>
    /// Copies the original tensor <paramref name="name"/> into <paramref name="destination"/> (same shape; dtype and device
    /// converted), writing a re-fused q/k/v tensor third by third so no fused copy is made.
    /// </summary>
    public void CopyInto(string name, Tensor destination)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        if (_plans.TryGetValue(name, out var p) && p.Transform == HfTransform.SplitQkv)
        {
            long offset = 0;
            foreach (var k in p.HfKeys)
            {
                var part = _hf.Load(k);
                destination.narrow(0, offset, part.shape[0]).copy_(part);
                offset += part.shape[0];
            }
            return;
        }
        if (p is { Transform: HfTransform.DropClsRow } && !HasClsRow)
        {
            var rest = _hf.Load(p.HfKeys[0]);
            destination.narrow(1, 0, 1).zero_();
            destination.narrow(1, 1, rest.shape[1]).copy_(rest);
            return;
        }
        destination.copy_(Load(name));
    }

    /// <summary>Pairs of HF names that should hold the same values but do not (the duplicated Fourier matrix).</summary>
    public IReadOnlyList<string> DuplicateDisagreements()
    {
        var notes = new List<string>();
        foreach (var p in _plans.Values.Where(p => p.Transform == HfTransform.Duplicate))
        {
            using var scope = NewDisposeScope();
            var first = _hf.Load(p.HfKeys[0]);
            foreach (var other in p.HfKeys.Skip(1))
                if (_hf.Load(other) is var second && (!second.shape.SequenceEqual(first.shape)
                    || !second.contiguous().bytes.SequenceEqual(first.contiguous().bytes)))
                    notes.Add($"'{p.HfKeys[0]}' and '{other}' differ; '{p.HfKeys[0]}' is used for '{p.OriginalKey}'");
        }
        return notes;
    }

    public void Dispose()
    {
        if (!_ownsSources) return;
        _hf.Dispose();
        _sidecar?.Dispose();
    }
}
