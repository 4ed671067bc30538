#!/usr/bin/env python3
"""The bf16 contract, measured on the OFFICIAL code: upstream's own CUDA bf16 autocast against its fp32.

Runs the tiny-model scenarios a, b, c, d of shared/parity (the same inputs, prompts and thresholds as
shared/pyref/gen_scenarios.py, thresholds read from the fixture JSONs) several ways, each in a fresh
subprocess ("worker"):

  cpu_fp32           fp32 on the CPU, CUDA hidden (= how the fixtures were made; reproduces them)
  cuda_fp32          fp32 on CUDA, TF32 OFF for matmul and cuDNN
  cuda_fp32_tf32     fp32 on CUDA with TF32 ON (what importing sam3.model_builder sets on Ampere+)
  cuda_bf16          torch.autocast("cuda", dtype=torch.bfloat16).__enter__() + inference_mode, TF32 ON,
                     exactly as upstream's notebooks enter it
  cuda_bf16_gpuprep  as cuda_bf16, but the image resize runs on the GPU as Sam3Processor does it on CUDA
                     (the other CUDA ways resize on the CPU so every way sees the fixtures' input image)
  cpu_bf16           torch.autocast("cpu", dtype=torch.bfloat16) (NOT upstream's semantics: CPU autocast has
                     other op lists, and decoder.py's `autocast(device_type="cuda", enabled=False)` island
                     does not switch CPU autocast off; an indication only)

Then it computes the task-level contract (issue 15 item 4: same kept detections, mask IoU mean/min, box max
|d| px, score max |d|; scenario d: mask IoU and predicted-IoU max |d|) for every way against cpu_fp32 and the
bf16 CUDA ways against cuda_fp32, prints a table, writes results.json, the final outputs of every way
(<out>/outputs/<way>.npz) and scenario a's module-boundary tensors (<out>/intermediates/a_<way>.safetensors,
float32, recorded with pyref's hooks) for a module-by-module comparison.

    python3 benchmarks/reference/gpu/autocast_contract.py --sam3-src SAM3_TREE --pyref shared/pyref \
        --parity shared/parity --out OUTDIR [--no-cuda] [--check-fixtures] [--ways a,b] [--scenarios a,b,c,d]

--sam3-src is the directory holding the `sam3` package. --parity must hold tiny/{model.safetensors,
config.json, the scenario .json files} and inputs/{test_image.jpg, groceries.jpg, bpe_simple_vocab_16e6.txt.gz};
the scenario .safetensors are read only by --check-fixtures. See README.md next to this file.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

ALL_WAYS = ["cpu_fp32", "cuda_fp32", "cuda_fp32_tf32", "cuda_bf16", "cuda_bf16_gpuprep", "cpu_bf16"]
CPU_WAYS = {"cpu_fp32", "cpu_bf16"}
FIXTURES = {"a": "a_image_text", "b": "b_image_batch_text", "c": "c_geometric_prompts", "d": "d_predict_inst"}
# the contract (issue 15 item 4)
CONTRACT = {"mean_iou": 0.99, "min_iou": 0.95, "box_px": 2.0, "score": 0.025}


# ======================================================================================================
# worker: one way, one process
# ======================================================================================================
def _pre_import_real_packages():
    """On the device the real triton/einops/timm exist; import them before the shim so its import-only
    stubs (sys.modules.setdefault) do not shadow them: upstream's CUDA hole filling (connected components)
    runs a triton kernel."""
    got = {}
    for name in ("triton", "einops", "timm"):
        try:
            __import__(name)
            got[name] = "real"
        except Exception as e:  # noqa: BLE001 - any import failure means: let the shim stub it
            got[name] = f"stub ({type(e).__name__})"
    return got


def _ensure_modules():
    """Python 3.12 environments may lack modules that sam3 imports at module level on our paths
    (model_builder: `pkg_resources`; sam3_video_predictor: `psutil`; tracker: `tqdm`). Stub only what fails
    to import; none is used on the image paths run here (bpe path is passed explicitly)."""
    import types

    stubs = []
    try:
        import pkg_resources  # noqa: F401
    except Exception:  # noqa: BLE001
        m = types.ModuleType("pkg_resources")

        def resource_filename(pkg, name):
            import importlib

            return os.path.join(os.path.dirname(importlib.import_module(pkg).__file__), name)

        m.resource_filename = resource_filename
        sys.modules["pkg_resources"] = m
        stubs.append("pkg_resources (resource_filename only)")
    try:
        import psutil  # noqa: F401
    except Exception:  # noqa: BLE001
        m = types.ModuleType("psutil")
        m.pid_exists = lambda pid: True
        sys.modules["psutil"] = m
        stubs.append("psutil (pid_exists only)")
    try:
        import tqdm.auto  # noqa: F401
    except Exception:  # noqa: BLE001
        m, auto = types.ModuleType("tqdm"), types.ModuleType("tqdm.auto")
        m.tqdm = auto.tqdm = lambda it=None, *a, **k: it
        m.auto = auto
        sys.modules["tqdm"], sys.modules["tqdm.auto"] = m, auto
        stubs.append("tqdm (identity)")
    return stubs


def _fixture_params(parity, key):
    with open(os.path.join(parity, "tiny", FIXTURES[key] + ".json")) as f:
        return json.load(f)["parameters"]


def _to_np(t):
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bool:
        return t.numpy()
    if t.is_floating_point():
        return t.float().numpy()
    return t.numpy()


def _load_tiny_image_model(a, device):
    import torch
    import sam3_config
    from common import load_safetensors, seed_all
    from sam3.model_builder import _load_checkpoint

    sd, meta = load_safetensors(os.path.join(a.parity, "tiny", "model.safetensors"))
    state = OrderedDict()
    for k, v in sd.items():
        state[k] = torch.view_as_complex(v.contiguous()) if meta.get(k) == "complex64_as_real" else v
    cfg = sam3_config.tiny_config()
    bpe = os.path.join(a.parity, "inputs", "bpe_simple_vocab_16e6.txt.gz")
    seed_all(0)
    model = sam3_config.build_image_model(cfg, bpe, enable_inst_interactivity=True)
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "tiny_sam3.pt")
        torch.save({"model": state}, path)
        _load_checkpoint(model, path)  # the official loading path, as gen_tiny.build_tiny_models
    model.eval()
    return cfg, model.to(device)


def _processor(model, S, device, thr, cpu_preprocess):
    from sam3.model.sam3_image_processor import Sam3Processor

    proc = Sam3Processor(model, resolution=S, device=device, confidence_threshold=thr)
    if cpu_preprocess and device != "cpu":
        # resize + normalise on the CPU (the fixtures' uint8 kernel), then move: every way sees the same input
        inner = proc.transform
        proc.transform = lambda x: inner(x.cpu()).to(device)
    return proc


def _put_state(out, prefix, state):
    out[prefix + "output.scores"] = _to_np(state["scores"])
    out[prefix + "output.boxes"] = _to_np(state["boxes"])
    out[prefix + "output.masks"] = _to_np(state["masks"])
    out[prefix + "output.masks_dtype"] = np.array(str(state["masks_logits"].dtype))


def _scenario_a(a, ctx, out):
    from PIL import Image

    p = _fixture_params(a.parity, "a")
    proc = _processor(ctx.model, ctx.S, ctx.device, p["confidence_threshold"][0], ctx.cpu_preprocess)
    img = Image.open(os.path.join(a.parity, "inputs", "test_image.jpg")).convert("RGB")
    state = proc.set_image(img)
    state = proc.set_text_prompt(p["prompt"], state)
    _put_state(out, "", state)


def _scenario_b(a, ctx, out):
    import torch
    from PIL import Image
    from sam3.model import box_ops
    from sam3.model.data_misc import FindStage, interpolate

    p = _fixture_params(a.parity, "b")
    model, dev = ctx.model, ctx.device
    proc = _processor(model, ctx.S, dev, 0.5, ctx.cpu_preprocess)
    imgs = [Image.open(os.path.join(a.parity, "inputs", "groceries.jpg")).convert("RGB"),
            Image.open(os.path.join(a.parity, "inputs", "test_image.jpg")).convert("RGB")]
    state = proc.set_image_batch(imgs)
    state["backbone_out"].update(model.backbone.forward_text([p["prompt"]], device=dev))
    for i in range(2):
        find = FindStage(img_ids=torch.tensor([i], dtype=torch.long, device=dev),
                         text_ids=torch.tensor([0], dtype=torch.long, device=dev),
                         input_boxes=None, input_boxes_mask=None, input_boxes_label=None, input_points=None,
                         input_points_mask=None)
        with torch.inference_mode():
            o = model.forward_grounding(backbone_out=state["backbone_out"], find_input=find,
                                        geometric_prompt=model._get_dummy_prompt(), find_target=None)
            probs = (o["pred_logits"].sigmoid() * o["presence_logit_dec"].sigmoid().unsqueeze(1)).squeeze(-1)
            keep = probs > p["confidence_threshold"][i]
            h, w = state["original_heights"][i], state["original_widths"][i]
            boxes = box_ops.box_cxcywh_to_xyxy(o["pred_boxes"][keep]) * torch.tensor([w, h, w, h], device=dev)
            masks = interpolate(o["pred_masks"][keep].unsqueeze(1), (h, w), mode="bilinear",
                                align_corners=False).sigmoid()
        _put_state(out, f"img{i}.", {"scores": probs[keep], "boxes": boxes, "masks_logits": masks, "masks": masks > 0.5})


def _scenario_c(a, ctx, out):
    from PIL import Image

    p = _fixture_params(a.parity, "c")
    proc = _processor(ctx.model, ctx.S, ctx.device, 0.5, ctx.cpu_preprocess)
    img = Image.open(os.path.join(a.parity, "inputs", "test_image.jpg")).convert("RGB")
    state = proc.set_image(img)
    proc.set_confidence_threshold(p["confidence_threshold"][0])
    state = proc.add_geometric_prompt(p["pos_box"], True, state)
    _put_state(out, "step1.", state)
    proc.set_confidence_threshold(p["confidence_threshold"][1])
    state = proc.add_geometric_prompt(p["neg_box"], False, state)
    _put_state(out, "step2.", state)


def _scenario_d(a, ctx, out):
    from PIL import Image

    proc = _processor(ctx.model, ctx.S, ctx.device, 0.5, ctx.cpu_preprocess)
    img = Image.open(os.path.join(a.parity, "inputs", "test_image.jpg")).convert("RGB")
    state = proc.set_image(img)
    model = ctx.model

    def call(tag, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            masks, ious, low = model.predict_inst(state, **kw)
        skipped = [str(w.message).splitlines()[0] for w in caught if "Skipping the post-processing" in str(w.message)]
        if skipped:
            ctx.notes.append(f"d {tag}: upstream skipped hole filling: {skipped[0]}")
        out[tag + ".masks"] = np.asarray(masks) > 0.5  # predict() returns float 0/1 (logits > mask_threshold 0)
        out[tag + ".iou_predictions"] = np.asarray(ious, dtype=np.float32)
        out[tag + ".low_res_masks"] = np.asarray(low, dtype=np.float32)
        return ious, low

    # the calls of gen_scenarios.scenario_d, same order and arguments
    ious1, low1 = call("call1", point_coords=np.array([[560.0, 400.0]], dtype=np.float32),
                       point_labels=np.array([1]), multimask_output=True)
    best = int(np.argmax(ious1))
    call("call2", point_coords=np.array([[560.0, 400.0], [800.0, 250.0]], dtype=np.float32),
         point_labels=np.array([1, 1]), mask_input=low1[best:best + 1], multimask_output=False)
    call("call3", box=np.array([[640.0, 150.0, 1000.0, 600.0]], dtype=np.float32), multimask_output=False)
    call("call4", point_coords=None, point_labels=None,
         box=np.array([[100.0, 200.0, 600.0, 700.0], [640.0, 150.0, 1000.0, 600.0], [1000.0, 300.0, 1250.0, 500.0]],
                      dtype=np.float32), multimask_output=False)
    out["call1.best"] = np.array(best)


def _install_dtype_map(model, table):
    """Per module (first call in scenario a): the dtypes of its tensor inputs and outputs, e.g.
    "transformer.encoder.layers.0.norm1": "bfloat16 -> float32" (what autocast does at each module boundary)."""
    import torch

    def dts(x):
        if isinstance(x, torch.Tensor):
            return [str(x.dtype).replace("torch.", "")]
        if isinstance(x, (list, tuple)):
            return [d for v in x for d in dts(v)]
        if isinstance(x, dict):
            return [d for v in x.values() for d in dts(v)]
        return []

    def make(name):
        def hook(mod, inp, out):
            if name not in table:
                table[name] = f"{type(mod).__name__}: {','.join(dts(inp))} -> {','.join(dts(out))}"
        return hook

    handles = []
    for n, m in model.named_modules():
        if not n or isinstance(m, torch.jit.ScriptModule):
            continue
        try:
            handles.append(m.register_forward_hook(make(n)))
        except RuntimeError:  # e.g. a submodule of a scripted module
            pass
    return handles


SCENARIO_FNS = {"a": _scenario_a, "b": _scenario_b, "c": _scenario_c, "d": _scenario_d}


class _Ctx:
    pass


def worker(a):
    way = a.worker
    t_start = time.time()
    info = {"way": way, "python": sys.version.split()[0]}
    # all ways: on the device torchvision 0.26 inspects triton at import, which the shim's stub breaks (run 1)
    pre = _pre_import_real_packages()
    info["module_stubs"] = _ensure_modules()
    import torch

    torch.set_num_threads(a.threads)
    info.update(torch=torch.__version__, threads=torch.get_num_threads(), packages=pre)
    sys.path.insert(0, a.pyref)
    import sam3_shim

    sam3_shim.install(os.path.abspath(a.sam3_src))
    import sam3.model_builder  # noqa: F401 - its import runs _setup_tf32() (TF32 on, Ampere+), as upstream
    import gen_scenarios
    from common import save_safetensors
    from recorder import Recorder

    cuda = way not in CPU_WAYS
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f"way {way} needs CUDA, torch.cuda.is_available() is False")
    device = "cuda" if cuda else "cpu"
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
        tf32 = way in ("cuda_fp32_tf32", "cuda_bf16", "cuda_bf16_gpuprep")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if way in ("cuda_bf16", "cuda_bf16_gpuprep"):
        # exactly the notebooks' global entry (sam3_image_predictor_example.ipynb, sam3_for_sam1_task_example.ipynb)
        torch.autocast("cuda", dtype=torch.bfloat16).__enter__()
        torch.inference_mode().__enter__()
    elif way == "cpu_bf16":
        torch.autocast("cpu", dtype=torch.bfloat16).__enter__()
    if cuda:
        info["tf32"] = {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                        "cudnn": bool(torch.backends.cudnn.allow_tf32),
                        "float32_matmul_precision": torch.get_float32_matmul_precision()}
    info["shim_notes"] = list(sam3_shim.SHIM_NOTES)

    ctx = _Ctx()
    ctx.device, ctx.notes = device, []
    ctx.cpu_preprocess = way != "cuda_bf16_gpuprep"
    fp32_cuda = way in ("cuda_fp32", "cuda_fp32_tf32")
    if any(k in VIDEO_KEYS for k in a.scenarios):
        import gen_video_extra

        gen_video_extra._install_extra_patches()  # pyref's e2 patch (bf16 memory prompt cast up; lossless)
        info["video_extra_patches"] = list(gen_video_extra.EXTRA_PATCHES)
        _install_video_build_patch(device, fp32_cuda)
    image = any(k in FIXTURES for k in a.scenarios)
    if image:
        cfg, ctx.model = _load_tiny_image_model(a, device)
        ctx.S = cfg["image_size"]
    if cuda and not image and fp32_cuda:
        torch.autocast("cuda", enabled=False).__enter__()
    if cuda and image:
        # Sam3TrackerPredictor.__init__ (the interactive predictor inside the image model) enters CUDA bf16 autocast
        # "for the entire model process" (sam3_tracking_predictor.py:50-51): upstream's image model built with
        # enable_inst_interactivity=True runs under bf16 autocast on CUDA whatever the caller does. Record it, and
        # switch autocast off again for the fp32 ways.
        info["autocast_cuda_after_build"] = bool(torch.is_autocast_enabled("cuda"))
        if way in ("cuda_fp32", "cuda_fp32_tf32"):
            torch.autocast("cuda", enabled=False).__enter__()
        info["autocast_cuda_in_scenarios"] = bool(torch.is_autocast_enabled("cuda"))
        info["autocast_dtype"] = str(torch.get_autocast_dtype("cuda")) if hasattr(torch, "get_autocast_dtype") else None
        want = way in ("cuda_bf16", "cuda_bf16_gpuprep")
        if info["autocast_cuda_in_scenarios"] != want:
            raise RuntimeError(f"way {way}: CUDA autocast is {'on' if not want else 'off'}, expected {'on' if want else 'off'}")
    out = OrderedDict()
    timings = {}
    for key in a.scenarios:
        torch.manual_seed(0)
        t0 = time.time()
        if key == "a":
            # module-boundary tensors of scenario a with pyref's own hooks (names as in the a fixture)
            rec = Recorder()
            gen_scenarios.install_detector_hooks(rec, ctx.model, detail=True)
            dtype_hooks = _install_dtype_map(ctx.model, info.setdefault("dtype_map_a", OrderedDict()))
            SCENARIO_FNS[key](a, ctx, out)
            rec.remove()
            for h in dtype_hooks:
                h.remove()
            inter = OrderedDict()
            dtypes = {}
            for k, v in rec.tensors.items():
                if not v.is_floating_point():
                    continue
                dtypes[k] = str(v.dtype).replace("torch.", "")
                # not saved: positional tables / rpb (no GEMM), a duplicate of seg.out.pred_masks, the 0.5x level
                if k.startswith(("neck.sam3_pos", "dec.rpb", "enc.out.pos_embed", "grounding.out.pred_masks")) \
                        or k.endswith("fpn.3"):
                    continue
                inter[k] = v.detach().float().cpu().contiguous()
            os.makedirs(os.path.join(a.out, "intermediates"), exist_ok=True)
            save_safetensors(os.path.join(a.out, "intermediates", f"a_{way}.safetensors"), inter,
                             metadata={"way": way, "note": "float32 copies; recorded dtypes in results.json"})
            info["a_intermediate_dtypes"] = dtypes
        elif key in VIDEO_KEYS:
            try:
                _run_video_scenario(a, ctx, key, out)
            except Exception:  # noqa: BLE001 - record it and go on with the other scenarios
                traceback.print_exc()
                info.setdefault("failed_scenarios", {})[key] = traceback.format_exc()[-4000:]
            if cuda:
                info.setdefault("autocast_cuda_after_video", {})[key] = bool(torch.is_autocast_enabled("cuda"))
        else:
            SCENARIO_FNS[key](a, ctx, out)
        if cuda:
            torch.cuda.synchronize()
        timings[key] = round(time.time() - t0, 3)
    info["scenario_seconds"] = timings
    info["notes"] = ctx.notes
    info["worker_seconds"] = round(time.time() - t_start, 2)
    os.makedirs(os.path.join(a.out, "outputs"), exist_ok=True)
    np.savez_compressed(os.path.join(a.out, "outputs", f"{way}.npz"), **out)
    with open(os.path.join(a.out, "outputs", f"{way}.info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"[{way}] done in {info['worker_seconds']} s; scenarios {timings}", flush=True)


# ======================================================================================================
# video scenarios e, e2, f: pyref's own generator functions, run on the device; outputs normalised per step
# ======================================================================================================
VIDEO_FIXTURES = {"e": "e_tracker_video", "e2": "e2_tracker_interactive", "f": "f_video_predictor_text"}
VIDEO_KEYS = tuple(VIDEO_FIXTURES)


def _cpu_np(t):
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return t.float().numpy() if t.is_floating_point() else t.numpy()
    return np.asarray(t)


def video_steps(key, tensors, params):
    """One scenario's per-step outputs in one layout, from a Recorder's tensors + the generator's returned
    parameters (a worker) or from a fixture's safetensors + json parameters (extract/check): OrderedDict
    step -> (obj_ids int64 [O], masks bool [O,H,W] at video resolution, scores float32 [O] or None).
    e/e2: scores = the tracker's object-score logits (obj_scores); f: the predictor's out_probs."""
    steps = OrderedDict()
    if key == "e":
        per_frame = params["per_frame"]
        all_ids = per_frame[0]["obj_ids"] if per_frame else [1, 2]
        for tag, ids in (("add_obj1", all_ids[:1]), ("add_obj2", all_ids)):
            m = _cpu_np(tensors[tag + ".video_res_masks"])
            steps[tag] = (np.asarray(ids, np.int64), m.reshape(len(ids), *m.shape[-2:]).astype(bool), None)
        for pf in per_frame:
            s = f"frame{pf['frame_idx']}"
            m = _cpu_np(tensors[s + ".video_res_masks"])
            steps[s] = (np.asarray(pf["obj_ids"], np.int64), m.reshape(m.shape[0], *m.shape[-2:]).astype(bool),
                        _cpu_np(tensors[s + ".obj_scores"]).reshape(-1).astype(np.float32))
    elif key == "e2":
        W = int(params["video_hw"][1])

        def unpack(k):
            p = _cpu_np(tensors[k]).astype(np.uint8)
            return np.unpackbits(p, axis=-1, bitorder="big")[..., :W].astype(bool)

        for c in params["calls"]:
            name = c["call"]
            if "per_frame" in c:
                for pf in c["per_frame"]:
                    s = f"{name}.frame{pf['frame_idx']}"
                    m = unpack(s + ".video_res_masks_packbits")
                    steps[s] = (np.asarray(pf["obj_ids"], np.int64), m.reshape(m.shape[0], *m.shape[-2:]),
                                _cpu_np(tensors[s + ".obj_scores"]).reshape(-1).astype(np.float32))
            elif "obj_ids" in c and (name + ".video_res_masks_packbits") in tensors:
                m = unpack(name + ".video_res_masks_packbits")
                steps[name] = (np.asarray(c["obj_ids"], np.int64), m.reshape(m.shape[0], *m.shape[-2:]), None)
            elif "returned_obj_ids" in c:
                for u in c.get("updated_frames", []):
                    fidx = u["frame_idx"] if isinstance(u, dict) else u
                    s = f"{name}.frame{fidx}"
                    if s + ".video_res_masks_packbits" in tensors:
                        m = unpack(s + ".video_res_masks_packbits")
                        steps[s] = (np.asarray(c["returned_obj_ids"], np.int64), m.reshape(m.shape[0], *m.shape[-2:]), None)
    elif key == "f":
        tags = ["add_prompt"] + [f"frame{k}" for k in range(len(params["frame_stats"]) - 1)]
        for s in tags:
            m = _cpu_np(tensors[s + ".out_binary_masks"]).astype(bool)
            steps[s] = (_cpu_np(tensors[s + ".out_obj_ids"]).astype(np.int64).reshape(-1), m,
                        _cpu_np(tensors[s + ".out_probs"]).reshape(-1).astype(np.float32))
    return steps


def put_video_steps(out, key, steps):
    out[f"{key}|steps"] = np.array(list(steps))
    for s, (ids, masks, scores) in steps.items():
        out[f"{key}|{s}|ids"] = ids
        out[f"{key}|{s}|masks"] = masks
        if scores is not None:
            out[f"{key}|{s}|scores"] = scores


def get_video_steps(d, key):
    if f"{key}|steps" not in d:
        return None
    return OrderedDict((str(s), (d[f"{key}|{s}|ids"], d[f"{key}|{s}|masks"], d.get(f"{key}|{s}|scores")))
                       for s in d[f"{key}|steps"])


def video_contract(ref, test, key):
    """Per step: the same object ids (in order), mask IoU per object at video resolution, score max |d|."""
    r, t = get_video_steps(ref, key), get_video_steps(test, key)
    if r is None or t is None:
        return None
    rows = OrderedDict()
    all_ious, same_all, dmax = [], True, 0.0
    for s, (rid, rm, rsc) in r.items():
        if s not in t:
            rows[s] = {"missing": True}
            same_all = False
            continue
        tid, tm, tsc = t[s]
        same = rid.tolist() == tid.tolist()
        same_all &= same
        ious = []
        for i, oid in enumerate(rid.tolist()):
            j = tid.tolist().index(oid) if oid in tid.tolist() else None
            if j is not None and rm[i].shape == tm[j].shape:
                ious.append(_mask_iou(rm[i], tm[j]))
        row = {"ids": rid.tolist(), "test_ids": tid.tolist(), "same_ids": same, "ious": [round(v, 5) for v in ious]}
        if rsc is not None and tsc is not None and same and len(rsc) == len(tsc):
            d = float(np.abs(rsc.astype(np.float64) - tsc).max()) if len(rsc) else 0.0
            row["score_max"] = d
            dmax = max(dmax, d)
        all_ious += ious
        rows[s] = row
    summ = {"steps": len(r), "same_ids_everywhere": same_all, "masks": len(all_ious),
            "mean_iou": float(np.mean(all_ious)) if all_ious else None,
            "min_iou": float(np.min(all_ious)) if all_ious else None, "score_max": dmax}
    return {"summary": summ, "steps": rows}


def _fmt_video(key, res, per_step):
    s = res["summary"]
    what = "out_probs" if key == "f" else "obj-score logits"
    lines = [f"  {key:<8} {s['steps']} steps, {s['masks']} masks, same ids everywhere: {s['same_ids_everywhere']}   "
             f"IoU mean {s['mean_iou']:.4f} min {s['min_iou']:.4f}   {what} max|d| {s['score_max']:.4g}"
             if s["mean_iou"] is not None else f"  {key:<8} no masks compared"]
    if per_step:
        for st, r in res["steps"].items():
            if r.get("missing"):
                lines.append(f"      {st:<22} MISSING")
                continue
            sc = f"  {what} |d| {r['score_max']:.4g}" if "score_max" in r else ""
            lines.append(f"      {st:<22} ids {r['ids']}{'' if r['same_ids'] else ' vs ' + str(r['test_ids'])}  "
                         f"IoU {r['ious']}{sc}")
    return lines


class _Args:
    pass


def _run_video_scenario(a, ctx, key, out):
    """Runs pyref's generator function for `key` (gen_scenarios.scenario_e / scenario_f,
    gen_video_extra.scenario_e2): the same calls, arguments and thresholds as the fixtures."""
    import gen_scenarios
    import gen_tiny
    import gen_video_extra
    from common import seed_all
    from recorder import Recorder

    args = _Args()
    args.out, args.sam3_src = a.parity, a.sam3_src  # tiny/model.safetensors, inputs/video_0001, sam3/assets/bpe
    seed_all(0)
    rec = Recorder()
    rec.unpacked_shape = {}
    gctx = gen_scenarios.Ctx()
    gctx.args = args
    if key == "e2":
        del gen_video_extra._PROMPT_CASTS[:]
        params = gen_video_extra.scenario_e2(gctx, rec)
        ctx.notes.append(f"e2: bf16 memory prompts cast up by pyref's extra patch: {len(gen_video_extra._PROMPT_CASTS)}")
    else:
        gctx.cfg, _, gctx.video_model = gen_tiny.build_tiny_models(args, need_image=False, need_video=True)
        params = (gen_scenarios.scenario_e if key == "e" else gen_scenarios.scenario_f)(gctx, rec)
    rec.remove()
    put_video_steps(out, key, video_steps(key, rec.tensors, params))


def _install_video_build_patch(device, fp32_cuda):
    """Every tiny video model pyref builds (gen_tiny.build_tiny_models, gen_video_extra.build_video_model) goes
    to `device` (load_state_dict then copies into it; upstream's predictor does build(...).cuda() likewise).
    Constructing Sam3TrackerPredictor enters CUDA bf16 autocast for the process (sam3_tracking_predictor.py:50-51):
    the fp32 CUDA ways switch it off again after every build."""
    import torch
    import sam3_config

    orig = sam3_config.build_video_model

    def build(*args, **kw):
        m = orig(*args, **kw)
        if fp32_cuda:
            torch.autocast("cuda", enabled=False).__enter__()
        return m.to(device)

    sam3_config.build_video_model = build


# ======================================================================================================
# comparison (numpy only)
# ======================================================================================================
def _box_iou(a, b):
    area = lambda t: np.clip(t[:, 2] - t[:, 0], 0, None) * np.clip(t[:, 3] - t[:, 1], 0, None)  # noqa: E731
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _mask_iou(x, y):
    union = np.logical_or(x, y).sum()
    return 1.0 if union == 0 else float(np.logical_and(x, y).sum()) / float(union)


def detector_contract(ref, test, prefix):
    """Same figures as tests/Sam3.Torch.Tests/Precision/Bf16ContractTests.Measure: each reference detection
    matched (greedy, in reference order) to the unused test detection of highest box IoU."""
    rs, rb, rm = ref[prefix + "output.scores"], ref[prefix + "output.boxes"], ref[prefix + "output.masks"]
    ts, tb, tm = test[prefix + "output.scores"], test[prefix + "output.boxes"], test[prefix + "output.masks"]
    n, m = len(rs), len(ts)
    res = {"kept_ref": n, "kept": m, "same_kept": n == m}
    if n == 0 or m == 0:
        return res
    rm = rm.reshape(n, -1)
    tm = tm.reshape(m, -1)
    biou = _box_iou(rb.astype(np.float64), tb.astype(np.float64))
    used = np.zeros(m, dtype=bool)
    ious, boxd, scored = [], [], []
    for i in range(n):
        cand = np.where(~used)[0]
        if len(cand) == 0:
            break
        j = int(cand[np.argmax(biou[i, cand])])
        used[j] = True
        ious.append(_mask_iou(rm[i], tm[j]))
        boxd.append(float(np.abs(rb[i].astype(np.float64) - tb[j]).max()))
        scored.append(abs(float(rs[i]) - float(ts[j])))
    res.update(mean_iou=float(np.mean(ious)), min_iou=float(np.min(ious)), box_max_px=max(boxd),
               score_max=max(scored), ious=[round(v, 5) for v in ious])
    return res


def interactive_contract(ref, test):
    ious, iou_pred = [], 0.0
    low = 0.0
    for tag in ("call1", "call2", "call3", "call4"):
        rm, tm = ref[tag + ".masks"], test[tag + ".masks"]
        ri, ti = ref[tag + ".iou_predictions"], test[tag + ".iou_predictions"]
        if rm.ndim == 3:  # [M,H,W] -> [1,M,H,W]
            rm, tm, ri, ti = rm[None], tm[None], ri[None], ti[None]
        for q in range(rm.shape[0]):
            for k in range(rm.shape[1]):
                ious.append(_mask_iou(rm[q, k], tm[q, k]))
                iou_pred = max(iou_pred, abs(float(ri[q, k]) - float(ti[q, k])))
        rl, tl = ref[tag + ".low_res_masks"], test[tag + ".low_res_masks"]
        low = max(low, float(np.abs(rl.astype(np.float64) - tl).max()) / max(float(np.abs(rl).max()), 1e-12))
    return {"masks": len(ious), "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
            "iou_pred_max": iou_pred, "low_res_rel_max": low, "ious": [round(v, 5) for v in ious]}


def _groups(scenarios):
    g = []
    if "a" in scenarios:
        g.append(("a", ""))
    if "b" in scenarios:
        g += [("b img0", "img0."), ("b img1", "img1.")]
    if "c" in scenarios:
        g += [("c step1", "step1."), ("c step2", "step2.")]
    return g


def contract(ref, test, scenarios):
    rows = OrderedDict()
    for name, prefix in _groups(scenarios):
        rows[name] = detector_contract(ref, test, prefix)
    if "d" in scenarios:
        rows["d"] = interactive_contract(ref, test)
    return rows


def _fmt_row(name, r):
    if name == "d":
        return (f"  {name:<8} {r['masks']} masks          IoU mean {r['mean_iou']:.4f} min {r['min_iou']:.4f}   "
                f"pred-IoU max|d| {r['iou_pred_max']:.5f}  low-res logits rel max|d| {r['low_res_rel_max']:.2e}")
    s = f"  {name:<8} kept {r['kept']}/{r['kept_ref']:<2}"
    if "mean_iou" in r:
        s += (f"  IoU mean {r['mean_iou']:.4f} min {r['min_iou']:.4f}   box max|d| {r['box_max_px']:.3f} px   "
              f"score max|d| {r['score_max']:.5f}")
    return s


def summary(rows):
    """Mean IoU over the detector groups (a, b, c), the minimum over everything, and the contract verdict."""
    det = [r for k, r in rows.items() if k != "d" and "mean_iou" in r]
    s = {"detector_mean_iou_min_over_groups": min([r["mean_iou"] for r in det], default=None),
         "min_iou": min([r["min_iou"] for r in rows.values() if "min_iou" in r], default=None),
         "same_kept_everywhere": all(r.get("same_kept", True) for r in rows.values()),
         "box_max_px": max([r["box_max_px"] for r in det], default=None),
         "score_max": max([r["score_max"] for r in det], default=None)}
    if "d" in rows:
        s["d_mean_iou"] = rows["d"]["mean_iou"]
    means = [r["mean_iou"] for r in rows.values() if "mean_iou" in r]
    s["contract_met"] = bool(s["same_kept_everywhere"] and means and min(means) >= CONTRACT["mean_iou"]
                             and s["min_iou"] >= CONTRACT["min_iou"]
                             and (s["box_max_px"] or 0) <= CONTRACT["box_px"] and (s["score_max"] or 0) <= CONTRACT["score"])
    return s


def relative_errors(ref_path, test_path):
    """Scenario a's module-boundary tensors: max|test - ref| / max|ref| per tensor (as the C# contract test prints)."""
    sys.path.insert(0, ARGS.pyref)
    from common import load_safetensors

    r, _ = load_safetensors(ref_path)
    t, _ = load_safetensors(test_path)
    out = OrderedDict()
    for k, v in r.items():
        if k in t and tuple(t[k].shape) == tuple(v.shape) and v.numel() > 0:
            rv, tv = v.double().numpy(), t[k].double().numpy()
            out[k] = float(np.abs(rv - tv).max() / max(np.abs(rv).max(), 1e-12))
    return out


def check_fixtures(a, outputs, scenarios):
    """cpu_fp32 against the fixture .safetensors: the same tensors, which must agree to float rounding."""
    sys.path.insert(0, a.pyref)
    from common import load_safetensors

    res = OrderedDict()
    for key in scenarios:
        if key in VIDEO_KEYS:
            fxd = {}
            put_video_steps(fxd, key, _fixture_video_steps(a, key))
            v = video_contract(fxd, outputs, key)
            res[f"{key}:video"] = ({"mismatch": 0 if (v["summary"]["same_ids_everywhere"] and v["summary"]["min_iou"] == 1.0) else 1,
                                    "of": v["summary"]["masks"], "min_iou": v["summary"]["min_iou"],
                                    "score_max_abs_diff": v["summary"]["score_max"]} if v else "missing")
            continue
        fx, _ = load_safetensors(os.path.join(a.parity, "tiny", FIXTURES[key] + ".safetensors"))
        for k, v in outputs.items():
            if k.endswith("_dtype") or k.endswith(".best") or k not in fx:
                continue
            if key == "d" and not k.startswith("call"):
                continue
            if key != "d" and k.startswith("call"):
                continue
            if (key == "a" and "." in k.split("output.")[0]) or (key == "b" and not k.startswith("img")) \
                    or (key == "c" and not k.startswith("step")):
                continue
            f = fx[k].numpy() if fx[k].dtype.__str__() != "torch.bfloat16" else fx[k].float().numpy()
            if f.shape != v.shape:
                res[f"{key}:{k}"] = f"shape {list(v.shape)} vs fixture {list(f.shape)}"
            elif f.dtype == np.bool_:
                res[f"{key}:{k}"] = {"mismatch": int((f != v).sum()), "of": int(f.size)}
            else:
                res[f"{key}:{k}"] = {"max_abs_diff": float(np.abs(f.astype(np.float64) - v).max()) if f.size else 0.0}
    return res


# ======================================================================================================
# driver
# ======================================================================================================
def run_worker(a, way):
    env = dict(os.environ)
    if way in CPU_WAYS:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the shim's CPU redirections apply only where CUDA is unavailable
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", way, "--sam3-src", a.sam3_src, "--pyref", a.pyref,
           "--parity", a.parity, "--out", a.out, "--threads", str(a.threads), "--scenarios", ",".join(a.scenarios)]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=a.worker_timeout)
        rc, log = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, log = "timeout", (e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")) + "\nTIMEOUT"
    with open(os.path.join(a.out, f"log_{way}.txt"), "w") as f:
        f.write(log)
    ok = rc == 0
    print(f"[{way}] rc={rc} wall {time.time() - t0:.1f} s" + ("" if ok else "\n" + log[-3000:]), flush=True)
    return ok


FIXTURE_KEYS = {
    "a": ["output.scores", "output.boxes", "output.masks"],
    "b": [f"img{i}.output.{k}" for i in range(2) for k in ("scores", "boxes", "masks")],
    "c": [f"step{i}.output.{k}" for i in (1, 2) for k in ("scores", "boxes", "masks")],
    "d": [f"call{i}.{k}" for i in range(1, 5) for k in ("masks", "iou_predictions", "low_res_masks")],
}


def extract_fixtures(a, path):
    """The fixtures' final outputs (fp32, official code, torch 1.13 CPU) as one small npz: the way "fixtures"."""
    sys.path.insert(0, a.pyref)
    from common import load_safetensors

    out = {}
    for key in a.scenarios:
        if key in VIDEO_KEYS:
            put_video_steps(out, key, _fixture_video_steps(a, key))
            continue
        fx, _ = load_safetensors(os.path.join(a.parity, "tiny", FIXTURES[key] + ".safetensors"))
        for k in FIXTURE_KEYS[key]:
            out[k] = fx[k].numpy()
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, {len(out)} tensors)")


