"""Test a detector with mmengine's Runner, optionally with rotation TTA (features or images).

    python tools/test.py CONFIG CHECKPOINT [--tta [feature|image]] [--angles 0 90 180 270] [--fibre-interp linear]
                         [--flips none horizontal vertical] [--scales 0.5 1.0 1.5] [--merge nms|fusion]
                         [--out results.pkl] [--submission-dir DIR [--merge-iou 0.1]]
                         [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

``--tta`` follows mmdet 3.x's ``tools/test.py --tta``: the model becomes ``dict(**cfg.tta_model, module=cfg.model)``
and the test pipeline ``cfg.tta_pipeline`` when the config has one. rotplugin's configs carry
``tta_model = dict(type='FeatureRotationTTAModel', ...)`` (one backbone pass, rotated features per view), so mmdet's
own tool runs the same TTA; a config without ``tta_model`` gets FeatureRotationTTAModel with 4 quarter turns.
``--tta feature`` / ``--tta image`` choose FeatureRotationTTAModel / ImageRotationTTAModel (the image-rotation
baseline) with the config's other TTA settings; ``--angles``, ``--flips``, ``--scales``, ``--merge`` and
``--fibre-interp`` override those of the config (the views are ``scales`` x ``flips`` x ``angles``, see
``rotplugin/models/tta_views.py``; ``--merge fusion`` is the rotated weighted box fusion).
(mmrotate dev-1.x's ``tools/test.py`` has no ``--tta``.)

DOTA test-set submission: ``--submission-dir DIR`` (a new or empty folder) writes ``DIR/Task1_<class>.txt`` (one line
per detection, ``<image id> <score> x1 y1 x2 y2 x3 y3 x4 y4`` in full-image coordinates) and ``DIR/<DIR name>.zip``
(what the DOTA server takes) instead of computing mAP. The test images must be patches named
``<image id>__<size>__<x>___<y>`` (``tools/dota_split.py``): mmrotate's ``DOTAMetric(merge_patches=True,
format_only=True)`` shifts each patch's boxes by its ``(x, y)`` and merges the patches of an image by class-wise
rotated NMS (IoU ``--merge-iou``, default 0.1); the files appear at once when complete (written in a temporary
folder, then renamed). The test dataset is read without annotations (``ann_file=''``, ``LoadAnnotations`` removed),
so a test split without ``labelTxt/`` works; point the config at it, e.g. ``--cfg-options
test_dataloader.dataset.data_root=data/split_ss_dota/ test_dataloader.dataset.data_prefix.img_path=test/images/``.
Works with ``--tta feature|image`` (the merged TTA detections are what is merged over patches).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

from mmengine.config import ConfigDict
from mmengine.runner import Runner

import rotplugin.mm  # noqa: F401  (registers the components and lets torch's weights_only load Runner checkpoints)
from rotplugin.engine import finish_distributed, init_cpu_distributed
from rotplugin.models.tta import DEFAULT_TTA_MODEL
from rotplugin.models.tta_views import MERGES, parse_angles, parse_flips, parse_scales
from rotplugin.presets import add_runner_args, runner_config

TTA_TYPES = {"feature": "FeatureRotationTTAModel", "image": "ImageRotationTTAModel"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", help="dump predictions to a pickle file (.pkl)")
    parser.add_argument("--tta", nargs="?", const="config", choices=["config", "feature", "image", "none"],
                        default="none", help="rotation TTA: the config's tta_model (no value), or feature / image")
    parser.add_argument("--angles", nargs="+", help="TTA view angles in degrees (default: the tta_model's)")
    parser.add_argument("--flips", nargs="+", help="TTA mirrors: none horizontal vertical (default: the tta_model's)")
    parser.add_argument("--scales", nargs="+", help="TTA image scales, e.g. 0.5 1.0 1.5 (default: the tta_model's)")
    parser.add_argument("--merge", choices=MERGES, help="how TTA views are merged: class-wise rotated NMS or rotated "
                                                        "weighted box fusion (default: the tta_model's, else nms)")
    parser.add_argument("--fibre-interp", choices=["linear", "fourier"], default=None,
                        help="rule for feature rotations between orientation steps")
    parser.add_argument("--submission-dir", help="write DOTA Task1 submission files (patches merged to full images) "
                                                 "to this new or empty folder instead of evaluating")
    parser.add_argument("--merge-iou", type=float, default=0.1,
                        help="IoU of the rotated NMS that merges patch detections (--submission-dir)")
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_test_config(args):
    cfg = runner_config(args)
    cfg.load_from = args.checkpoint
    tta_options = dict(angles=args.angles, flips=args.flips, scales=args.scales, merge=args.merge)
    if args.tta != "none":
        set_tta(cfg, args.tta, fibre_interp=args.fibre_interp, **tta_options)
    elif any(tta_options.values()) or args.fibre_interp:
        raise ValueError("--angles / --flips / --scales / --merge / --fibre-interp set the rotation TTA: add --tta")
    if args.submission_dir:
        set_submission(cfg, args.submission_dir, args.merge_iou)
    if args.out:
        if not args.out.endswith((".pkl", ".pickle")):
            raise ValueError(f"--out must be a .pkl file, got {args.out}")
        cfg.test_evaluator = list(cfg.test_evaluator) if isinstance(cfg.test_evaluator, (list, tuple)) \
            else [cfg.test_evaluator]
        # DumpResults written atomically (temp file + rename)
        cfg.test_evaluator.append(dict(type="AtomicDumpResults", out_file_path=args.out))
    return cfg


def set_tta(cfg, kind: str, angles=None, fibre_interp=None, flips=None, scales=None, merge=None) -> None:
    """mmdet 3.x's ``--tta``: ``cfg.model = dict(**cfg.tta_model, module=cfg.model)`` (``kind`` 'feature' / 'image'
    sets the type, 'config' keeps the config's), the test pipeline ``cfg.tta_pipeline`` when there is one; the
    options given (command-line strings) replace the tta_model's."""
    tta = dict(cfg.get("tta_model") or DEFAULT_TTA_MODEL)
    if kind in TTA_TYPES:
        tta["type"] = TTA_TYPES[kind]
    if angles:
        tta["angles"] = parse_angles(" ".join(angles))
    if flips:
        tta["flips"] = parse_flips(" ".join(flips))
    if scales:
        tta["scales"] = parse_scales(" ".join(scales))
    if merge:
        tta["merge"] = merge
    if fibre_interp is not None:
        tta["fibre_interp"] = fibre_interp
    cfg.model = ConfigDict(**tta, module=cfg.model)
    if cfg.get("tta_pipeline"):
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def set_submission(cfg, out_dir: str, merge_iou: float) -> None:
    """Make ``cfg`` write a DOTA submission to ``out_dir`` (see the module doc): the test evaluator merges patches
    and only formats, the test dataset is read without annotations. Refuses a non-empty ``out_dir`` before anything
    runs (mmrotate would refuse it only after the whole inference)."""
    out_dir = osp.abspath(out_dir)
    if osp.exists(out_dir) and (not osp.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"--submission-dir {out_dir} exists and is not an empty folder; remove it or name another")
    if not 0.0 <= merge_iou <= 1.0:
        raise ValueError(f"--merge-iou must be in [0, 1], got {merge_iou}")
    cfg.test_evaluator = dict(type="DOTAClassAPMetric", metric="mAP", format_only=True, merge_patches=True,
                              outfile_prefix=out_dir, iou_thr=merge_iou)
    dataset = cfg.test_dataloader.dataset
    if "ann_file" not in dataset:
        raise ValueError(f"--submission-dir: the test dataset ({dataset.get('type')}) has no ann_file to switch off; "
                         f"give a DOTADataset-like test dataset")
    dataset.ann_file = ""  # DOTADataset: every image of data_prefix.img_path, no labels
    dataset.pipeline = [t for t in dataset.get("pipeline", [])
                        if not str(t.get("type", "")).endswith("LoadAnnotations")]


def main(argv=None):
    args = parse_args(argv)
    cfg = build_test_config(args)
    init_cpu_distributed(cfg, args.launcher)  # torchrun on a machine without GPU: gloo
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    finish_distributed()
    return metrics


if __name__ == "__main__":
    main()
