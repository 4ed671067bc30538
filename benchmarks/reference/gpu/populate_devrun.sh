#!/usr/bin/env bash
# Copies what autocast_contract.py needs on the device machine into .devrun/ (ignored by git; carry ".devrun").
# Usage, from the repository root:  benchmarks/reference/gpu/populate_devrun.sh [SAM3_TREE] [SHARED]
#   SAM3_TREE: a checkout of facebookresearch/sam3 at the fixture commit (default $SAM3_SRC; as for run.sh: `fetch`
#              it, then ../shared/pyref/checkout_sam3.sh GIT_DIR)
#   SHARED:    the shared folder with pyref/ and parity/ (default $SAM3_SHARED, else ../shared)
set -euo pipefail
SAM3=${1:-${SAM3_SRC:-}}
SHARED=${2:-${SAM3_SHARED:-../shared}}
if [ -z "$SAM3" ]; then echo "populate_devrun.sh: give the sam3 checkout (argument 1 or SAM3_SRC)" >&2; exit 2; fi
rm -rf .devrun
mkdir -p .devrun/sam3src .devrun/pyref .devrun/parity/tiny .devrun/parity/inputs/video_0001
cp -r "$SAM3/sam3" .devrun/sam3src/                       # the python package only (no assets/, examples/)
find .devrun/sam3src -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$SHARED"/pyref/*.py .devrun/pyref/
cp "$SHARED"/parity/tiny/{model.safetensors,config.json,model_manifest.json} .devrun/parity/tiny/
cp "$SHARED"/parity/tiny/{a_image_text,b_image_batch_text,c_geometric_prompts,d_predict_inst}.json .devrun/parity/tiny/
cp "$SHARED"/parity/tiny/{e_tracker_video,e2_tracker_interactive,f_video_predictor_text}.json .devrun/parity/tiny/
cp "$SHARED"/parity/inputs/video_0001/*.jpg .devrun/parity/inputs/video_0001/   # scenarios e, e2, f
cp "$SHARED"/parity/inputs/{test_image.jpg,groceries.jpg,truck.jpg,bpe_simple_vocab_16e6.txt.gz} .devrun/parity/inputs/
chmod -R u+w .devrun
du -sh .devrun
# the fixtures' final outputs (fp32, official code on torch 1.13 CPU) as one small npz, so the device run also
# compares against the fixtures themselves (its own cpu_fp32 way runs on the device's torch)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
/usr/bin/python3 benchmarks/reference/gpu/autocast_contract.py --sam3-src .devrun/sam3src --pyref .devrun/pyref \
    --parity "$SHARED/parity" --out "$SCRATCH" --scenarios a,b,c,d,e,e2,f --extract-fixtures .devrun/parity/fixture_outputs.npz
du -sh .devrun
