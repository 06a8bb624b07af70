"""Feature-rotation TTA against image-rotation TTA: time and agreement, measured side by side in one run (CPU).

    python tools/benchmark_tta.py [--json OUT [--force]] [--size S] [--depth D] [--orientation N]
                                  [--models rotated_retinanet oriented_rcnn] [--view-batch K]

For Rotated RetinaNet and Oriented R-CNN with an EquivariantResNet (default depth 50, C8) + EquivariantFPN, seeded
random weights, on the real DOTA image (../shared/data/dota_samples/images/demo.jpg resized to S, else a synthetic
scene) padded to the equivariant canvas (1025 for S = 1024):

* ``B``: backbone + neck time, ``H``: heads time of one view (medians);
* ``measured_ratio`` = feature-TTA time / image-TTA time, ``ideal_ratio`` = (B + V·H) / (V·(B + H)) for V views;
* with ``--view-batch K``: both TTAs again with K views per heads call (image TTA: per backbone call too),
  ``*_batched_over_one`` = that time / the one-view-at-a-time time, ``*_batched_matched`` the detections paired;
* agreement of the merged detections (``max_box_diff_px``, ``max_score_diff`` over paired detections,
  ``matched`` = fraction paired within 1e-3 px / 1e-4, ``num_dets``) — for 4 views at 90° steps (exact on the
  canvas) and for 8 views at 45° steps (C8 elements, spatially interpolated, so only approximate).

Also recorded, per method (seconds per run, from the TTA models' own timings): ``*_heads_s`` (all views' heads) and
``*_merge_s`` (the class-wise rotated NMS of the views). The ideal counts neither the merge nor the heads' dependence
on the view (``H`` is the 0° view's); with random weights both are large at small sizes (at 513², 8 views at 45°:
heads 1.4-5.4 s per view, merge of 16000 boxes 7-8.5 s), so compare at the 1025² canvas.

Random weights score near the prior, so the heads' ``score_thr`` is lowered to compare hundreds of boxes.
The JSON is written atomically (temp file + rename) after every measurement, each entry with the settings it was
measured with; rerun with the same ``--json`` and the entries already there with the same settings are skipped
(``--force`` measures them again), so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from mmdet.structures import DetDataSample
from mmrotate.registry import MODELS

from rotplugin.apis.demo import SAMPLE_IMAGE
from rotplugin.boxes import match_detections
from rotplugin.io import ResumableResults, load_image
from rotplugin.models.tta import FeatureRotationTTAModel, ImageRotationTTAModel
from rotplugin.presets import load_config
from rotplugin.timing import median_time

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "rotated_retinanet": "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py",
    "oriented_rcnn": "configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_1x_dota.py",
}
# random weights: RetinaNet's scores sit near its 0.01 prior, Oriented R-CNN's near 1/16
DEFAULT_SCORE_THR = {"rotated_retinanet": 0.005, "oriented_rcnn": 0.02}
SAMPLE = ROOT / SAMPLE_IMAGE


def build(name, depth, orientation, score_thr):
    cfg = load_config(str(ROOT / CONFIGS[name]))
    cfg.model.backbone.update(depth=depth, orientation=orientation)
    cfg.model.neck.orientation = orientation
    if depth in (18, 34):
        cfg.model.neck.in_channels = [64, 128, 256, 512]
    test_cfg = cfg.model.test_cfg.get("rcnn", cfg.model.test_cfg)
    test_cfg.score_thr = score_thr
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def batch(size):
    img, source = load_image(str(SAMPLE) if SAMPLE.is_file() else None, (size, size))
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0),
                                         img_id="demo"))
    return dict(inputs=[torch.from_numpy(img).permute(2, 0, 1).contiguous()], data_samples=[sample]), source


def dets(sample):
    p = sample.pred_instances
    return p.bboxes.tensor, p.scores, p.labels


@torch.no_grad()
def measure(model, data, angles, repeat, score_thr, view_batch=None):
    pre = model.data_preprocessor(data, False)
    x, samples = pre["inputs"], pre["data_samples"]
    kw = dict(angles=angles, score_thr=score_thr, iou_thr=0.1)
    feat_tta = FeatureRotationTTAModel(model, view_batch=1, **kw)
    img_tta = ImageRotationTTAModel(model, view_batch=1, **kw)
    t_b, feats = median_time(lambda: model.extract_feat(x), repeat)
    views = [feat_tta.view_sample(s, 0, tuple(x.shape[-2:])) for s in samples]
    t_h, _ = median_time(lambda: feat_tta.predict_view(feats, views), repeat)
    t_feat, out_feat = median_time(lambda: feat_tta.predict(x, samples), repeat)
    t_img, out_img = median_time(lambda: img_tta.predict(x, samples), repeat)
    v = len(angles)
    a, b = dets(out_feat[0]), dets(out_img[0])
    matched, box_diff, score_diff = match_detections(a, b)
    batched = {}
    if view_batch:   # the same TTA with view_batch views per heads call (image TTA: per backbone call too)
        for name, cls, one, t_one in (("feature", FeatureRotationTTAModel, out_feat, t_feat),
                                      ("image", ImageRotationTTAModel, out_img, t_img)):
            tta = cls(model, view_batch=view_batch, **kw)
            t, out = median_time(lambda: tta.predict(x, samples), repeat)
            frac, _, _ = match_detections(dets(out[0]), dets(one[0]))
            batched.update({f"{name}_tta_batched_s": t, f"{name}_batched_over_one": t / t_one,
                            f"{name}_batched_matched": frac})
    return {
        "views": v, "canvas": list(x.shape[-2:]), "backbone_neck_s": t_b, "heads_per_view_s": t_h,
        "feature_tta_s": t_feat, "image_tta_s": t_img,
        "ideal_ratio": (t_b + v * t_h) / (v * (t_b + t_h)), "measured_ratio": t_feat / t_img,
        "rotation_s": feat_tta.timings["rotation"] / repeat,
        "feature_heads_s": feat_tta.timings["heads"] / repeat, "image_heads_s": img_tta.timings["heads"] / repeat,
        "feature_merge_s": feat_tta.timings["merge"] / repeat, "image_merge_s": img_tta.timings["merge"] / repeat,
        "max_box_diff_px": box_diff, "max_score_diff": score_diff, "matched": matched,
        "num_dets": len(a[0]), "num_dets_image_tta": len(b[0]), "view_batch": view_batch, **batched,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write (and resume) the results here")
    parser.add_argument("--force", action="store_true", help="measure again what --json already holds")
    parser.add_argument("--size", type=int, default=1024, help="image side before padding to the canvas")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--orientation", type=int, default=8)
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per measurement (median)")
    parser.add_argument("--score-thr", type=float, default=None,
                        help="heads' and merge score threshold (default: 0.005 RetinaNet, 0.02 Oriented R-CNN)")
    parser.add_argument("--no-45", action="store_true", help="skip the 8-view 45° measurement")
    parser.add_argument("--view-batch", type=int, default=None,
                        help="also time both TTAs with this many views per heads call (view_batch; the default "
                             "runs one view at a time) and record *_batched_over_one")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    data, source = batch(args.size)
    print(f"image: {source}; EquivariantResNet-{args.depth} C{args.orientation}; torch threads "
          f"{torch.get_num_threads()}")
    results = ResumableResults(args.json, force=args.force)
    results.data.update({"image": source, "depth": args.depth, "orientation": args.orientation})
    for name in args.models:
        score_thr = args.score_thr if args.score_thr is not None else DEFAULT_SCORE_THR[name]
        runs = [(name, [0, 90, 180, 270])]
        if not args.no_45 and args.orientation % 8 == 0:
            runs.append((f"{name}_45", [45 * i for i in range(8)]))
        settings = {key: dict(image=source, size=args.size, depth=args.depth, orientation=args.orientation,
                              repeat=args.repeat, score_thr=score_thr, angles=angles, view_batch=args.view_batch,
                              threads=torch.get_num_threads()) for key, angles in runs}
        runs = [(key, angles) for key, angles in runs if not results.done(key, settings[key])]
        if not runs:
            continue
        model = build(name, args.depth, args.orientation, score_thr)
        with torch.no_grad():
            model.extract_feat(model.data_preprocessor(data, False)["inputs"])  # warm-up (escnn eval filters)
        for key, angles in runs:
            r = results.put(key, measure(model, data, angles, args.repeat, score_thr, args.view_batch),
                            settings[key])
            print(f"{key:>24}: views {r['views']}  B {r['backbone_neck_s']:.2f}s  H {r['heads_per_view_s']:.2f}s  "
                  f"feature {r['feature_tta_s']:.2f}s  image {r['image_tta_s']:.2f}s  ratio {r['measured_ratio']:.3f}"
                  f" (ideal {r['ideal_ratio']:.3f}, goal <= {1.05 * r['ideal_ratio']:.3f})  "
                  f"dets {r['num_dets']}/{r['num_dets_image_tta']} matched {r['matched']:.3f} "
                  f"max box diff {r['max_box_diff_px']:.2e}px score {r['max_score_diff']:.2e}" + (
                      f"  view_batch {args.view_batch}: feature {r['feature_batched_over_one']:.3f}x, image "
                      f"{r['image_batched_over_one']:.3f}x of one view at a time" if args.view_batch else ""))
    results.save()
    return results.data


if __name__ == "__main__":
    main()
