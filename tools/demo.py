"""`make demo`: the whole idea on CPU in minutes, with no download.

    python tools/demo.py [--out work_dirs/demo] [--train-images 600] [--test-images 150] [--size 256]
                         [--epochs E] [--angles A [A ...]] [--retrain] [--skip-equivariance]

1. generates a synthetic DOTA set (``tools/make_synthetic_dota.py``): ``OUT/data/train`` and ``OUT/data/test``;
2. trains the demo detector (``configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py``: Rotated RetinaNet
   with EquivariantResNet-18 C4 + EquivariantFPN) from scratch on the CPU, with a progress bar; the weights go to
   ``OUT/model.pth``;
3. benchmarks no TTA / image-rotation TTA / feature-rotation TTA on the test set (``tools/benchmark.py``): mAP,
   per-class AP, seconds per image and its split, ``OUT/benchmark/benchmark.{json,png}``;
4. draws detections on test images (``OUT/detections/*.png``) and the equivariant feature fields of the trained
   model (``tools/visualize_fields.py``, ``OUT/fields/*.png``);
5. measures the equivariance of the full-size EquivariantResNet-50 (C8) + EquivariantFPN on the real DOTA image
   beside the project (``../shared``; a synthetic scene without it) on the equivariant canvas and without it;
6. writes ``OUT/report.md`` and ``OUT/report.json`` (per mode ``mAP`` and ``sec_per_img``, and everything above).

Each step keeps what an earlier run made with the same settings (data, trained weights, benchmark entries), so an
interrupted demo resumes; other data or epochs train again, and so does ``--retrain``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rotplugin.engine.benchmark import DEMO_CONFIG, DEMO_DIR, MODES  # noqa: E402  (the demo's model and layout)

R50_CONFIG = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"
MODE_NAMES = {"none": "no TTA", "image": "image-rotation TTA", "feature": "feature-rotation TTA"}


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEMO_DIR))
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--test-images", type=int, default=150)
    p.add_argument("--size", type=int, default=256, help="side of the synthetic scenes (px)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo config's)")
    p.add_argument("--angles", nargs="+", default=["0", "90", "180", "270"], help="TTA view angles (degrees)")
    p.add_argument("--retrain", action="store_true", help="train again although OUT/model.pth exists")
    p.add_argument("--skip-equivariance", action="store_true", help="skip the EquivariantResNet-50 table")
    return p.parse_args(argv)


# -- 1. data -----------------------------------------------------------------------------------------------------
def make_data(out: Path, args) -> dict:
    from rotplugin.data.dota_synth import generate_dataset
    from rotplugin.io import write_json_atomic

    stamp = out / "data" / "settings.json"
    settings = {"train": [args.train_images, args.size, 0], "test": [args.test_images, args.size, 1]}
    if stamp.is_file() and _read_json(stamp) == settings:
        log(f"data: kept {out / 'data'} (same settings)")
        return settings
    t0 = time.perf_counter()
    for split, (num, size, seed) in settings.items():
        shutil.rmtree(out / "data" / split, ignore_errors=True)
        generate_dataset(str(out / "data" / split), num_images=num, size=size, seed=seed, workers=2, progress=False)
    write_json_atomic(str(stamp), settings)
    log(f"data: {args.train_images} train + {args.test_images} test scenes of {args.size}² in "
        f"{time.perf_counter() - t0:.0f} s -> {out / 'data'}")
    return settings


def _read_json(path):
    import json

    with open(path) as f:
        return json.load(f)


# -- 2. training ---------------------------------------------------------------------------------------------------
def demo_config(out: Path, size: int, epochs=None):
    """The demo config with its data under ``out`` and test scenes of ``size``² kept at their size."""
    from rotplugin.presets import load_config

    cfg = load_config(str(DEMO_CONFIG))
    data_root = str(out / "data") + os.sep
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[key].dataset.data_root = data_root
        for step in cfg[key].dataset.pipeline:
            if step["type"] == "mmdet.Resize":
                step["scale"] = (size, size)
    if epochs:
        cfg.train_cfg.max_epochs = cfg.train_cfg.val_interval = epochs
        for sched in cfg.param_scheduler:
            if sched.get("by_epoch", True):
                sched.update(end=epochs, T_max=epochs) if "T_max" in sched else sched.update(end=epochs)
        cfg.default_hooks.checkpoint.interval = epochs
    cfg.work_dir = str(out / "train")
    return cfg


def train(out: Path, args, data: dict) -> dict:
    import torch
    from mmengine.runner import Runner

    model_path = out / "model.pth"
    info_path = out / "train" / "train.json"
    cfg = demo_config(out, args.size, args.epochs)
    settings = {"data": data, "epochs": cfg.train_cfg.max_epochs}
    if model_path.is_file() and info_path.is_file() and not args.retrain:
        info = _read_json(info_path)
        if info.get("settings") == settings:
            log(f"train: kept {model_path} (same data and epochs; --retrain to train again)")
            return dict(info, kept=True)
        log(f"train: {model_path} was trained with other settings ({info.get('settings')}): training again")
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # the benchmark evaluates
    cfg.train_cfg.val_interval = 10 ** 6
    cfg.custom_hooks = list(cfg.get("custom_hooks", [])) + [dict(type="ProgressBarHook", interval=10)]
    cfg.default_hooks.logger.interval = 50
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1, save_last=False)
    runner = Runner.from_cfg(cfg)
    epochs = cfg.train_cfg.max_epochs
    log(f"train: {DEMO_CONFIG.relative_to(ROOT)}, {epochs} epochs of {len(runner.train_dataloader.dataset)} images, "
        f"batch {cfg.train_dataloader.batch_size}, on the CPU ({torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - t0
    from rotplugin.io import write_atomic, write_json_atomic
    from rotplugin.models.tta import unwrap_model

    state = {"state_dict": unwrap_model(runner.model).state_dict(),
             "meta": {"config": str(DEMO_CONFIG.relative_to(ROOT)), "epochs": epochs}}
    write_atomic(model_path, lambda fh: torch.save(state, fh), "wb")
    info = {"seconds": seconds, "epochs": epochs, "iterations": runner.iter,
            "train_images": len(runner.train_dataloader.dataset), "sec_per_iter": seconds / max(runner.iter, 1),
            "batch_size": cfg.train_dataloader.batch_size, "settings": settings}
    write_json_atomic(str(info_path), info)
    log(f"train: {runner.iter} iterations in {seconds / 60:.1f} min -> {model_path}")
    return info


# -- 3. benchmark --------------------------------------------------------------------------------------------------
def benchmark(out: Path, args) -> dict:
    from rotplugin.engine.benchmark import run_benchmark

    res = run_benchmark(demo_config(out, args.size), str(out / "model.pth"), str(out / "data" / "test"), modes=MODES,
                        angles=" ".join(args.angles), out_dir=str(out / "benchmark"), log=log)
    print(res["table"], flush=True)
    return res


# -- 4. pictures ---------------------------------------------------------------------------------------------------
def draw_detections(out: Path, size: int, angles: str, num: int = 4) -> list:
    """The test scenes with the most objects: ground truth (white) and the detections without TTA and with
    feature TTA over ``angles`` side by side."""
    import cv2
    import numpy as np
    import torch
    from mmdet.structures.bbox import get_box_tensor
    from mmengine.dataset import pseudo_collate
    from mmrotate.registry import DATASETS, MODELS

    from rotplugin.models.tta import FeatureRotationTTAModel, parse_angles
    from rotplugin.presets import trusted_checkpoints
    from rotplugin.visualization import draw_rboxes, label_colour

    cfg = demo_config(out, size)
    model = MODELS.build(cfg.model)
    with trusted_checkpoints():
        state = torch.load(str(out / "model.pth"), map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    classes = tuple(dataset.metainfo["classes"])
    nms = cfg.model.test_cfg
    views = parse_angles(angles)
    tta = FeatureRotationTTAModel(model, angles=views, iou_thr=nms.nms.iou_threshold, score_thr=nms.score_thr,
                                  max_per_img=nms.max_per_img)
    shutil.rmtree(out / "detections", ignore_errors=True)
    (out / "detections").mkdir(parents=True)
    paths = []
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    chosen = sorted(range(len(infos)), key=lambda i: (-len(infos[i]["instances"]), infos[i]["img_path"]))[:num]
    for i in sorted(chosen):
        data = dataset[i]
        batch = pseudo_collate([data])
        with torch.no_grad():
            plain = model.test_step(batch)[0].pred_instances
            feat = tta.test_step(batch)[0].pred_instances
        img = cv2.imread(infos[i]["img_path"])
        gt = data["data_samples"].gt_instances
        panels = []
        for title, pred in (("no TTA", plain), (f"feature TTA ({len(views)} views)", feat)):
            keep = pred.scores >= 0.3
            pic = draw_rboxes(img, get_box_tensor(gt.bboxes), colour=(255, 255, 255), thickness=1, show_text=False)
            pic = draw_rboxes(pic, get_box_tensor(pred.bboxes)[keep], pred.labels[keep], pred.scores[keep], classes,
                              thickness=1, show_text=False)
            pic = cv2.copyMakeBorder(pic, 22, 0, 0, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            cv2.putText(pic, f"{title}: {int(keep.sum())} boxes", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
            panels.append(pic)
        picture = np.concatenate(panels, axis=1)
        legend = np.full((20, picture.shape[1], 3), 255, np.uint8)
        x = 4
        for label, cls in enumerate(classes):  # the class colours of draw_rboxes
            cv2.rectangle(legend, (x, 5), (x + 10, 15), label_colour(label), -1)
            cv2.putText(legend, cls, (x + 14, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            x += 22 + 8 * len(cls)
        path = out / "detections" / f"{Path(infos[i]['img_path']).stem}.png"
        cv2.imwrite(str(path), np.concatenate([picture, legend], axis=0))
        paths.append(str(path))
    log(f"detections: {len(paths)} pictures -> {out / 'detections'} (white: ground truth; scores >= 0.3 drawn)")
    return paths


def draw_fields(out: Path) -> dict:
    from tools.visualize_fields import main as visualize_main

    image = sorted((out / "data" / "test" / "images").iterdir())[0]
    visualize_main(["--config", str(DEMO_CONFIG), "--checkpoint", str(out / "model.pth"), "--image", str(image),
                    "--angle", "90", "--out-dir", str(out / "fields")])
    return _read_json(out / "fields" / "fields.json")


# -- 5. equivariance of the full-size backbone ------------------------------------------------------------------
def equivariance_table(out: Path) -> dict:
    import torch
    from mmrotate.registry import MODELS

    from rotplugin.equivariance import measure_equivariance, pad_image
    from rotplugin.io import write_json_atomic
    from rotplugin.presets import load_config
    from tools.check_equivariance import DEMO_IMAGE, load_image

    path = out / "equivariance.json"
    if path.is_file():
        log(f"equivariance: kept {path}")
        return _read_json(path)
    torch.manual_seed(0)
    detector = MODELS.build(load_config(str(R50_CONFIG)).model).eval()
    image, source = load_image(str(DEMO_IMAGE), 256)
    stride = detector.data_preprocessor.max_stride
    results = {"model": "EquivariantResNet-50 (C8) + EquivariantFPN, random weights (seed 0)", "image": source}
    for key, canvas, dtype in (("canvas", True, torch.float32), ("canvas_float64", True, torch.float64),
                               ("no_canvas", False, torch.float32)):
        detector.to(dtype)
        padded = pad_image(image, stride, canvas=canvas).to(dtype)
        report = measure_equivariance(detector.extract_feat, padded, detector.neck.out_field_types,
                                      detector.neck.out_strides)
        results[key] = report.to_json()
        print(report.table(f"== EquivariantResNet-50 C8 + FPN, {key}: max|rotate_fields(F(I)) - F(rot I)| / "
                           f"max|F(rot I)| =="), flush=True)
    write_json_atomic(str(path), results)
    return results


# -- 6. report -----------------------------------------------------------------------------------------------------
def write_report(out: Path, data, train_info, bench, detections, fields, equiv, seconds) -> None:
    from rotplugin.io import write_atomic, write_json_atomic

    results = bench["results"]
    report = {
        "total_seconds": seconds,  # this run (steps kept from an earlier run are not counted)
        "data": data,
        "train": train_info,
        "modes": {m: {"mAP": results[m]["mAP"], "sec_per_img": results[m]["sec_per_img"],
                      "per_class_AP": results[m]["per_class_AP"], "time_split": results[m]["time_split"]}
                  for m in MODES if m in results},
        "angles": results.get("feature", {}).get("angles"),
        "fields": fields,
        "equivariance": equiv,
        "pictures": {"benchmark": os.path.relpath(bench["png"], out) if bench.get("png") else None,
                     "detections": [os.path.relpath(p, out) for p in detections],
                     "fields": fields.get("files", []) if fields else []},
    }
    write_json_atomic(str(out / "report.json"), report)
    lines = ["# rotplugin demo report", "",
             f"Synthetic DOTA ({data['train'][0]} train / {data['test'][0]} test scenes of {data['train'][1]}²), "
             f"`{DEMO_CONFIG.relative_to(ROOT)}` trained from scratch on the CPU for {train_info['epochs']} epochs "
             f"({train_info['iterations']} iterations, {train_info['seconds'] / 60:.1f} min). "
             f"This run of the demo: {seconds / 60:.1f} min"
             + (" (the training was kept from an earlier run)." if train_info.get("kept") else "."), "",
             "## Detection (DOTA mAP@0.5 on the test scenes)", "", "```", bench["table"], "```", "",
             "| mode | mAP | s / image |", "|---|---|---|"]
    for m in MODES:
        if m in results:
            lines.append(f"| {MODE_NAMES[m]} | {results[m]['mAP']:.3f} | {results[m]['sec_per_img']:.3f} |")
    if bench.get("png"):
        lines += ["", f"![benchmark]({os.path.relpath(bench['png'], out)})"]
    lines += ["", "## Detections (white: ground truth; detections with score >= 0.3)", ""]
    lines += [f"![{Path(p).stem}]({os.path.relpath(p, out)})" for p in detections]
    if fields:
        lines += ["", f"## Feature fields of the trained model ({fields['angle']:g}° on the canvas "
                      f"{tuple(fields['canvas_shape'])})", "",
                  "hue = orientation (phase of the first circular Fourier coefficient of the regular fields), "
                  "brightness = magnitude; max relative error of the passive rotation per level: "
                  + ", ".join(f"stride {lv['stride']}: {lv['max_relative_error']:.1e}" for lv in fields["levels"]),
                  ""]
        lines += [f"![{Path(p).stem}](fields/{p})" for p in fields.get("files", []) if "orientation" in p]
    if equiv:
        lines += ["", f"## Equivariance of {equiv['model']} on {equiv['image']}", "",
                  "max relative error of `rotate_fields(F(I))` against `F(rot I)`, worst over 90°/180°/270° and "
                  "levels:", ""]
        for key, title in (("canvas", "equivariant canvas, float32"), ("canvas_float64", "canvas, float64"),
                           ("no_canvas", "no canvas (plain padding), float32")):
            if key in equiv:
                lines.append(f"* {title}: {_worst(equiv[key]):.2e}")
    write_atomic(out / "report.md", lambda fh: fh.write("\n".join(lines) + "\n"), "w")
    log(f"report: {out / 'report.md'}, {out / 'report.json'}")


def _worst(report_json) -> float:
    """The largest error of an :meth:`EquivarianceReport.to_json` (over angles and levels)."""
    return max(max(entry["per_level"]) for entry in report_json["errors"])


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch

    import rotplugin  # noqa: F401  (registers the components)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args)
    train_info = train(out, args, data)
    bench = benchmark(out, args)
    detections = draw_detections(out, args.size, " ".join(args.angles))
    fields = draw_fields(out)
    equiv = None if args.skip_equivariance else equivariance_table(out)
    write_report(out, data, train_info, bench, detections, fields, equiv, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
