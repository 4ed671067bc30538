#!/usr/bin/env python3
"""Side-by-side report of benchmarks/reference/run.sh: compares the official and the port's detections per image
and prints one table per image with a row per stage (official s, ours s, FLOPs, our GFLOP/s, % of the measured
GEMM rate, peak RSS), then writes results.md and results.json into the run folder.

Usage: report.py RUN_DIR   (RUN_DIR holds env.json, gemm.json, flops.json, official.NAME.*, ours.NAME.*)
"""

import json
import os
import sys

import numpy as np

STAGES = [  # (key, label, flops key or None)
    ("preprocess", "preprocess (resize, normalise)", None),
    ("vit", "ViT trunk", "vit"),
    ("necks", "necks (SAM3 + SAM2, conv_s0/s1)", "necks"),
    ("text", "text encoder (incl. tokenizer)", "text"),
    ("fusion_encoder", "geometry + fusion encoder", "fusion_encoder"),
    ("decoder_scoring", "decoder + scoring + boxes", "decoder_scoring"),
    ("segmentation_head", "segmentation head", "segmentation_head"),
    ("postprocess", "post-processing (threshold, upsample masks)", None),
]


def load(path):
    with open(path) as f:
        return json.load(f)


def load_dets(prefix):
    scores = np.load(prefix + ".scores.npy")
    boxes = np.load(prefix + ".boxes.npy").reshape(-1, 4)
    with open(prefix + ".masks.shape") as f:
        k, h, w = (int(x) for x in f.read().split())
    bits = np.load(prefix + ".masks.npy")
    masks = np.unpackbits(bits)[: k * h * w].reshape(k, h, w).astype(bool) if k else np.zeros((0, h, w), bool)
    return scores, boxes, masks


def compare(off_prefix, ours_prefix):
    so, bo, mo = load_dets(off_prefix)
    su, bu, mu = load_dets(ours_prefix)
    res = {"detections_official": int(len(so)), "detections_ours": int(len(su)), "same_count": len(so) == len(su)}
    if len(so) == len(su):
        pairs = list(range(len(so)))
        match = [(i, i) for i in pairs]
        res["matching"] = "in query order"
    else:  # greedy by box distance
        used, match = set(), []
        for i in np.argsort(-so):
            d = np.abs(bu - bo[i]).max(axis=1) if len(bu) else np.array([])
            for j in np.argsort(d):
                if j not in used:
                    used.add(j)
                    match.append((int(i), int(j)))
                    break
        res["matching"] = "greedy by box distance (counts differ)"
    if match:
        oi = np.array([m[0] for m in match])
        ui = np.array([m[1] for m in match])
        res["scores_max_abs_diff"] = float(np.abs(so[oi] - su[ui]).max())
        res["boxes_max_px_diff"] = float(np.abs(bo[oi] - bu[ui]).max())
        ious = []
        for i, j in match:
            a, b = mo[i], mu[j]
            inter = np.logical_and(a, b).sum()
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else inter / union)
        res["mask_iou_mean"] = float(np.mean(ious))
        res["mask_iou_min"] = float(np.min(ious))
        res["mask_pixels_differing"] = int(sum(np.logical_xor(mo[i], mu[j]).sum() for i, j in match))
    ao, au = off_prefix + ".all_scores.npy", ours_prefix + ".all_scores.npy"
    if os.path.exists(ao) and os.path.exists(au):
        # every query before the threshold (agreement even when no detection passes it)
        qo, qu = np.load(ao), np.load(au)
        bqo, bqu = np.load(off_prefix + ".all_boxes.npy"), np.load(ours_prefix + ".all_boxes.npy")
        if qo.shape == qu.shape:
            res["all_queries"] = int(qo.shape[0])
            res["all_scores_max_abs_diff"] = float(np.abs(qo - qu).max())
            res["all_boxes_max_abs_diff_normalised"] = float(np.abs(bqo - bqu).max())
            res["max_score"] = float(qo.max())
    return res


def fmt_s(x):
    return "" if x is None else f"{x:.2f}"


HEADS = ("fusion_encoder", "decoder_scoring", "segmentation_head", "postprocess")


