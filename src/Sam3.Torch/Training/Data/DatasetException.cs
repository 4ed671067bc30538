namespace Sam3.Torch.Training.Data;

/// <summary>
/// A training or evaluation data set that cannot be used: an unreadable or malformed annotation file, an annotation
/// that names an unknown image or category, a box outside its image, a bad segmentation, a missing image file. The
/// message names the file and, where there is one, the annotation (<see cref="AnnotationId"/>).
/// </summary>
internal sealed class Sam3DatasetException : Sam3Exception
{
    public Sam3DatasetException(string file, string message, long? annotationId = null, Exception? inner = null)
        : base(annotationId is { } id ? $"{file}: annotation {id}: {message}" : $"{file}: {message}", inner)
    {
        File = file;
        AnnotationId = annotationId;
    }

    /// <summary>The annotation file or image the problem is in.</summary>
    public string File { get; }

    /// <summary>The COCO id of the offending annotation, when the problem is one annotation.</summary>
    public long? AnnotationId { get; }
}
