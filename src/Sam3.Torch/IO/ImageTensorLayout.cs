namespace Sam3.Torch.IO;

/// <summary>Memory layout of an image tensor.</summary>
internal enum ImageTensorLayout
{
    /// <summary>[3, H, W] (channels first, what <c>torchvision.transforms.v2.functional.to_image</c> gives).</summary>
    Chw,
    /// <summary>[H, W, 3] (channels last, the layout of a decoded PIL/numpy image).</summary>
    Hwc,
}