def heads_together(u, stage_flops, rate, threads):
    """The detector heads as one row: fusion + decoder + scoring + seg head + post-processing, their summed wall time
    against their summed GEMM floor (Σ FLOPs / GEMM rate; the post-processing has no GEMM FLOPs). Times from the
    linearity row with the largest K <= 20 when the run has one (post-processing of few masks, as a user's call),
    else from the staged pass (post-processing at that pass's K). None without our side."""
    if not u:
        return None
    lin = [r for r in u.get("linearity") or [] if r["k"] <= 20]
    if lin:
        r = max(lin, key=lambda r: r["k"])
        times = {**r["stages"], "postprocess": r["postprocess"]}
        source, k = f"linearity row K = {r['k']}", r["k"]
    else:
        times = u["stages"]
        source, k = "staged pass", u.get("staged_detections")
    if any(s not in times for s in HEADS):
        return None
    wall = sum(times[s]["wall_s"] for s in HEADS)
    cpu = sum(times[s]["cpu_s"] for s in HEADS)
    flops = sum(stage_flops[s] or 0 for s in HEADS)
    floor = flops / 1e9 / rate
    return {"stage": "detector_heads", "source": source, "k": k, "ours_s": wall, "ours_cpu_s": cpu, "flops": flops,
            "gemm_floor_s": floor, "over_gemm_floor": wall / floor, "ours_gflops": flops / 1e9 / wall,
            "pct_of_gemm": 100 * flops / 1e9 / wall / rate, "ours_gflops_cpu_time": flops / 1e9 / (cpu / threads)}


