#!/usr/bin/env python3
"""Time the OFFICIAL Sam3Processor.set_image + set_text_prompt on one image and one prompt (one process per
measurement, so VmHWM is this configuration's peak), per stage, and dump its detections.

Runs the unmodified official sources on Debian's torch through shared/pyref's shim. Stages are timed by wrapping
the model's own methods on the instance (no source change): ViT = backbone.vision_backbone.trunk.forward,
text = backbone.forward_text (tokenizer included), fusion encoder = _encode_prompt + _run_encoder,
decoder + scoring = _run_decoder, segmentation head = _run_segmentation_heads, preprocess = the processor's
transform; necks = set_image minus preprocess and ViT (both necks + conv_s0/s1), post-processing = set_text_prompt
minus the rest.

Outputs: PREFIX.json (timings, memory), PREFIX.scores.npy, PREFIX.boxes.npy, PREFIX.masks.npy (np.packbits of the
bool masks [K,H,W]) and PREFIX.masks.shape.
"""

import argparse
import json
import os
import sys
import time


def vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class Clock:
    def __init__(self):
        self.stages = {}

    def add(self, name, wall, cpu):
        s = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0})
        s["wall_s"] += wall
        s["cpu_s"] += cpu
        s["calls"] += 1

    def wrap(self, name, fn):
        def timed(*a, **k):
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(name, time.perf_counter() - t0, time.process_time() - c0)
        return timed

    def get(self, name):
        return self.stages.get(name, {"wall_s": 0.0, "cpu_s": 0.0})


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam3-src", default=os.environ.get("SAM3_SRC"), required=os.environ.get("SAM3_SRC") is None)
    ap.add_argument("--shared", default=os.environ.get("SAM3_SHARED") or os.path.normpath(os.path.join(here, "..", "..", "..", "shared")))
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", required=True, help="output prefix")
    args = ap.parse_args()

    sys.path.insert(0, os.path.join(args.shared, "pyref"))
    import sam3_shim
    sam3_shim.install(args.sam3_src)
    import numpy as np
    import torch
    from PIL import Image
    from sam3.model_builder import build_sam3_image_model
    from sam3.model.sam3_image_processor import Sam3Processor

    torch.set_num_threads(args.threads)
    report = {"side": "official", "threads": torch.get_num_threads(), "image": os.path.basename(args.image),
              "prompt": args.prompt, "threshold": args.threshold, "torch": torch.__version__,
              "torch_config": torch.__config__.parallel_info().splitlines()[:6],
              "rss_start_bytes": vm("VmRSS")}
    bpe = os.path.join(args.shared, "parity", "inputs", "bpe_simple_vocab_16e6.txt.gz")
    t0 = time.perf_counter()
    model = build_sam3_image_model(bpe_path=bpe, device="cpu", checkpoint_path=args.checkpoint, load_from_HF=False,
                                   enable_inst_interactivity=True)
    report["load"] = {"wall_s": time.perf_counter() - t0}
    report["rss_after_load_bytes"] = vm("VmRSS")
    report["parameters"] = sum(p.numel() for p in model.parameters())
    processor = Sam3Processor(model, device="cpu", confidence_threshold=args.threshold)

    clock = Clock()
    processor.transform = clock.wrap("preprocess", processor.transform)
    trunk = model.backbone.vision_backbone.trunk
    trunk.forward = clock.wrap("vit", trunk.forward)
    model.backbone.forward_text = clock.wrap("text", model.backbone.forward_text)
    model._encode_prompt = clock.wrap("fusion_encoder", model._encode_prompt)
    model._run_encoder = clock.wrap("fusion_encoder", model._run_encoder)
    model._run_decoder = clock.wrap("decoder_scoring", model._run_decoder)
    model._run_segmentation_heads = clock.wrap("segmentation_head", model._run_segmentation_heads)
    raw = {}
    forward_grounding = model.forward_grounding

    def keep_raw(*a, **k):
        out = forward_grounding(*a, **k)
        raw["probs"] = (out["pred_logits"].sigmoid() * out["presence_logit_dec"].sigmoid().unsqueeze(1)).squeeze(-1)[0]
        raw["boxes"] = out["pred_boxes"][0]
        return out
    model.forward_grounding = keep_raw
    set_image = clock.wrap("set_image", processor.set_image)
    set_text_prompt = clock.wrap("set_text_prompt", processor.set_text_prompt)

    image = Image.open(args.image).convert("RGB")
    report["image_size"] = f"{image.width}x{image.height}"
    state = set_image(image)
    state = set_text_prompt(args.prompt, state)
    report["vmhwm_bytes"] = vm("VmHWM")

    g = clock.get
    stages = {k: dict(v) for k, v in clock.stages.items() if k not in ("set_image", "set_text_prompt")}
    for key, total, parts in (("necks", "set_image", ("preprocess", "vit")),
                              ("postprocess", "set_text_prompt", ("text", "fusion_encoder", "decoder_scoring", "segmentation_head"))):
        stages[key] = {m: g(total)[m] - sum(g(p)[m] for p in parts) for m in ("wall_s", "cpu_s")}
    report["api"] = {"set_image": g("set_image"), "set_text_prompt": g("set_text_prompt")}
    report["stages"] = stages

    scores = state["scores"].float().numpy()
    boxes = state["boxes"].float().numpy()
    masks = state["masks"].squeeze(1).numpy().astype(bool)
    report["detections"] = int(scores.shape[0])
    np.save(args.out + ".all_scores.npy", raw["probs"].float().numpy().astype(np.float32))
    np.save(args.out + ".all_boxes.npy", raw["boxes"].float().numpy().astype(np.float32).reshape(-1, 4))
    np.save(args.out + ".scores.npy", scores.astype(np.float32))
    np.save(args.out + ".boxes.npy", boxes.astype(np.float32).reshape(-1, 4))
    np.save(args.out + ".masks.npy", np.packbits(masks.reshape(-1)))
    k, h, w = (masks.shape if masks.ndim == 3 else (0, image.height, image.width))
    with open(args.out + ".masks.shape", "w") as f:
        f.write(f"{k} {h} {w}")
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=2)
    print(f"official {report['image']} '{args.prompt}': set_image {g('set_image')['wall_s']:.1f} s, "
          f"set_text_prompt {g('set_text_prompt')['wall_s']:.1f} s, {report['detections']} detections, "
          f"VmHWM {report['vmhwm_bytes'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
