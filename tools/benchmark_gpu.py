"""GPU timings of the equivariant detectors against stock mmrotate, measured side by side in one run.

    python tools/benchmark_gpu.py [--device cuda] [--json OUT] [--quick] [--sections train tta rotate]

* ``train``: one training iteration (forward, backward, optimiser step; seconds, median of ``--iters`` after
  ``--warmup``) and the peak GPU memory of Oriented R-CNN (le90) with EquivariantResNet-50 C8 + EquivariantFPN
  (``configs/oriented_rcnn/``) against mmrotate's own R50-FPN Oriented R-CNN
  (``mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_1x_dota.py``), batch 2 of 1024² images (ours pads them to
  its 1025² canvas, stock to 1024 = a multiple of 32), each in float32 (``OptimWrapper``) and in mixed precision
  (our AMP config and mmrotate's ``..._amp-1x_dota.py``: ``AmpOptimWrapper``, float16 with dynamic loss scaling on
  CUDA, bfloat16 on the CPU; both with the Float32BoxCodingHook's patch, without which mmrotate's box coding fails
  in bfloat16). Random weights, synthetic ground truth (20 boxes per image), the config's SGD.
* ``tta``: feature-rotation TTA against image-rotation TTA (4 × 90°, each view batch at its CUDA default) of
  Oriented R-CNN and Rotated RetinaNet (R50 C8) on one 1024² image (1025² canvas): seconds per image.
* ``rotate``: ``rotate_pyramid(..., 90°, contiguous=True)`` of a 5-level pyramid of the 1025² canvas (256 channels =
  32 regular fields of C8, strides 8-128) against cloning the same tensors.

Every time is taken with the device synchronised. ``--quick`` (the dry run on a CPU): 129² images, batch 1, one
warm-up and one timed iteration. The JSON holds the settings, the device and every figure; it is written atomically
after each section.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rotplugin.io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
OURS = "configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_1x_dota.py"
OURS_AMP = "configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_amp-1x_dota.py"
STOCK = "mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_1x_dota.py"
STOCK_AMP = "mmrotate::oriented_rcnn/oriented-rcnn-le90_r50_fpn_amp-1x_dota.py"
TTA_CONFIGS = {"oriented_rcnn": OURS,
               "rotated_retinanet": "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"}
SECTIONS = ("train", "tta", "rotate")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, iters: int, warmup: int) -> float:
    """Median seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones, the device synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_gb(device, fn) -> float:
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() / 2 ** 30


