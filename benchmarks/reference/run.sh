#!/usr/bin/env bash
# Side-by-side performance harness: the official SAM3 (PyTorch, Debian's python3-torch, through ../shared/pyref's
# shim) against this port (LibTorch via TorchSharp) on the same full-size random-weight checkpoint, images, prompts
# and thread count. See benchmarks/README.md ("Side-by-side with the official code").
#
#   benchmarks/reference/run.sh [--sam3-src DIR] [--threads N] [--images "a.jpg:noun b.jpg:noun" | --all]
#                               [--cache DIR] [--checkpoint PT] [--out DIR] [--lock FILE] [--no-build] [--api-only] [--threshold T] [--linearity 1,5,20,50,200]
#
# SAM3_SRC: a work tree of github.com/facebookresearch/sam3 (the fixtures' commit). Get one with the fetch tool
# (`fetch github:facebookresearch/sam3` prints a git dir) and `../shared/pyref/checkout_sam3.sh GIT_DIR [DEST]`,
# or `git clone https://github.com/facebookresearch/sam3`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED=${SAM3_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
SAM3_SRC=${SAM3_SRC:-}
THREADS=""
IMAGES="truck.jpg:truck groceries.jpg:bottle"
ALL_IMAGES="truck.jpg:truck groceries.jpg:bottle test_image.jpg:person"
CACHE=${SAM3_REF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sam3-reference}
CHECKPOINT=""
OUT=""
LOCK=${SAM3_HEAVY_LOCK:-}
BUILD=1
API_ONLY=false
THRESHOLD=0.5
LINEARITY=""
PY=/usr/bin/python3

while [ $# -gt 0 ]; do
  case "$1" in
    --sam3-src) SAM3_SRC=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --all) IMAGES=$ALL_IMAGES; shift ;;
    --cache) CACHE=$2; shift 2 ;;
    --checkpoint) CHECKPOINT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --lock) LOCK=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --api-only) API_ONLY=true; shift ;;
    --linearity) LINEARITY=$2; shift 2 ;;   # ours: also time set_text_prompt at about K = 1,5,20,... detections after one set_image
    --threshold) THRESHOLD=$2; shift 2 ;;   # score threshold of both sides (random weights score ~0.19: 0.15 keeps all 200)   # ours: skip the staged (per-stage) second pass
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done

say() { echo "[reference] $*"; }
heavy() { if [ -n "$LOCK" ]; then flock "$LOCK" "$@"; else "$@"; fi; }

# ---- (a) packages of the official side
PKGS="python3-torch python3-torchvision python3-numpy python3-pil python3-regex python3-tqdm python3-pkg-resources \
python3-scipy python3-psutil python3-typing-extensions python3-skimage libopenblas0-pthread"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing missing Debian packages:$missing (apt-get install -y)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "run.sh: missing Debian packages:$missing; run: sudo apt-get install -y$missing" >&2; exit 1
  fi
else
  say "Debian packages present: $PKGS"
fi
if [ -z "$SAM3_SRC" ] || [ ! -f "$SAM3_SRC/sam3/model_builder.py" ]; then
  echo "run.sh: --sam3-src (or SAM3_SRC) must be a work tree of github.com/facebookresearch/sam3" >&2
  echo "        (fetch github:facebookresearch/sam3, then $SHARED/pyref/checkout_sam3.sh GIT_DIR; or git clone)" >&2
  exit 1
fi
[ -f "$SHARED/pyref/sam3_shim.py" ] || { echo "run.sh: no $SHARED/pyref/sam3_shim.py (set SAM3_SHARED)" >&2; exit 1; }
INPUTS=$SHARED/parity/inputs
BPE=$INPUTS/bpe_simple_vocab_16e6.txt.gz
[ -n "$THREADS" ] || THREADS=$(lscpu -p=CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)
[ "$THREADS" -gt 0 ] 2>/dev/null || THREADS=$(nproc)
[ -n "$OUT" ] || OUT=${TMPDIR:-/tmp}/sam3-reference-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
say "output folder $OUT, $THREADS threads"

# ---- the port's program
BENCH_DLL=$ROOT/benchmarks/Sam3.Torch.Benchmarks/bin/Release/net10.0/linux-x64/Sam3.Torch.Benchmarks.dll
if [ "$BUILD" = 1 ] || [ ! -f "$BENCH_DLL" ]; then
  say "building benchmarks/Sam3.Torch.Benchmarks (Release)"
  dotnet build "$ROOT/benchmarks/Sam3.Torch.Benchmarks" -c Release -nologo -v q >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
