"""`make demo`: the whole idea on CPU in minutes, with no download.

    python tools/demo.py [--out work_dirs/demo] [--train-images 600] [--test-images 150] [--size 256]
                         [--epochs E] [--angles A [A ...]] [--retrain] [--skip-equivariance]
                         [--config configs/demo/...py] [--data DIR] [--threads 2]

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

``--config`` trains and measures another demo variant (``configs/demo/``: the D4 and C8 ones) the same way, into
its own ``--out``; ``--data`` shares one synthetic set between such runs (default ``OUT/data``).

``--threads`` (default 2, what the README's numbers were measured with) sets torch's CPU threads: the training is
bitwise reproducible for a given thread count on a given CPU, and a different count changes the float summation
order and so the trained model (``tools/check_determinism.py`` measures it).

Each step keeps what an earlier run made with the same settings (data, trained weights, benchmark entries), so an
interrupted demo resumes; other data or epochs train again, and so does ``--retrain``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import torch
from mmdet.structures.bbox import get_box_tensor
from mmengine.dataset import pseudo_collate
from mmengine.runner import Runner
from mmrotate.registry import DATASETS, MODELS

from rotplugin.apis.benchmark import MODES, run_benchmark
from rotplugin.apis.demo import DEMO_BEST_TTA, DEMO_CONFIG, DEMO_WORK_DIR, SAMPLE_IMAGE, DemoLayout, demo_config
from rotplugin.data.dota_synth import generate_dataset
from rotplugin.equivariance import measure_equivariance, pad_image
from rotplugin.io import image_to_tensor, load_image, write_atomic, write_json_atomic
from rotplugin.models.tta import parse_angles, unwrap_model
from rotplugin.presets import load_config
from rotplugin.visualization import detection_comparison, detection_panel, visualize_detector_fields

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / DEMO_CONFIG
SAMPLE = ROOT / SAMPLE_IMAGE
R50_CONFIG = ROOT / "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"
MODE_NAMES = {"none": "no TTA", "image": "image-rotation TTA", "feature": "feature-rotation TTA"}


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / DEMO_WORK_DIR))
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--test-images", type=int, default=150)
    p.add_argument("--size", type=int, default=256, help="side of the synthetic scenes (px)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo config's)")
    p.add_argument("--angles", nargs="+", default=["0", "90", "180", "270"], help="TTA view angles (degrees)")
    p.add_argument("--retrain", action="store_true", help="train again although OUT/model.pth exists")
    p.add_argument("--skip-equivariance", action="store_true", help="skip the EquivariantResNet-50 table")
    p.add_argument("--config", default=str(CONFIG), help="the demo config to train (default: the C4 demo)")
    p.add_argument("--data", help="where the synthetic set is made / kept (default: OUT/data)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the result depends on them)")
    args = p.parse_args(argv)
    args.config = Path(args.config).resolve()
    if not args.config.is_file():
        p.error(f"--config {args.config} not found")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


# -- 1. data -----------------------------------------------------------------------------------------------------
def data_dir(out: Path, args) -> Path:
    return Path(args.data).resolve() if args.data else DemoLayout(out).data


def make_data(out: Path, args) -> dict:
    root = data_dir(out, args)
    stamp = root / "settings.json"
    settings = {"train": [args.train_images, args.size, 0], "test": [args.test_images, args.size, 1]}
    if stamp.is_file() and _read_json(stamp) == settings:
        log(f"data: kept {root} (same settings)")
        return settings
    t0 = time.perf_counter()
    for split, (num, size, seed) in settings.items():
        shutil.rmtree(root / split, ignore_errors=True)
        generate_dataset(str(root / split), num_images=num, size=size, seed=seed, workers=2, progress=False)
    write_json_atomic(str(stamp), settings)
    log(f"data: {args.train_images} train + {args.test_images} test scenes of {args.size}² in "
        f"{time.perf_counter() - t0:.0f} s -> {root}")
    return settings


def _read_json(path):
    with open(path) as f:
        return json.load(f)


# -- 2. training ---------------------------------------------------------------------------------------------------
def train(out: Path, args, data: dict) -> dict:
    model_path = DemoLayout(out).checkpoint
    info_path = DemoLayout(out).train_dir / "train.json"
    cfg = demo_config(args.config, out, args.size, args.epochs, data=data_dir(out, args))
    settings = {"data": data, "epochs": cfg.train_cfg.max_epochs}
    if args.config != CONFIG:
        settings["config"] = str(args.config.relative_to(ROOT)) if ROOT in args.config.parents else str(args.config)
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
    log(f"train: {args.config.name}, {epochs} epochs of {len(runner.train_dataloader.dataset)} images, "
        f"batch {cfg.train_dataloader.batch_size}, on the CPU ({torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - t0
    state = {"state_dict": unwrap_model(runner.model).state_dict(),
             "meta": {"config": str(args.config), "epochs": epochs}}
    write_atomic(model_path, lambda fh: torch.save(state, fh), "wb")
    info = {"seconds": seconds, "epochs": epochs, "iterations": runner.iter,
            "train_images": len(runner.train_dataloader.dataset), "sec_per_iter": seconds / max(runner.iter, 1),
            "batch_size": cfg.train_dataloader.batch_size, "torch_threads": torch.get_num_threads(),
            "settings": settings}
    write_json_atomic(str(info_path), info)
    log(f"train: {runner.iter} iterations in {seconds / 60:.1f} min -> {model_path}")
    return info


# -- 3. benchmark --------------------------------------------------------------------------------------------------
def benchmark(out: Path, args) -> dict:
    """The three modes over ``args.angles`` (NMS merge), and feature TTA in the best setting of the TTA grid
    (``DEMO_BEST_TTA``) as ``res['best']``."""
    layout = DemoLayout(out)
    cfg = demo_config(args.config, out, args.size, data=data_dir(out, args))
    test = str(data_dir(out, args) / "test")
    res = run_benchmark(cfg, str(layout.checkpoint), test, modes=MODES, angles=" ".join(args.angles),
                        out_dir=str(layout.benchmark_dir), log=log)
    print(res["table"], flush=True)
    best = {k: v for k, v in DEMO_BEST_TTA.items() if k != "angles"}
    res["best"] = dict(run_benchmark(cfg, str(layout.checkpoint), test, modes=["feature"],
                                     angles=DEMO_BEST_TTA["angles"], tta=best,
                                     out_dir=str(layout.benchmark_dir / "best"), log=log)["results"]["feature"],
                       setting=DEMO_BEST_TTA)
    return res


# -- 4. pictures ---------------------------------------------------------------------------------------------------
def draw_detections(out: Path, args, num: int = 4) -> list:
    """The test scenes with the most objects: ground truth (white) and the detections without TTA and with
    feature TTA over ``args.angles`` side by side."""
    layout = DemoLayout(out)
    angles = " ".join(args.angles)
    cfg = demo_config(args.config, out, args.size, data=data_dir(out, args))
    model = MODELS.build(cfg.model)
    state = torch.load(str(layout.checkpoint), map_location="cpu", weights_only=True)  # tensors and strings only
    model.load_state_dict(state["state_dict"])
    model.eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    classes = tuple(dataset.metainfo["classes"])
    views = parse_angles(angles)
    tta = MODELS.build(dict(cfg.tta_model, module=model, angles=views))   # the config's rotation TTA
    shutil.rmtree(layout.detections_dir, ignore_errors=True)
    layout.detections_dir.mkdir(parents=True)
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
        gt = get_box_tensor(data["data_samples"].gt_instances.bboxes)
        panels = [detection_panel(img, gt, get_box_tensor(pred.bboxes), pred.labels, pred.scores, classes, title)
                  for title, pred in (("no TTA", plain), (f"feature TTA ({len(views)} views)", feat))]
        path = layout.detections_dir / f"{Path(infos[i]['img_path']).stem}.png"
        cv2.imwrite(str(path), detection_comparison(panels, classes))
        paths.append(str(path))
    log(f"detections: {len(paths)} pictures -> {layout.detections_dir} (white: ground truth; scores >= 0.3 drawn)")
    return paths


def draw_fields(out: Path, args) -> dict:
    """The trained model's fields on the first test scene, and their passive rotation by 90°."""
    layout = DemoLayout(out)
    model = MODELS.build(demo_config(args.config, out, args.size).model)
    state = torch.load(str(layout.checkpoint), map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.eval()
    image = sorted((data_dir(out, args) / "test" / "images").iterdir())[0]
    img, image_what = load_image(str(image))
    plots = visualize_detector_fields(model, image_to_tensor(img), str(layout.fields_dir), 90.0, levels=[0, 1, 2])
    summary = plots.summary(str(layout.fields_dir), model=f"{args.config.name} with weights {layout.checkpoint}",
                            image=image_what, equivariant_canvas=True)
    write_json_atomic(str(layout.fields_dir / "fields.json"), summary)
    log(f"fields: {len(plots.paths)} pictures -> {layout.fields_dir}")
    return summary


# -- 5. equivariance of the full-size backbone ------------------------------------------------------------------
def equivariance_table(out: Path) -> dict:
    path = out / "equivariance.json"
    if path.is_file():
        log(f"equivariance: kept {path}")
        return _read_json(path)
    torch.manual_seed(0)
    detector = MODELS.build(load_config(str(R50_CONFIG)).model).eval()
    img, source = load_image(str(SAMPLE) if SAMPLE.is_file() else None, (256, 256))
    image = image_to_tensor(img)
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
def write_report(out: Path, args, data, train_info, bench, detections, fields, equiv, seconds) -> None:
    results = bench["results"]
    report = {
        "total_seconds": seconds,  # this run (steps kept from an earlier run are not counted)
        "data": data,
        "train": train_info,
        "modes": {m: {"mAP": results[m]["mAP"], "sec_per_img": results[m]["sec_per_img"],
                      "per_class_AP": results[m]["per_class_AP"], "time_split": results[m]["time_split"]}
                  for m in MODES if m in results},
        "angles": results.get("feature", {}).get("angles"),
        "best_tta": {k: bench["best"][k] for k in ("setting", "mAP", "sec_per_img", "backbone_passes")}
        if "best" in bench else None,
        "fields": fields,
        "equivariance": equiv,
        "pictures": {"benchmark": os.path.relpath(bench["png"], out) if bench.get("png") else None,
                     "detections": [os.path.relpath(p, out) for p in detections],
                     "fields": fields.get("files", []) if fields else []},
    }
    write_json_atomic(str(out / "report.json"), report)
    lines = ["# rotplugin demo report", "",
             f"Synthetic DOTA ({data['train'][0]} train / {data['test'][0]} test scenes of {data['train'][1]}²), "
             f"`{args.config.name}` trained from scratch on the CPU for {train_info['epochs']} epochs "
             f"({train_info['iterations']} iterations, {train_info['seconds'] / 60:.1f} min). "
             f"This run of the demo: {seconds / 60:.1f} min"
             + (" (the training was kept from an earlier run)." if train_info.get("kept") else "."), "",
             "## Detection (DOTA mAP@0.5 on the test scenes)", "", "```", bench["table"], "```", "",
             "| mode | mAP | s / image |", "|---|---|---|"]
    for m in MODES:
        if m in results:
            lines.append(f"| {MODE_NAMES[m]} | {results[m]['mAP']:.3f} | {results[m]['sec_per_img']:.3f} |")
    if bench.get("best"):
        b = bench["best"]
        what = ", ".join(f"{k} {v}" for k, v in b["setting"].items())
        lines.append(f"| feature TTA, the best setting of tools/benchmark_tta_grid.py ({what}) | {b['mAP']:.3f} | "
                     f"{b['sec_per_img']:.3f} |")
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
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, args)
    train_info = train(out, args, data)
    bench = benchmark(out, args)
    detections = draw_detections(out, args)
    fields = draw_fields(out, args)
    equiv = None if args.skip_equivariance else equivariance_table(out)
    write_report(out, args, data, train_info, bench, detections, fields, equiv, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
