"""The TTA grid on the demo's held-out synthetic scenes, or on the real held-out regions: which views and which
merge to pick.

    python tools/benchmark_tta_grid.py [--models c4 d4 c8] [--settings q4 r8 d4 s3q4] [--merges nms fusion]
                                       [--out work_dirs/tta_grid] [--max-images N] [--force]
    python tools/benchmark_tta_grid.py --real work_dirs/benchmark_real [--runs a_seed0 b_seed0] [...]

Models: the demo detectors trained by ``tools/demo.py`` (the same data, schedule and head; only the group differs):
``c4`` (``make demo``: ``work_dirs/demo``), ``d4`` and ``c8`` (``python tools/demo.py --config
configs/demo/rotated-retinanet-le90_er18-{d4,c8}_efpn_synthdota.py --out work_dirs/demo_{d4,c8} --data
work_dirs/demo/data --skip-equivariance``). Settings (views; each merged by every ``--merges``, with image TTA
beside feature TTA):

* ``q4``: 4 x 90° (the baseline is image TTA ``q4`` with NMS);
* ``r8``: 8 x 45° (C8: orientation steps; C4 / D4: ``fibre_interp='linear'``; approximate in space on every model);
* ``d4``: 4 x 90° x (none, horizontal mirror): all of D4 (D4 model: one backbone pass; C_N: two);
* ``s3q4``: scales 0.5, 1, 1.5 x 4 x 90°.

With ``--real DIR`` the models are runs of ``tools/benchmark_real.py`` (its ``--out-dir``: ``runs/<run>/config.py``
and ``model.pth``, default the C4 and C8 runs of seed 0) and the images its held-out regions (P0005, the bottom of
P0706: ``DIR/data/heldout``), scored as that benchmark scores them (vehicles on P0005 only;
:func:`rotplugin.apis.real_benchmark.evaluate_views`); results in ``OUT/real.json`` (resumable), the table in
``OUT/grid_real.md`` / ``.json``.

Plus no TTA once per model. Each mode's views are predicted once per image and merged by every merge (each
entry timed as that pass plus its own merge). Per entry: mAP@0.5 (DOTA, VOC07), s/img (model step, data loading and
evaluation excluded), backbone passes per image (``rotplugin/apis/benchmark.py``). Everything is resumable
(``OUT/<model>/<setting>/benchmark.json``); ``OUT/grid.json`` and ``OUT/grid.md`` hold the table and, per
model, the best feature-TTA setting against the baseline (mAP gain, time ratio) and whether it meets the goal
(``+GOAL_GAIN`` mAP at no more than the baseline's time).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rotplugin.apis.benchmark import run_benchmark
from rotplugin.apis.demo import DemoLayout, demo_config
from rotplugin.io import ResumableResults, sha256_file, write_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"c4": ("configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py", "work_dirs/demo"),
          "d4": ("configs/demo/rotated-retinanet-le90_er18-d4_efpn_synthdota.py", "work_dirs/demo_d4"),
          "c8": ("configs/demo/rotated-retinanet-le90_er18-c8_efpn_synthdota.py", "work_dirs/demo_c8")}
REAL_RUNS = ["a_seed0", "b_seed0"]   # tools/benchmark_real.py's C4 and C8 runs
Q4 = [0, 90, 180, 270]
SETTINGS = {"q4": dict(angles=Q4, tta={}),
            "r8": dict(angles=[45 * k for k in range(8)], tta={}),
            "d4": dict(angles=Q4, tta=dict(flips=["none", "horizontal"])),
            "s3q4": dict(angles=Q4, tta=dict(scales=[0.5, 1.0, 1.5]))}
GOAL_GAIN = 0.01


def log(msg):
    print(f"[tta-grid {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--merges", nargs="+", choices=["nms", "fusion"], default=["nms", "fusion"])
    p.add_argument("--modes", nargs="+", choices=["image", "feature"], default=["image", "feature"])
    p.add_argument("--data", default=str(ROOT / "work_dirs/demo/data"), help="the demo's synthetic set")
    p.add_argument("--out", default=str(ROOT / "work_dirs/tta_grid"))
    p.add_argument("--max-images", type=int)
    p.add_argument("--real", help="a tools/benchmark_real.py output folder: grid its runs on its held-out regions")
    p.add_argument("--runs", nargs="+", default=REAL_RUNS, help="with --real: which runs (default a_seed0 b_seed0)")
    p.add_argument("--force", action="store_true")
    return p.parse_args(argv)


def options(setting: str, orientation) -> dict:
    """The TTA options of ``setting`` for a C_N / D_N model of ``orientation`` N: views between its orientation
    steps get the linear fibre rule."""
    tta = dict(SETTINGS[setting]["tta"])
    if orientation and any(a % (360 / orientation) for a in SETTINGS[setting]["angles"]):
        tta["fibre_interp"] = "linear"
    return tta


def row(model, setting, mode, merge, r) -> dict:
    return dict(model=model, setting=setting, merge=merge, mode=mode, mAP=r["mAP"], sec_per_img=r["sec_per_img"],
                backbone_passes=r["backbone_passes"])


def summarise(rows: list) -> dict:
    """Per model, the baseline (image TTA q4 NMS) and every feature-TTA entry's gain and time ratio against it."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if (r["setting"], r["merge"], r["mode"]) == ("q4", "nms", "image")), None)
        if base is None:
            continue
        feats = [dict(r, gain=r["mAP"] - base["mAP"], time_ratio=r["sec_per_img"] / base["sec_per_img"])
                 for r in mine if r["mode"] == "feature"]
        within = [r for r in feats if r["time_ratio"] <= 1.0]
        best = max(within or feats, key=lambda r: r["mAP"]) if feats else None
        out[model] = dict(baseline=dict(mAP=base["mAP"], sec_per_img=base["sec_per_img"]), best=best,
                          goal_met=bool(best and best in within and best["gain"] >= GOAL_GAIN))
    return out


