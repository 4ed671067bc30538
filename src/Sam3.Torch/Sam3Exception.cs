namespace Sam3.Torch;

/// <summary>Base of every error this library raises on purpose: bad input, bad files, misuse of the API.</summary>
public class Sam3Exception : Exception
{
    public Sam3Exception(string message) : base(message) { }
    public Sam3Exception(string message, Exception? inner) : base(message, inner) { }
}

/// <summary>An invalid or unreadable configuration.</summary>
public class Sam3ConfigException : Sam3Exception
{
    public Sam3ConfigException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A checkpoint that cannot be read, or whose tensors do not match the model (missing/unexpected/misshaped keys).</summary>
public class Sam3CheckpointException : Sam3Exception
{
    public Sam3CheckpointException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>An image that cannot be decoded or used (corrupt, empty, unsupported format, too large).</summary>
public class Sam3ImageException : Sam3Exception
{
    public Sam3ImageException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A prompt that is invalid (empty text, box outside [0,1], NaN coordinates, bad labels, ...).</summary>
public class Sam3PromptException : Sam3Exception
{
    public Sam3PromptException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>An API call in the wrong state (prompt before image, disposed state, ...).</summary>
public class Sam3StateException : Sam3Exception
{
    public Sam3StateException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A tokenizer vocabulary (BPE merges, vocab.json, merges.txt) that is missing, unreadable or malformed.</summary>
public class Sam3VocabularyException : Sam3Exception
{
    public Sam3VocabularyException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// A checkpoint whose keys do not match the model: every missing, unexpected, wrongly shaped or wrongly typed key
/// is listed (the message caps each list; the properties hold all of them).
/// </summary>
public class Sam3CheckpointMismatchException : Sam3CheckpointException
{
    public Sam3CheckpointMismatchException(string message, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected,
        IReadOnlyList<string> wrongShape, IReadOnlyList<string> wrongDType)
        : base(message)
    {
        MissingKeys = missing;
        UnexpectedKeys = unexpected;
        WrongShapeKeys = wrongShape;
        WrongDTypeKeys = wrongDType;
    }

    /// <summary>Model keys the checkpoint does not provide.</summary>
    public IReadOnlyList<string> MissingKeys { get; }
    /// <summary>Checkpoint keys (after mapping) the model does not have.</summary>
    public IReadOnlyList<string> UnexpectedKeys { get; }
    /// <summary>Keys present on both sides with different shapes.</summary>
    public IReadOnlyList<string> WrongShapeKeys { get; }
    /// <summary>Keys whose dtypes cannot be converted into each other (floating vs integer/bool).</summary>
    public IReadOnlyList<string> WrongDTypeKeys { get; }
}
