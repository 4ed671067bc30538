#!/usr/bin/env python3
"""Build the official full-size SAM3 video model with random (seeded) weights and save it in the released
checkpoint layout ({"model": state_dict} with detector.* / tracker.* keys).

Runs the unmodified official sources (a sam3 work tree, --sam3-src) on Debian's torch 1.13 through
shared/pyref's compatibility shim. The file is written to a temporary name next to --out, then renamed, so
readers never see a partial checkpoint.

Usage: /usr/bin/python3 make_checkpoint.py --sam3-src DIR --out CACHE/sam3.pt [--shared DIR] [--seed 0]
Wrap it in `flock LOCKFILE` on shared machines (peak memory ~7 GB).
"""

import argparse
import os
import sys
import time


def default_shared():
    here = os.path.dirname(os.path.abspath(__file__))
    env = os.environ.get("SAM3_SHARED")
    if env:
        return env
    # benchmarks/reference -> repo root -> ../shared
    return os.path.normpath(os.path.join(here, "..", "..", "..", "shared"))


# Parameters the official builder allocates with torch.empty and never initialises (the released checkpoint
# overwrites them): left alone they hold whatever memory held, often NaN/inf, which made every score NaN (and the
# checkpoint not reproducible). They get open_clip's TextTransformer.init_parameters values, seeded.
UNINITIALISED = {
    "positional_embedding": lambda p: 0.01,                    # nn.init.normal_(std=0.01)
    "text_projection": lambda p: p.shape[0] ** -0.5,           # nn.init.normal_(std=width ** -0.5)
}


def initialise_uninitialised(model, seed):
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if ".language_backbone." in f".{name}" and leaf in UNINITIALISED:
            std = UNINITIALISED[leaf](p)
            finite = bool(torch.isfinite(p).all())
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)
            print(f"make_checkpoint: initialised {name} {tuple(p.shape)} ~ N(0, {std:.4g}) "
                  f"(torch.empty upstream; was {'finite' if finite else 'NON-FINITE'} garbage)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam3-src", default=os.environ.get("SAM3_SRC"), help="work tree of facebookresearch/sam3")
    ap.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    ap.add_argument("--shared", default=default_shared(), help="the shared folder (holds pyref/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if --out exists")
    args = ap.parse_args()
    if not args.sam3_src or not os.path.isdir(os.path.join(args.sam3_src, "sam3")):
        sys.exit("make_checkpoint: --sam3-src (or SAM3_SRC) must be a work tree of facebookresearch/sam3 "
                 "(fetch github:facebookresearch/sam3, then shared/pyref/checkout_sam3.sh GIT_DIR)")
    if os.path.exists(args.out) and not args.force:
        print(f"make_checkpoint: {args.out} exists; nothing to do (--force rebuilds)")
        return

    pyref = os.path.join(args.shared, "pyref")
    if not os.path.isfile(os.path.join(pyref, "sam3_shim.py")):
        sys.exit(f"make_checkpoint: no sam3_shim.py under {pyref} (pass --shared)")
    sys.path.insert(0, pyref)
    import sam3_shim
    sam3_shim.install(args.sam3_src)

    import torch
    from sam3.model_builder import build_sam3_video_model

    bpe = os.path.join(args.sam3_src, "sam3", "assets", "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(bpe):
        bpe = os.path.join(args.shared, "parity", "inputs", "bpe_simple_vocab_16e6.txt.gz")

    torch.manual_seed(args.seed)
    t0 = time.time()
    model = build_sam3_video_model(load_from_HF=False, checkpoint_path=None, device="cpu", bpe_path=bpe)
    initialise_uninitialised(model, args.seed)
    sd = model.state_dict()
    bad = [k for k, v in sd.items() if v.is_floating_point() or v.is_complex()
           if not bool(torch.isfinite(torch.view_as_real(v) if v.is_complex() else v).all())]
    if bad:
        sys.exit(f"make_checkpoint: non-finite values in {bad}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"make_checkpoint: built official video model in {time.time() - t0:.1f}s, "
          f"{len(sd)} state_dict entries, {n_params / 1e6:.1f}M parameters")
    prefixes = sorted({k.split(".", 1)[0] for k in sd})
    print(f"make_checkpoint: top-level prefixes {prefixes}")

    out_dir = os.path.dirname(os.path.abspath(args.out)) or "."
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{os.path.basename(args.out)}.tmp{os.getpid()}")
    t0 = time.time()
    try:
        torch.save({"model": sd}, tmp)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"make_checkpoint: wrote {args.out} ({os.path.getsize(args.out) / 2**30:.2f} GiB) "
          f"in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