def table(rows: list) -> str:
    lines = ["| model | views | merge | mode | mAP | s/img | backbone passes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['setting']} | {r['merge']} | {r['mode']} | {r['mAP']:.4f} | "
                     f"{r['sec_per_img']:.4f} | {r['backbone_passes']:g} |")
    return "\n".join(lines)


def demo_rows(args, out: Path) -> list:
    test = Path(args.data) / "test"
    rows = []
    for model in args.models:
        config, run_dir = MODELS[model]
        ckpt = DemoLayout(ROOT / run_dir).checkpoint
        if not ckpt.is_file():
            sys.exit(f"{ckpt} not found: train the {model} demo model first (see this tool's help)")
        cfg = demo_config(ROOT / config, ROOT / run_dir, 256, data=args.data)
        orientation = cfg.model.backbone.get("orientation")
        kw = dict(max_images=args.max_images, force=args.force, log=log)
        res = run_benchmark(cfg, str(ckpt), str(test), modes=["none"], out_dir=str(out / model / "none"), **kw)
        rows.append(row(model, "none", "none", "-", res["results"]["none"]))
        for setting in args.settings:
            # each mode's views predicted once per image, merged by every merge
            res = run_benchmark(cfg, str(ckpt), str(test), modes=args.modes, angles=SETTINGS[setting]["angles"],
                                tta=options(setting, orientation), merges=args.merges,
                                out_dir=str(out / model / setting), **kw)
            for mode in args.modes:
                for merge in args.merges:
                    rows.append(row(model, setting, mode, merge, res["results"][f"{mode}+{merge}"]))
                    log(f"{model} {setting} {mode} {merge}: mAP {rows[-1]['mAP']:.4f}, "
                        f"{rows[-1]['sec_per_img']:.3f} s/img")
    return rows


def real_rows(args, out: Path) -> list:
    from rotplugin.apis.real_benchmark import evaluate_views
    from rotplugin.presets import load_config

    real = Path(args.real)
    store = ResumableResults(str(out / "real.json"), force=args.force, log=log)
    rows = []
    for run in args.runs:
        config, ckpt = real / "runs" / run / "config.py", real / "runs" / run / "model.pth"
        if not (config.is_file() and ckpt.is_file()):
            sys.exit(f"{config} or {ckpt} not found: train the run first (python tools/benchmark_real.py "
                     f"--out-dir {real} --models ...)")
        cfg = load_config(str(config))
        orientation = cfg.model.backbone.get("orientation")
        digest = sha256_file(ckpt)
        for setting in ["none"] + list(args.settings):
            modes = ["none"] if setting == "none" else args.modes
            angles = SETTINGS[setting]["angles"] if setting != "none" else []
            tta = options(setting, orientation) if setting != "none" else {}
            key = f"{run}/{setting}"
            settings = dict(checkpoint=digest, angles=angles, tta=tta, modes=modes, merges=args.merges,
                            heldout=str((real / "data" / "heldout").resolve()))
            if not store.done(key, settings):
                log(f"{run} {setting}")
                store.put(key, dict(results=evaluate_views(cfg, ckpt, real / "data", angles or [0], tta, modes,
                                                           args.merges, log=log)), settings)
            for name, r in store.get(key)["results"].items():
                if r.get("applicable", True):
                    mode, _, merge = name.partition("+")
                    rows.append(row(run, setting, mode, merge or "-", r))
    return rows


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    rows = real_rows(args, out) if args.real else demo_rows(args, out)
    suffix = "_real" if args.real else ""
    summary = summarise(rows)
    write_json_atomic(str(out / f"grid{suffix}.json"), dict(rows=rows, summary=summary, goal_gain=GOAL_GAIN))
    text = [table(rows), ""]
    for model, s in summary.items():
        b = s["best"]
        text.append(f"* {model}: baseline image TTA 4x90° NMS {s['baseline']['mAP']:.4f} at "
                    f"{s['baseline']['sec_per_img']:.3f} s/img; best feature TTA "
                    + (f"{b['setting']} {b['merge']}: {b['mAP']:.4f} ({b['gain'] * 100:+.1f} mAP points) at "
                       f"{b['time_ratio']:.2f}x the time; goal {'met' if s['goal_met'] else 'not met'}" if b else "-"))
    write_atomic(out / f"grid{suffix}.md", lambda fh: fh.write("\n".join(text) + "\n"), "w")
    print("\n".join(text), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