[ -f "$BENCH_DLL" ] || BENCH_DLL=$(find "$ROOT/benchmarks/Sam3.Torch.Benchmarks/bin/Release" -name Sam3.Torch.Benchmarks.dll | head -1)
ours() { dotnet "$BENCH_DLL" reference "$@"; }

# ---- the full-size random checkpoint (official builder, seeded)
if [ -z "$CHECKPOINT" ]; then CHECKPOINT=$CACHE/sam3.pt; fi
if [ ! -f "$CHECKPOINT" ]; then
  say "making the full-size random-weight checkpoint $CHECKPOINT (official build_sam3_video_model, seed 0)"
  heavy $PY "$HERE/make_checkpoint.py" --sam3-src "$SAM3_SRC" --shared "$SHARED" --out "$CHECKPOINT"
fi

# ---- machine description
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512.*|amx.*|fma)$' | sort -u | tr '\n' ' ' | sed 's/ $//')
UPTIME_BEFORE=$(uptime)
say "CPU: $CPU_MODEL; flags: ${FLAGS:-none}; $(nproc) logical cores"
say "uptime before: $UPTIME_BEFORE"
env_json() {
  $PY - "$OUT/env.json" "$@" <<'PYEOF'
import json, os, sys
path = sys.argv[1]
env = json.load(open(path)) if os.path.exists(path) else {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    env[k] = json.loads(v) if k in ("images", "threads", "cores") else v
json.dump(env, open(path, "w"), indent=2)
PYEOF
}
IMAGES_JSON=$($PY -c 'import json,sys; print(json.dumps([i.split(":",1) for i in sys.argv[1].split()]))' "$IMAGES")
env_json "date=$(date -u '+%Y-%m-%d %H:%M UTC')" "cpu_model=$CPU_MODEL" "flags=$FLAGS" "cores=$(nproc)" "threads=$THREADS" \
  "uptime_before=$UPTIME_BEFORE" "images=$IMAGES_JSON" "checkpoint=$CHECKPOINT" \
  "official_torch=Debian torch $($PY -c 'import torch; print(torch.__version__)')" "ours_torch=LibTorch via TorchSharp (see ours.*.json)"

# ---- (e) FLOPs per stage and the GEMM rate
ours flops --out "$OUT/flops.json"
ours gemm --threads "$THREADS" --out "$OUT/gemm.json"

# ---- (b), (c) one fresh process per side and image
for spec in $IMAGES; do
  img=${spec%%:*}; noun=${spec#*:}; name=${img%.*}
  [ -f "$INPUTS/$img" ] || { echo "run.sh: no $INPUTS/$img" >&2; exit 1; }
  say "official: $img \"$noun\" ($(uptime | sed 's/.*load/load/'))"
  heavy $PY "$HERE/official.py" --sam3-src "$SAM3_SRC" --shared "$SHARED" --checkpoint "$CHECKPOINT" \
    --image "$INPUTS/$img" --prompt "$noun" --threads "$THREADS" --threshold "$THRESHOLD" --out "$OUT/official.$name" 2>"$OUT/official.$name.log" \
    || { tail -20 "$OUT/official.$name.log"; exit 1; }
  say "ours: $img \"$noun\" ($(uptime | sed 's/.*load/load/'))"
  heavy dotnet "$BENCH_DLL" reference ours --checkpoint "$CHECKPOINT" --tokenizer "$BPE" --image "$INPUTS/$img" --prompt "$noun" \
    --threads "$THREADS" --threshold "$THRESHOLD" --api-only "$API_ONLY" ${LINEARITY:+--linearity "$LINEARITY"} --out "$OUT/ours.$name" 2>"$OUT/ours.$name.log" || { tail -20 "$OUT/ours.$name.log"; exit 1; }
done

UPTIME_AFTER=$(uptime)
say "uptime after: $UPTIME_AFTER"
env_json "uptime_after=$UPTIME_AFTER"

# ---- (d), (f) agreement and the table
$PY "$HERE/report.py" "$OUT"
say "written: $OUT/results.md, $OUT/results.json"
