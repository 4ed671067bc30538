using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Loading without a second copy of the weights: the model is built on the <c>meta</c> device (shapes only, no memory,
/// no random initialisation that the checkpoint would overwrite), then every checkpoint tensor — a view of the
/// memory-mapped file (<see cref="ICheckpoint.Load"/>) — becomes the module's parameter or buffer itself
/// (<see cref="Adopt"/>). The weights then live in the file's page cache, mapped privately (copy-on-write: in-place
/// updates such as fine-tuning copy the touched pages and never write the file); pages that no forward reads (e.g. the
/// tracker heads in an image-only session) are never resident. LibTorch keeps the mapping alive while a parameter
/// references it, so the checkpoint object can be disposed right after loading. The file must not be truncated or
/// rewritten in place while the model lives (our own writers write a temporary file and rename it).
/// </summary>
internal static class ParameterAdoption
{
    private static readonly object BuildLock = new();

    private static readonly MethodInfo RegisterParameter =
        typeof(nn.Module).GetMethod("ConditionallyRegisterParameter", BindingFlags.Instance | BindingFlags.NonPublic, null,
            [typeof(string), typeof(Parameter)], null)
        ?? throw new MissingMethodException("TorchSharp's Module.ConditionallyRegisterParameter(string, Parameter) not found");

    private static readonly MethodInfo RegisterBuffer =
        typeof(nn.Module).GetMethod("ConditionallyRegisterBuffer", BindingFlags.Instance | BindingFlags.NonPublic, null,
            [typeof(string), typeof(Tensor), typeof(bool)], null)
        ?? throw new MissingMethodException("TorchSharp's Module.ConditionallyRegisterBuffer(string, Tensor, bool) not found");

    /// <summary>
    /// Runs <paramref name="build"/> with LibTorch's default device set to <c>meta</c> (restored afterwards). The default
    /// device is process-wide in TorchSharp: builds are serialised, and tensors another thread creates without an explicit
    /// device during the build would land on <c>meta</c> too (the build takes well under a second).
    /// </summary>
    public static T BuildOnMeta<T>(Func<T> build)
    {
        lock (BuildLock)
        {
            var previous = torch.get_default_device();
            torch.set_default_device(torch.META);
            try
            {
                return build();
            }
            finally
            {
                torch.set_default_device(previous);
            }
        }
    }

    /// <summary>True when some parameter or buffer of <paramref name="module"/> is on the <c>meta</c> device (nothing to copy into).</summary>
    public static bool HasMetaTensors(nn.Module module) =>
        module.parameters().Any(p => p.device_type == DeviceType.META) || module.buffers().Any(b => b.device_type == DeviceType.META);

    /// <summary>
    /// Makes each tensor of <paramref name="tensors"/> (model key → CPU tensor) the parameter or persistent buffer of that
    /// name, in place of the module's (meta) tensor: no copy when the tensor already has the module tensor's dtype and is
    /// contiguous (a memory-mapped view stays one), else a converted contiguous copy. Ownership of each tensor passes to
    /// the module (the given <see cref="Tensor"/> object is emptied when it becomes a <see cref="Parameter"/>). The
    /// replaced tensors are disposed. Shapes must already have been checked (<see cref="StrictLoader.Load"/>).
    /// </summary>
    public static void Adopt(nn.Module root, IEnumerable<KeyValuePair<string, Tensor>> tensors)
    {
        var modules = new Dictionary<string, nn.Module>(StringComparer.Ordinal) { [""] = root };
        foreach (var (name, m) in root.named_modules()) modules[name] = m;
        foreach (var (key, source) in tensors)
        {
            int dot = key.LastIndexOf('.');
            string owner = dot < 0 ? "" : key[..dot], leaf = key[(dot + 1)..];
            if (!modules.TryGetValue(owner, out var module))
                throw new Sam3CheckpointException($"cannot load '{key}': the model has no submodule '{owner}'");
            AdoptOne(module, key, leaf, source);
        }
    }

    private static void AdoptOne(nn.Module module, string key, string leaf, Tensor source)
    {
        Parameter? oldParam = module.named_parameters(recurse: false).Where(p => p.name == leaf).Select(p => p.parameter).FirstOrDefault();
        Tensor? oldBuffer = oldParam is null
            ? module.named_buffers(recurse: false).Where(b => b.name == leaf).Select(b => b.buffer).FirstOrDefault()
            : null;
        Tensor old = (Tensor?)oldParam ?? oldBuffer ?? throw new Sam3CheckpointException($"cannot load '{key}': '{leaf}' is neither a parameter nor a buffer of its module");
        if (!source.shape.SequenceEqual(old.shape))
            throw new Sam3CheckpointException($"cannot load '{key}': shape [{string.Join(",", source.shape)}] differs from the model's [{string.Join(",", old.shape)}]");

        Tensor data;
        using (NewDisposeScope())
        {
            var t = source.detach();
            if (t.dtype != old.dtype) t = t.to(old.dtype);
            if (!t.is_contiguous()) t = t.contiguous();
            data = t.MoveToOuterDisposeScope();
        }
        data.DetachFromDisposeScope();

        Tensor replacement;
        if (oldParam is not null)
        {
            var p = new Parameter(data, oldParam.requires_grad);
            p.DetachFromDisposeScope();
            replacement = p;
        }
        else
        {
            replacement = data;
        }

        var type = module.GetType();
        var property = type.GetProperty(leaf, BindingFlags.Instance | BindingFlags.Public);
        if (property is { CanWrite: true } && property.PropertyType.IsInstanceOfType(replacement) && property.GetIndexParameters().Length == 0)
        {
            property.SetValue(module, replacement);
        }
        // The registration is what state_dict / parameters() see; the setter above usually did it already.
        if (oldParam is not null) RegisterParameter.Invoke(module, [leaf, (Parameter)replacement]);
        else RegisterBuffer.Invoke(module, [leaf, replacement, true]);
        // Every field that held the old tensor (the module's own reference used by forward) now holds the new one.
        foreach (var field in Fields(type))
        {
            if (!field.FieldType.IsInstanceOfType(replacement)) continue;
            if (ReferenceEquals(field.GetValue(module), old)) field.SetValue(module, replacement);
        }
        if (!old.IsInvalid) old.Dispose();
    }

    /// <summary>
    /// Names of every tensor still on <c>meta</c> (or disposed) after loading: registered parameters and buffers and
    /// tensor-valued fields of every module (a field the adoption missed would fail at the first forward; this names it).
    /// </summary>
    public static IReadOnlyList<string> Unmaterialized(nn.Module root)
    {
        var problems = new List<string>();
        var modules = new List<(string, nn.Module)> { ("", root) };
        modules.AddRange(root.named_modules());
        foreach (var (name, m) in modules)
        {
            string prefix = name.Length == 0 ? "" : name + ".";
            foreach (var (n, p) in m.named_parameters(recurse: false))
                if (p.IsInvalid || p.device_type == DeviceType.META) problems.Add(prefix + n);
            foreach (var (n, b) in m.named_buffers(recurse: false))
                if (b.IsInvalid || b.device_type == DeviceType.META) problems.Add(prefix + n);
            foreach (var field in Fields(m.GetType()))
            {
                if (!typeof(Tensor).IsAssignableFrom(field.FieldType)) continue;
                if (field.GetValue(m) is Tensor t && (t.IsInvalid || t.device_type == DeviceType.META))
                    problems.Add($"{prefix}{field.Name} (field of {m.GetType().Name})");
            }
        }
        return problems.Distinct().ToList();
    }

    private static IEnumerable<FieldInfo> Fields(Type type)
    {
        for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
            foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                yield return f;
    }
}
