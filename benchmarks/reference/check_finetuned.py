#!/usr/bin/python3
"""Checks that a checkpoint written by `sam3 finetune` (OUT/model.safetensors, released layout: detector.* + tracker.*)
loads in the official SAM3 code: the image model and the video model are built with the official classes (through the
pyref shim and its config-driven builder, which reproduces model_builder's modules), the checkpoint is loaded with
load_state_dict(strict=True) into both (the image model after model_builder._load_checkpoint's key mapping), and the
image model runs one Sam3Processor set_image + set_text_prompt. Exit code 0 = every step passed.

usage: /usr/bin/python3 benchmarks/reference/check_finetuned.py --checkpoint OUT/model.safetensors
           [--config tiny|full] [--sam3-src DIR] [--pyref DIR] [--image JPG] [--text "red box"]

--sam3-src: a work tree of github facebookresearch/sam3 (default $SAM3_SRC); --pyref: shared/pyref (default: the
../shared/pyref next to the repository). Runs on Debian's CPU torch 1.13 (see shared/pyref/README.md). The full-size
model needs about 10 GB of memory.
"""
import argparse
import os
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--config", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--sam3-src", default=os.environ.get("SAM3_SRC"))
    ap.add_argument("--pyref", default=os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "pyref")))
    ap.add_argument("--image", default=None, help="default: the shared test_image.jpg")
    ap.add_argument("--text", default="red box")
    args = ap.parse_args()
    if not args.sam3_src or not os.path.isdir(args.sam3_src):
        sys.exit("--sam3-src (or SAM3_SRC) must name a work tree of facebookresearch/sam3")
    sys.path.insert(0, os.path.abspath(args.pyref))
    import sam3_shim

    sam3_shim.install(os.path.abspath(args.sam3_src))
    import torch
    import sam3_config
    from common import load_safetensors
    from PIL import Image

    sd, meta = load_safetensors(args.checkpoint)
    state = OrderedDict()
    for k, v in sd.items():
        # RoPE tables are stored as float pairs (complex64 has no safetensors dtype)
        if meta.get(k) == "complex64_as_real" or (k.endswith("freqs_cis") and not v.is_complex() and v.shape[-1] == 2):
            v = torch.view_as_complex(v.contiguous())
        state[k] = v
    prefixes = sorted({k.split(".")[0] for k in state})
    print(f"{args.checkpoint}: {len(state)} tensors, prefixes {prefixes}")

    cfg = sam3_config.tiny_config() if args.config == "tiny" else sam3_config.full_config()
    bpe = os.path.join(args.sam3_src, "sam3/assets/bpe_simple_vocab_16e6.txt.gz")
    torch.manual_seed(0)

    video = sam3_config.build_video_model(cfg, bpe)
    video.load_state_dict(state, strict=True)
    print(f"video model: load_state_dict(strict=True) ok ({sum(p.numel() for p in video.parameters()):,} parameters)")
    del video

    image = sam3_config.build_image_model(cfg, bpe, enable_inst_interactivity=True)
    # model_builder._load_checkpoint's mapping (detector.* → image model, tracker.* → inst_interactive_predictor.model.*)
    mapped = {k[len("detector."):]: v for k, v in state.items() if k.startswith("detector.")}
    mapped.update({"inst_interactive_predictor.model." + k[len("tracker."):]: v for k, v in state.items() if k.startswith("tracker.")})
    image.load_state_dict(mapped, strict=True)
    image.eval()
    print(f"image model: load_state_dict(strict=True) ok ({sum(p.numel() for p in image.parameters()):,} parameters)")

    from sam3.model.sam3_image_processor import Sam3Processor

    img_path = args.image or os.path.join(os.path.dirname(os.path.abspath(args.pyref)), "parity", "inputs", "test_image.jpg")
    proc = Sam3Processor(image, resolution=cfg["image_size"], device="cpu", confidence_threshold=0.0)
    with torch.no_grad():
        st = proc.set_image(Image.open(img_path).convert("RGB"))
        st = proc.set_text_prompt(args.text, st)
    scores = st["scores"]
    finite = bool(torch.isfinite(scores).all()) and bool(torch.isfinite(st["boxes"]).all())
    print(f"forward: set_image + set_text_prompt('{args.text}') on {os.path.basename(img_path)}: "
          f"{scores.numel()} detections, boxes {tuple(st['boxes'].shape)}, masks {tuple(st['masks'].shape)}, "
          f"max score {float(scores.max()) if scores.numel() else float('nan'):.4f}, finite {finite}")
    if not finite:
        sys.exit("non-finite outputs")
    print("OK: the checkpoint loads strictly in the official image and video models and runs")


if __name__ == "__main__":
    main()