def train_batch(size: int, num: int, seed: int = 0, boxes: int = 20) -> dict:
    """``num`` random images of ``size``² with ``boxes`` random oriented boxes each (cx, cy, w, h, le90 radians)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmrotate.structures.bbox import RotatedBoxes

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(num):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        ctr = 0.1 * size + 0.8 * size * torch.rand(boxes, 2, generator=g)
        wh = 8 + (0.15 * size) * torch.rand(boxes, 2, generator=g)
        angle = (torch.rand(boxes, 1, generator=g) - 0.5) * torch.pi
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0),
                                             img_id=f"synthetic{i}"))
        sample.gt_instances = InstanceData(bboxes=RotatedBoxes(torch.cat([ctr, wh, angle], 1)),
                                           labels=torch.randint(0, 15, (boxes,), generator=g))
        sample.ignored_instances = InstanceData(bboxes=RotatedBoxes(torch.zeros(0, 5)), labels=torch.zeros(0).long())
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def stock_config(name=STOCK):
    from mmengine.hub import get_config

    cfg = get_config(name)
    cfg.model.backbone.init_cfg = None          # no torchvision download: random weights, as ours
    return cfg


def build(cfg, device):
    from mmrotate.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.to(device)


def measure_train(device, size, batch, iters, warmup) -> dict:
    from mmengine.optim import build_optim_wrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper

    from rotplugin.models.mixed_precision import float32_box_coding
    from rotplugin.presets import load_config

    if torch.device(device).type != "cuda":
        amp_optimizer_wrapper.is_cuda_available = lambda: True   # CPU autocast (bfloat16), as tests/test_amp.py
    runs = {"ours_fp32": (load_config(str(ROOT / OURS)), False), "ours_amp": (load_config(str(ROOT / OURS_AMP)), True),
            "stock_fp32": (stock_config(), False), "stock_amp": (stock_config(STOCK_AMP), True)}
    data = train_batch(size, batch)
    out = {}
    for name, (cfg, patch) in runs.items():
        model = build(cfg, device).train()
        if patch:
            float32_box_coding(model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

        def step():
            return model.train_step(data, wrapper)

        seconds = timed(step, device, iters, warmup)
        out[name] = {"sec_per_iter": seconds, "peak_memory_gb": peak_memory_gb(device, step),
                     "optim_wrapper": cfg.optim_wrapper.get("type", "OptimWrapper"),
                     "canvas": list(model.data_preprocessor(data, True)["inputs"].shape[-2:])}
        peak = out[name]["peak_memory_gb"]
        print(f"  train {name}: {seconds:.3f} s/iter" + ("" if peak is None else f", peak {peak:.2f} GB"), flush=True)
        model = wrapper = None       # free the device memory before the next model
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    for prec in ("fp32", "amp"):
        out[f"ours_over_stock_{prec}"] = out[f"ours_{prec}"]["sec_per_iter"] / out[f"stock_{prec}"]["sec_per_iter"]
    out["amp_over_fp32_ours"] = out["ours_amp"]["sec_per_iter"] / out["ours_fp32"]["sec_per_iter"]
    return out


@torch.no_grad()
def measure_tta(device, size, iters, warmup) -> dict:
    from mmdet.structures import DetDataSample

    from rotplugin.models.tta import FeatureRotationTTAModel, ImageRotationTTAModel
    from rotplugin.presets import load_config

    g = torch.Generator().manual_seed(1)
    data = dict(inputs=[torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)],
                data_samples=[DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                          scale_factor=(1.0, 1.0), img_id="synthetic"))])
    out = {}
    for name, config in TTA_CONFIGS.items():
        model = build(load_config(str(ROOT / config)), device).eval()
        kw = dict(angles=[0, 90, 180, 270])
        feat, img = FeatureRotationTTAModel(model, **kw), ImageRotationTTAModel(model, **kw)
        row = {"none_s": timed(lambda: model.test_step(data), device, iters, warmup),
               "feature_tta_s": timed(lambda: feat.test_step(data), device, iters, warmup),
               "image_tta_s": timed(lambda: img.test_step(data), device, iters, warmup),
               "feature_view_batch": feat.view_batch, "image_view_batch": img.view_batch}
        row["feature_over_image"] = row["feature_tta_s"] / row["image_tta_s"]
        out[name] = row
        print(f"  tta {name}: none {row['none_s']:.3f} s, feature {row['feature_tta_s']:.3f} s, "
              f"image {row['image_tta_s']:.3f} s ({row['feature_over_image']:.2f}x)", flush=True)
        model = feat = img = None
    return out


def measure_rotate(device, canvas, iters, warmup) -> dict:
    from rotplugin.fields import rotate_pyramid
    from rotplugin.nn.field_layers import make_gspace, regular_field_type

    ft = regular_field_type(make_gspace(8), 256)
    strides = [8, 16, 32, 64, 128]
    feats = [torch.randn(1, ft.size, (canvas - 1) // s + 1, (canvas - 1) // s + 1, device=device) for s in strides]
    t_rot = timed(lambda: rotate_pyramid(feats, ft, strides, 90, contiguous=True), device, iters, warmup)
    t_clone = timed(lambda: [f.clone() for f in feats], device, iters, warmup)
    print(f"  rotate 90°: {t_rot * 1e3:.3f} ms, clone {t_clone * 1e3:.3f} ms ({t_rot / t_clone:.2f}x)", flush=True)
    return {"rot90_s": t_rot, "clone_s": t_clone, "rot90_over_clone": t_rot / t_clone,
            "shapes": [list(f.shape) for f in feats]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here (atomically, after each section)")
    p.add_argument("--quick", action="store_true", help="129² images, batch 1, 1 warm-up + 1 timed (dry runs)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    size, batch, iters, warmup = (129, 1, 1, 1) if args.quick else (1024, 2, 10, 3)
    from mmengine.registry import init_default_scope

    init_default_scope("mmrotate")
    results = {"settings": {"device": str(device), "size": size, "batch": batch, "iters": iters, "warmup": warmup,
                            "quick": args.quick},
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for section in args.sections:
        print(f"[{section}]", flush=True)
        if section == "train":
            results["train"] = measure_train(device, size, batch, iters, warmup)
        elif section == "tta":
            results["tta"] = measure_tta(device, size, iters, warmup)
        else:
            results["rotate"] = measure_rotate(device, 129 if args.quick else 1025, 5 if args.quick else 50, 2)
        if args.json:
            write_json_atomic(args.json, results)
    return results


if __name__ == "__main__":
    main()