def main():
    run = sys.argv[1]
    env = load(os.path.join(run, "env.json"))
    gemm = load(os.path.join(run, "gemm.json"))
    flops = load(os.path.join(run, "flops.json"))
    rate = gemm["vit_linear_gflops"]
    images = env["images"]
    out = {"env": env, "gemm": gemm, "flops": flops, "images": []}
    md = []
    md.append(f"Run {env['date']} on {env['cpu_model']} ({env['cores']} logical cores), flags: {env['flags'] or 'none of avx2/avx512*/amx*'}; "
              f"{env['threads']} threads; load average before: {env['uptime_before']}; after: {env.get('uptime_after', '?')}")
    md.append(f"Official: {env.get('official_torch', '?')}; ours: {env.get('ours_torch', '?')}")
    md.append(f"LibTorch fp32 GEMM at the ViT's linear shapes (qkv, proj, fc1, fc2 of [{flops.get('vit_tokens', 5184)} tokens]): "
              f"**{rate:.1f} GFLOP/s** (per shape: " + ", ".join(f"{s['shape'].split(' ')[0]} {s['gflops']:.1f}" for s in gemm["shapes"]) + ")")
    lin = [r for r in gemm["shapes"] if r["linear"]]
    rate_cpu = sum(r["flops"] for r in lin) / sum(r["cpu_s"] / env["threads"] for r in lin) / 1e9
    out["gemm_linear_gflops_cpu_time"] = rate_cpu
    md.append(f"The same from CPU time (flops·threads / CPU s): {rate_cpu:.1f} GFLOP/s")
    md.append(f"ViT: {flops['vit'] / 1e12:.2f} TFLOP (linear {flops['vit_linear'] / 1e12:.2f}, attention {flops['vit_attention'] / 1e12:.2f}) "
              f"→ GEMM floor {flops['vit'] / 1e9 / rate:.1f} s")
    md.append("")
    for img, prompt in images:
        name = os.path.splitext(img)[0]
        po, pu = os.path.join(run, f"official.{name}"), os.path.join(run, f"ours.{name}")
        entry = {"image": img, "prompt": prompt}
        have_o, have_u = os.path.exists(po + ".json"), os.path.exists(pu + ".json")
        o = load(po + ".json") if have_o else None
        u = load(pu + ".json") if have_u else None
        entry["official"], entry["ours"] = o, u
        if have_o and have_u:
            entry["agreement"] = compare(po, pu)
        size = (u or o or {}).get("image_size", "?")
        md.append(f"### {img} ({size}), prompt \"{prompt}\"")
        md.append("")
        md.append("| stage | official s | ours s | official CPU s | ours CPU s | GFLOP | ours GFLOP/s | % of GEMM rate | ours GFLOP/s (CPU time) | ours / official |")
        md.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        rows = []
        for key, label, fk in STAGES:
            os_ = o["stages"].get(key, {}).get("wall_s") if o else None
            us_ = u["stages"].get(key, {}).get("wall_s") if u else None
            oc = o["stages"].get(key, {}).get("cpu_s") if o else None
            uc = u["stages"].get(key, {}).get("cpu_s") if u else None
            # ours' own FLOPs where it records them (the text row: the prompt's real tokens, not the whole context)
            f = ((u or {}).get("stage_flops") or {}).get(fk) or flops.get(fk) if fk else None
            gf = f / 1e9 / us_ if f and us_ else None
            pct = 100 * gf / rate if gf else None
            ratio = us_ / os_ if us_ and os_ else None
            # the same rate from CPU time (threads × wall on an idle machine; steadier under load)
            gfc = f / 1e9 / (uc / env["threads"]) if f and uc else None
            rows.append({"stage": key, "official_s": os_, "ours_s": us_, "official_cpu_s": oc, "ours_cpu_s": uc, "flops": f,
                         "ours_gflops": gf, "pct_of_gemm": pct, "ours_gflops_cpu_time": gfc, "ours_over_official": ratio})
            md.append(f"| {label} | {fmt_s(os_)} | {fmt_s(us_)} | {fmt_s(oc)} | {fmt_s(uc)} | {'' if f is None else f'{f / 1e9:.0f}'} | "
                      f"{'' if gf is None else f'{gf:.1f}'} | {'' if pct is None else f'{pct:.0f}%'} | {'' if gfc is None else f'{gfc:.1f}'} | {'' if ratio is None else f'{ratio:.2f}'} |")
        heads = heads_together(u, {r["stage"]: r["flops"] for r in rows}, rate, env["threads"])
        if heads:
            md.append(f"| **detector heads together** (fusion + decoder + scoring + seg head + post-processing at K = {heads['k']}, "
                      f"{heads['source']}): {heads['ours_s']:.2f} s / GEMM floor {heads['gemm_floor_s']:.2f} s = "
                      f"**{heads['over_gemm_floor']:.2f}×** | | {fmt_s(heads['ours_s'])} | | {fmt_s(heads['ours_cpu_s'])} | "
                      f"{heads['flops'] / 1e9:.0f} | {heads['ours_gflops']:.1f} | {heads['pct_of_gemm']:.0f}% | "
                      f"{heads['ours_gflops_cpu_time']:.1f} | |")
            entry["detector_heads"] = heads
        if u and u.get("text_tokens"):
            md.append(f"| (text row: ours runs the prompt's {u['text_tokens']} real tokens, as the image predictor does; FLOPs for those; "
                      f"the official code runs the whole context) | | | | | | | | | |")
        for total in ("set_image", "set_text_prompt"):
            ot = o["api"][total]["wall_s"] if o else None
            ut = u["api"][total]["wall_s"] if u else None
            oc = o["api"][total]["cpu_s"] if o else None
            uc = u["api"][total]["cpu_s"] if u else None
            ratio = ut / ot if ut and ot else None
            md.append(f"| **{total}** (API, first call) | {fmt_s(ot)} | {fmt_s(ut)} | {fmt_s(oc)} | {fmt_s(uc)} | | | | | {'' if ratio is None else f'{ratio:.2f}'} |")
            rows.append({"stage": total, "official_s": ot, "ours_s": ut, "official_cpu_s": oc, "ours_cpu_s": uc})
        entry["rows"] = rows
        md.append("")
        if o:
            md.append(f"Peak RSS official: {o['vmhwm_bytes'] / 2**30:.2f} GiB (after load {o['rss_after_load_bytes'] / 2**30:.2f} GiB)")
        if u:
            md.append(f"Peak RSS ours: {u['vmhwm_api_bytes'] / 2**30:.2f} GiB after the API pass, {u['vmhwm_bytes'] / 2**30:.2f} GiB after both passes "
                      f"(after load {u['rss_after_load_bytes'] / 2**30:.2f} GiB); ours per stage = second (staged) pass")
        if "agreement" in entry:
            a = entry["agreement"]
            md.append(f"Agreement: detections {a['detections_official']} official / {a['detections_ours']} ours ({a['matching']}); "
                      + (f"scores max |Δ| {a['scores_max_abs_diff']:.2e}, boxes max |Δ| {a['boxes_max_px_diff']:.3f} px, "
                         f"mask IoU mean {a['mask_iou_mean']:.5f} / min {a['mask_iou_min']:.5f} ({a['mask_pixels_differing']} pixels differ)"
                         if "scores_max_abs_diff" in a else "no detection above the threshold")
                      + (f"; all {a['all_queries']} queries before the threshold: scores max |Δ| {a['all_scores_max_abs_diff']:.2e} "
                         f"(highest score {a['max_score']:.3f}), boxes max |Δ| {a['all_boxes_max_abs_diff_normalised']:.2e} (normalised)"
                         if "all_queries" in a else ""))
        md.append("")
        out["images"].append(entry)
    text = "\n".join(md)
    print(text)
    with open(os.path.join(run, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
