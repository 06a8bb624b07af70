"""Deployment speed and memory, measured side by side in one run (CPU): the escnn detector, its stock PyTorch export,
ONNX Runtime, and mmrotate's own R50-FPN detector.

    python tools/benchmark_deploy.py [--json OUT [--force]] [--models rotated_retinanet oriented_rcnn]
                                     [--size S] [--repeat R] [--threads T] [--work DIR]

For Rotated RetinaNet and Oriented R-CNN with EquivariantResNet-50 C8 + EquivariantFPN (the shipped configs), seeded
random weights, on the real DOTA image (../shared/data/dota_samples/images/demo.jpg at S², else a synthetic scene)
on the equivariant canvas ((S + 1)², 1025² for S = 1024). Each variant runs in its own process, one after another,
so that its peak memory is its own:

* ``escnn``: the config's detector in eval mode (escnn modules, filters expanded by the warm-up pass);
* ``pytorch``: ``tools/export.py``'s stock mmrotate detector (mmdet ``ResNet`` + ``FPN``), eager PyTorch, batch
  norms removed by ``mmcv.cnn.fuse_conv_bn`` (the export folds their scale into the convolutions already);
* ``onnxruntime``: ``model.onnx`` (+ ``roi_bbox_head.onnx``) on ONNX Runtime, decoding and NMS by the stock heads
  (:class:`rotplugin.deploy.onnx.OnnxDetector`); backbone + neck alone from a graph of ``extract_feat``;
* ``onnxruntime_tta``: 4-view rotation TTA on ONNX Runtime: feature TTA = ``model_tta.onnx`` (one call: backbone +
  neck once, the heads on the 4 quarter-turned pyramids), image TTA = ``model.onnx`` on the 4 quarter-turned inputs
  (``OnnxDetector.predict_image_tta``), merged by the same class-wise rotated NMS;
* ``stock_r50``: mmrotate's own R50-FPN config of the same detector (``mmrotate::<...>_r50_fpn_1x_dota.py``) on the
  S² input with stock padding, carrying the exported weights (the keys are the same): what is left of the
  equivariant design once exported is the canvas (S + 1)² and the FPN's bilinear (exact) upsampling.

Per variant: ``backbone_neck_s`` (``extract_feat``) and ``detector_s`` (``predict`` of the preprocessed batch:
network, box decoding, NMS, rescaling), medians of ``--repeat`` runs after one untimed warm-up; ``loaded_rss_mb``
(resident memory once the model is built) and ``peak_rss_mb`` (the process's peak, ``VmHWM``); ``num_dets``;
``escnn_loaded`` (whether the process imported escnn). ``summary`` holds the ratios of issue 15's goals:
pytorch / stock_r50 ≤ 1.05, onnxruntime / pytorch ≤ 1, and feature-TTA / image-TTA ≤ 1.05 × the ideal
(B + 4H) / (4(B + H)), B and H of ONNX Runtime (H = detector_s − backbone_neck_s of one view).

Random weights score near the prior, and the decoding and NMS are the same Python code in every variant, so the
heads' ``score_thr`` (and the TTA merge's) is set where few random boxes pass (``DEFAULT_SCORE_THR``): the timings
are the network's, as with a trained model, not those of NMS over tens of thousands of random boxes. The exports, checkpoints and the preprocessed
batch are kept in ``--work`` (reused when made with the same settings). The JSON is written atomically after every
variant, each entry with its settings; a rerun with the same ``--json`` skips what is there (``--force`` redoes it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from rotplugin.apis.demo import SAMPLE_IMAGE
from rotplugin.io import ResumableResults, load_image, write_json_atomic
from rotplugin.timing import median_time

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "rotated_retinanet": "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py",
    "oriented_rcnn": "configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_1x_dota.py",
}
STOCK_CONFIGS = {
    "rotated_retinanet": "mmrotate::rotated_retinanet/rotated-retinanet-rbox-le90_r50_fpn_1x_dota.py",
    "oriented_rcnn": "mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_1x_dota.py",
}
# random weights: RetinaNet's scores sit near its 0.01 prior, Oriented R-CNN's near 1/16, so at the configs' 0.05
# Oriented R-CNN would send all 2000 RoIs x 15 classes through NMS (30 s of 40 s here, in every variant alike):
# 0.1 keeps the RoI head's decoding as light as a trained model's; RetinaNet keeps 0.05
DEFAULT_SCORE_THR = {"rotated_retinanet": 0.05, "oriented_rcnn": 0.1}
VARIANTS = ("escnn", "pytorch", "onnxruntime", "onnxruntime_tta", "stock_r50")
TTA_ANGLES = (0.0, 90.0, 180.0, 270.0)
SAMPLE = ROOT / SAMPLE_IMAGE


# --- the parent: prepare the exports, run a child per variant, summarise ------------------------------------------
def _set_score_thr(cfg, score_thr):
    test_cfg = cfg.model.test_cfg.get("rcnn", cfg.model.test_cfg)
    test_cfg.score_thr = score_thr
    if cfg.get("tta_model"):
        cfg.tta_model.score_thr = score_thr


def prepare(name, folder: Path, size: int, score_thr: float, threads: int, log=print) -> None:
    """In ``folder``: ``config.py`` and the seeded ``source.pth``, their export with the ONNX graphs (``export/``),
    a graph of the stock model's ``extract_feat`` (``backbone_neck.onnx``) and the preprocessed batch
    (``batch.pt``)."""
    from mmdet.structures import DetDataSample
    from mmrotate.registry import MODELS

    from rotplugin.apis.export import build_detector, export_detector
    from rotplugin.deploy.onnx import export_graph
    from rotplugin.mm import register_all_modules
    from rotplugin.presets import load_config

    register_all_modules()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(str(ROOT / CONFIGS[name]))
    _set_score_thr(cfg, score_thr)
    cfg.dump(str(folder / "config.py"))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save({"state_dict": model.state_dict()}, str(folder / "source.pth"))
    img, source = load_image(str(SAMPLE) if SAMPLE.is_file() else None, (size, size))
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0),
                                         img_id="demo"))
    data = dict(inputs=[torch.from_numpy(img).permute(2, 0, 1).contiguous()], data_samples=[sample])
    with torch.no_grad():
        pre = model.eval().data_preprocessor(data, False)
    torch.save({"inputs": pre["inputs"], "metainfo": dict(pre["data_samples"][0].metainfo), "image": source},
               str(folder / "batch.pt"))
    del model
    t0 = time.perf_counter()
    export_detector(folder / "config.py", folder / "source.pth", folder / "export", onnx=True,
                    tta_angles=TTA_ANGLES, threads=threads, overwrite=True, log=log)
    log(f"{name}: exported in {time.perf_counter() - t0:.0f} s")
    _, stock = build_detector(folder / "export" / "model.py", folder / "export" / "model.pth")
    with torch.no_grad():
        levels = len(stock.extract_feat(pre["inputs"]))
    export_graph(_BackboneNeck(stock), pre["inputs"], folder / "backbone_neck.onnx", "inputs",
                 [f"feat_{i}" for i in range(levels)])


class _BackboneNeck(torch.nn.Module):
    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, inputs):
        return tuple(self.det.extract_feat(inputs))


def run_child(variant: str, name: str, folder: Path, size: int, repeat: int, threads: int) -> dict:
    out = folder / f"{variant}.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--models", name, "--work",
           str(folder.parent), "--size", str(size), "--repeat", str(repeat), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{name}/{variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarise(entries: dict, name: str) -> dict:
    e = {v: entries.get(f"{name}/{v}") for v in VARIANTS}
    out = {}
    for num, den, key, goal in (("pytorch", "stock_r50", "pytorch_over_stock_r50", 1.05),
                                ("onnxruntime", "pytorch", "onnxruntime_over_pytorch", 1.0),
                                ("escnn", "pytorch", "escnn_over_pytorch", None)):
        if e[num] and e[den]:
            r = {part: _ratio(e[num][f"{part}_s"], e[den][f"{part}_s"]) for part in ("backbone_neck", "detector")}
            r["peak_rss"] = _ratio(e[num]["peak_rss_mb"], e[den]["peak_rss_mb"])
            if goal is not None:
                r["goal"] = goal
                r["met"] = max(r["backbone_neck"], r["detector"]) <= goal
            out[key] = r
    if e["onnxruntime"] and e["onnxruntime_tta"]:
        b = e["onnxruntime"]["backbone_neck_s"]
        h = e["onnxruntime"]["detector_s"] - b
        v = len(TTA_ANGLES)
        ideal = (b + v * h) / (v * (b + h))
        t = e["onnxruntime_tta"]
        measured = t["feature_tta_s"] / t["image_tta_s"]
        out["onnxruntime_tta"] = {"B_s": b, "H_s": h, "ideal_ratio": ideal, "measured_ratio": measured,
                                  "goal": 1.05 * ideal, "met": measured <= 1.05 * ideal}
    return out


# --- a child: one variant, timed ----------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: that one survives exec and so reports the parent's peak when it was larger
    return _status_mb("VmHWM")


def timed(fn, repeat):
    return median_time(fn, repeat, warmup=1)   # warm-up: escnn's eval filters, ONNX Runtime's first allocations


def _stock_model(path, checkpoint, score_thr=None):
    """A stock mmrotate detector of the config file ``path`` with the weights of ``checkpoint`` (strict)."""
    from mmengine.config import Config
    from mmrotate.registry import MODELS
    from mmrotate.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None    # no download: the weights come from the checkpoint
    if score_thr is not None:
        _set_score_thr(cfg, score_thr)
    model = MODELS.build(cfg.model)
    model.load_state_dict(torch.load(str(checkpoint), map_location="cpu")["state_dict"], strict=True)
    return model.eval()


def child(variant: str, name: str, folder: Path, size: int, repeat: int, threads: int) -> dict:
    from mmdet.structures import DetDataSample

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    batch = torch.load(str(folder / "batch.pt"), weights_only=False)
    x, meta = batch["inputs"], batch["metainfo"]
    export = folder / "export"
    if variant == "escnn":
        from rotplugin.apis.export import build_detector

        model = build_detector(folder / "config.py", folder / "source.pth")[1]
    elif variant in ("pytorch", "stock_r50"):
        from mmcv.cnn import fuse_conv_bn

        if variant == "pytorch":
            model = _stock_model(export / "model.py", export / "model.pth")
        else:
            stock_cfg = folder / "stock_r50.py"      # Config.fromfile reads mmrotate:: paths only as a base
            stock_cfg.write_text(f"_base_ = [{STOCK_CONFIGS[name]!r}]\n")
            model = _stock_model(stock_cfg, export / "model.pth", DEFAULT_SCORE_THR[name])
        if variant == "pytorch":
            model = fuse_conv_bn(model)
        else:   # the stock detector sees the image with stock padding (S is a multiple of 32)
            x = x[..., :size, :size].contiguous()
            meta = dict(meta, batch_input_shape=(size, size), pad_shape=(size, size))
    else:
        from rotplugin.deploy.onnx import OnnxDetector, OrtSession

        det = _stock_model(export / "model.py", export / "model.pth")
        det.backbone, det.neck = torch.nn.Identity(), torch.nn.Identity()   # ONNX Runtime runs them
        runner = OnnxDetector(det, export, threads=threads)
    samples = [DetDataSample(metainfo=meta)]
    result = {"loaded_rss_mb": _rss_mb(), "canvas": list(x.shape[-2:])}
    if variant == "onnxruntime_tta":
        tta = OnnxDetector(det, export, threads=threads, tta=True)
        result["feature_tta_s"], feat = timed(lambda: tta.predict(x, samples), repeat)
        result["image_tta_s"], img = timed(lambda: runner.predict_image_tta(x, samples, TTA_ANGLES), repeat)
        from rotplugin.boxes import match_detections

        a, b = (_dets(out[0]) for out in (feat, img))
        matched, box_diff, score_diff = match_detections(a, b)
        result.update(measured_ratio=result["feature_tta_s"] / result["image_tta_s"], num_dets=len(a[0]),
                      num_dets_image_tta=len(b[0]), matched=matched, max_box_diff_px=box_diff,
                      max_score_diff=score_diff)
    else:
        if variant == "onnxruntime":
            graph = OrtSession(folder / "backbone_neck.onnx", threads)
            result["backbone_neck_s"], _ = timed(lambda: graph(x), repeat)
            del graph
            result["detector_s"], out = timed(lambda: runner.predict(x, samples), repeat)
        else:
            result["backbone_neck_s"], _ = timed(lambda: model.extract_feat(x), repeat)
            result["detector_s"], out = timed(lambda: model.predict(x, [s.clone() for s in samples]), repeat)
        result["num_dets"] = len(out[0].pred_instances.scores)
    result.update(peak_rss_mb=_peak_rss_mb(), escnn_loaded="escnn" in sys.modules, threads=torch.get_num_threads())
    write_json_atomic(folder / f"{variant}.json", result)
    return result


def _dets(sample):
    from mmdet.structures.bbox import get_box_tensor

    p = sample.pred_instances
    return get_box_tensor(p.bboxes), p.scores, p.labels


# --- command line -------------------------------------------------------------------------------------------------
def _print_table(data, models):
    print(f"\n{'model / variant':>34} | {'backbone+neck s':>15} | {'detector s':>10} | {'peak RSS MB':>11} | dets")
    for name in models:
        for v in VARIANTS:
            e = data.get(f"{name}/{v}")
            if not e:
                continue
            if v == "onnxruntime_tta":
                print(f"{name + '/' + v:>34} | feature TTA {e['feature_tta_s']:.2f} s, image TTA "
                      f"{e['image_tta_s']:.2f} s | {e['peak_rss_mb']:11.0f} | {e['num_dets']}/"
                      f"{e['num_dets_image_tta']} (matched {e['matched']:.3f})")
                continue
            print(f"{name + '/' + v:>34} | {e['backbone_neck_s']:15.2f} | {e['detector_s']:10.2f} | "
                  f"{e['peak_rss_mb']:11.0f} | {e['num_dets']}")
        print(f"{name}: " + json.dumps(data.get("summary", {}).get(name, {}), indent=None))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write (and resume) the results here")
    parser.add_argument("--force", action="store_true", help="measure again what --json already holds")
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--size", type=int, default=1024, help="image side (a multiple of 32); canvas side S + 1")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--work", default=str(ROOT / "work_dirs" / "benchmark_deploy"),
                        help="exports, checkpoints and the preprocessed batch")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 32:
        parser.error(f"--size must be a positive multiple of 32 (the stock detector's padding), got {args.size}")
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    work = Path(args.work)
    if args.child:
        child(args.child, args.models[0], work / args.models[0], args.size, args.repeat, args.threads)
        return None

    results = ResumableResults(args.json, force=args.force)
    for name in args.models:
        score_thr = DEFAULT_SCORE_THR[name]
        base = dict(size=args.size, repeat=args.repeat, threads=args.threads, score_thr=score_thr, seed=0,
                    image=str(SAMPLE.resolve()) if SAMPLE.is_file() else "synthetic")
        todo = [v for v in args.variants if not results.done(f"{name}/{v}", dict(base, variant=v))]
        if not todo:
            continue
        folder = work / name
        stamp = folder / "prepared.json"
        prep = dict(base, repeat=None)
        if not stamp.is_file() or json.loads(stamp.read_text()) != json.loads(json.dumps(prep)):
            prepare(name, folder, args.size, score_thr, args.threads)
            write_json_atomic(stamp, prep)
        for v in todo:
            t0 = time.perf_counter()
            r = run_child(v, name, folder, args.size, args.repeat, args.threads)
            results.put(f"{name}/{v}", r, dict(base, variant=v))
            print(f"{name}/{v}: {json.dumps(r)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        results.data.setdefault("summary", {})[name] = summarise(results.data, name)
        results.save()
    _print_table(results.data, args.models)
    return results.data


if __name__ == "__main__":
    main()