def _fixture_video_steps(a, key):
    sys.path.insert(0, a.pyref)
    from common import load_safetensors

    fx, _ = load_safetensors(os.path.join(a.parity, "tiny", VIDEO_FIXTURES[key] + ".safetensors"))
    with open(os.path.join(a.parity, "tiny", VIDEO_FIXTURES[key] + ".json")) as f:
        params = json.load(f)["parameters"]
    return video_steps(key, fx, params)


def _load_outputs(a, way):
    """outputs/<way>.npz (this script's workers) or outputs/<way>.safetensors (the C# port's `precision-dump`)."""
    npz = os.path.join(a.out, "outputs", f"{way}.npz")
    if os.path.exists(npz):
        return dict(np.load(npz))
    sys.path.insert(0, a.pyref)
    from common import load_safetensors

    t, _ = load_safetensors(os.path.join(a.out, "outputs", f"{way}.safetensors"))
    return {k: (v.float().numpy() if v.is_floating_point() else v.numpy()) for k, v in t.items()}


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sam3-src", required=True, help="directory holding the sam3 python package")
    ap.add_argument("--pyref", required=True, help="shared/pyref (sam3_shim.py, sam3_config.py, ...)")
    ap.add_argument("--parity", required=True, help="shared/parity (tiny/ and inputs/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ways", default=None,
                    help=f"comma list of {ALL_WAYS} (default: all but cpu_bf16; CPU ways only with --no-cuda)")
    ap.add_argument("--scenarios", default="a,b,c,d", help="comma list of a, b, c, d, e, e2, f")
    ap.add_argument("--per-step-e2", action="store_true", help="print e2's 40 steps one by one too")
    ap.add_argument("--no-cuda", action="store_true", help="skip the CUDA ways (a CPU-only check of the script)")
    ap.add_argument("--check-fixtures", action="store_true", help="compare cpu_fp32 with the fixture .safetensors")
    ap.add_argument("--fixture-npz", default=None,
                    help="the fixtures' outputs (made by --extract-fixtures): compared against as the way 'fixtures'")
    ap.add_argument("--extract-fixtures", default=None, metavar="NPZ",
                    help="write the fixtures' final outputs to NPZ and exit (needs the scenario .safetensors)")
    ap.add_argument("--compare-only", action="store_true", help="no workers: compare the outputs already in --out")
    ap.add_argument("--threads", type=int, default=max(1, min(16, os.cpu_count() or 1)))
    ap.add_argument("--worker-timeout", type=int, default=900)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    ARGS = a
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.out = os.path.abspath(a.out)
    a.pyref = os.path.abspath(a.pyref)
    a.parity = os.path.abspath(a.parity)
    a.sam3_src = os.path.abspath(a.sam3_src)
    if a.extract_fixtures:
        extract_fixtures(a, a.extract_fixtures)
        return
    os.makedirs(a.out, exist_ok=True)
    if a.worker:
        worker(a)
        return

    default = [w for w in ALL_WAYS if w != "cpu_bf16"]
    ways = a.ways.split(",") if a.ways else [w for w in default if not (a.no_cuda and w not in CPU_WAYS)]
    if "cpu_fp32" not in ways:
        ways.insert(0, "cpu_fp32")
    t0 = time.time()
    if a.compare_only:
        ok = {w: any(os.path.exists(os.path.join(a.out, "outputs", f"{w}{e}")) for e in (".npz", ".safetensors"))
              for w in ways}
    else:
        ok = {w: run_worker(a, w) for w in ways}
    outputs = OrderedDict((w, _load_outputs(a, w)) for w in ways if ok[w])
    infos = {}
    for w in outputs:
        path = os.path.join(a.out, "outputs", f"{w}.info.json")
        if os.path.exists(path):
            with open(path) as f:
                infos[w] = json.load(f)
    refs = ["cpu_fp32"]
    if a.fixture_npz and os.path.exists(a.fixture_npz):
        outputs["fixtures"] = dict(np.load(a.fixture_npz))
        refs.insert(0, "fixtures")
    results = OrderedDict(contract=CONTRACT, ways_ok=ok, info=infos, comparisons=OrderedDict(), summaries=OrderedDict(),
                          relative_error_a=OrderedDict())
    pairs = [(w, r) for r in refs for w in outputs if w not in refs and r in outputs]
    if "fixtures" in outputs and "cpu_fp32" in outputs:
        pairs.insert(0, ("cpu_fp32", "fixtures"))
    pairs += [(w, "cuda_fp32") for w in ("cuda_bf16", "cuda_bf16_gpuprep", "cuda_fp32_tf32") if w in outputs and "cuda_fp32" in outputs]
    # this port (C# `precision-dump`) directly against upstream's CUDA bf16
    pairs += [(w, "cuda_bf16") for w in outputs if w.startswith("ours_") and "cuda_bf16" in outputs]
    pairs += [(w, "cuda_fp32") for w in outputs if w.startswith("ours_") and "cuda_fp32" in outputs]
    for test, ref in pairs:
        name = f"{test} vs {ref}"
        rows = contract(outputs[ref], outputs[test], a.scenarios)
        results["comparisons"][name] = rows
        results["summaries"][name] = summary(rows)
        ri = os.path.join(a.out, "intermediates", f"a_{ref}.safetensors")
        ti = os.path.join(a.out, "intermediates", f"a_{test}.safetensors")
        if "a" in a.scenarios and os.path.exists(ri) and os.path.exists(ti):
            results["relative_error_a"][name] = relative_errors(ri, ti)
    results["video"] = OrderedDict()
    for test, ref in pairs:
        vrows = OrderedDict((k, video_contract(outputs[ref], outputs[test], k)) for k in a.scenarios if k in VIDEO_KEYS)
        vrows = OrderedDict((k, v) for k, v in vrows.items() if v is not None)
        if vrows:
            results["video"][f"{test} vs {ref}"] = vrows
    if a.check_fixtures and "cpu_fp32" in outputs:
        results["cpu_fp32_vs_fixtures"] = check_fixtures(a, outputs["cpu_fp32"], a.scenarios)
    results["total_seconds"] = round(time.time() - t0, 1)
    name = "results_compare.json" if a.compare_only else "results.json"
    with open(os.path.join(a.out, name), "w") as f:
        json.dump(results, f, indent=1)

    # ---------------------------------------------------------------- table
    print(f"\nbf16 contract (issue 15 item 4): same kept, mask IoU mean >= {CONTRACT['mean_iou']} and min >= "
          f"{CONTRACT['min_iou']}, boxes <= {CONTRACT['box_px']} px, scores <= {CONTRACT['score']}")
    for name_, rows in results["comparisons"].items():
        if not rows:
            continue
        s = results["summaries"][name_]
        print(f"\n{name_}   (contract {'MET' if s['contract_met'] else 'NOT met'})")
        for g, r in rows.items():
            print(_fmt_row(g, r))
    if results["video"]:
        print("\nvideo scenarios (e/e2: tracker obj-score logits, f: predictor out_probs), per step at video resolution:")
        for name_, vrows in results["video"].items():
            print(f"\n{name_}")
            for k, v in vrows.items():
                for line in _fmt_video(k, v, per_step=(k != "e2" or a.per_step_e2)):
                    print(line)
    key_tensors = ["image_input", "vit.out.0", "neck.sam3_fpn.2", "text.out.1", "enc.out.memory", "dec.out.0",
                   "grounding.out.pred_logits", "grounding.out.pred_boxes", "seg.pixel_decoder", "seg.instance_embeds",
                   "seg.out.pred_masks"]
    if results["relative_error_a"]:
        print("\nscenario a, relative max error per module-boundary tensor (max|d| / max|ref|):")
        names = list(results["relative_error_a"])
        print("  " + "tensor".ljust(26) + "".join(n.replace(" vs ", "/")[:24].rjust(25) for n in names))
        for k in key_tensors:
            print("  " + k.ljust(26) + "".join(
                (f"{results['relative_error_a'][n][k]:.2e}" if k in results["relative_error_a"][n] else "-").rjust(25)
                for n in names))
    if "cpu_fp32_vs_fixtures" in results:
        fx = results["cpu_fp32_vs_fixtures"]
        worst_f = max([v["max_abs_diff"] for v in fx.values() if isinstance(v, dict) and "max_abs_diff" in v], default=0.0)
        worst_b = max([v["mismatch"] for v in fx.values() if isinstance(v, dict) and "mismatch" in v], default=0)
        bad = [k for k, v in fx.items() if not isinstance(v, dict)]
        print(f"\ncpu_fp32 vs fixture tensors: {len(fx)} tensors, float max |d| {worst_f:.3g}, bool mismatches max {worst_b}"
              + (f", shape problems: {bad}" if bad else ""))
    for w, i in infos.items():
        if i.get("notes"):
            print(f"notes {w}: {i['notes']}")
    print(f"\nwrote {os.path.join(a.out, name)} (total {results['total_seconds']} s)")
    required = [w for w in ok if w != "cpu_bf16"]
    if not a.compare_only and not all(ok[w] for w in required):
        sys.exit(1)


ARGS = None

if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(2)
