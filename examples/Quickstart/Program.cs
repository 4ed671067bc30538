using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Visualization;

// Quickstart MODEL_DIR IMAGE "text prompt" OVERLAY.png [THRESHOLD]
using var model = Sam3Model.Load(args[0]);                  // finds the checkpoint, config.json and tokenizer
double threshold = args.Length > 4 ? double.Parse(args[4], CultureInfo.InvariantCulture) : 0.5;
using var predictor = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold });
var image = ImageLoader.Load(args[1]);
using var state = predictor.SetImage(image);                // the image encoder runs once per image
ImageDetections detections = predictor.SetTextPrompt(state, args[2])[0];
foreach (Detection d in detections)
    Console.WriteLine($"{d.Score.ToString("F2", CultureInfo.InvariantCulture)} {d.Box} {d.Mask.Area()} px");
Plot.Results(image, detections).Save(args[3], overwrite: true);
Console.WriteLine($"{detections.Count} x '{args[2]}' -> {args[3]}");
