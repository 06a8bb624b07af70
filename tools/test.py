"""Test a detector with mmengine's Runner, optionally with rotation TTA (features or images).

    python tools/test.py CONFIG CHECKPOINT [--tta feature|image|none] [--angles 0 90 180 270]
                         [--out results.pkl] [--submission-dir DIR [--merge-iou 0.1]]
                         [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

``--tta feature`` adds ``FeatureRotationTTAHook`` (one backbone pass, rotated features per view); ``--tta image`` the
image-rotation baseline; ``none`` (default) plain inference.

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

from rotplugin.presets import add_runner_args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", help="dump predictions to a pickle file (.pkl)")
    parser.add_argument("--tta", choices=["feature", "image", "none"], default="none")
    parser.add_argument("--angles", nargs="+", default=["0", "90", "180", "270"], help="TTA view angles (degrees)")
    parser.add_argument("--fibre-interp", choices=["linear", "fourier"], default=None,
                        help="rule for feature rotations between orientation steps")
    parser.add_argument("--submission-dir", help="write DOTA Task1 submission files (patches merged to full images) "
                                                 "to this new or empty folder instead of evaluating")
    parser.add_argument("--merge-iou", type=float, default=0.1,
                        help="IoU of the rotated NMS that merges patch detections (--submission-dir)")
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_test_config(args):
    from rotplugin.models.tta import parse_angles
    from rotplugin.presets import runner_config

    cfg = runner_config(args)
    cfg.load_from = args.checkpoint
    if args.tta != "none":
        hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != "FeatureRotationTTAHook"]
        # a TTA hook of the config keeps its other settings (score_thr, iou_thr, max_per_img, on_val)
        tta = next((dict(h) for h in cfg.get("custom_hooks", []) if h.get("type") == "FeatureRotationTTAHook"), {})
        tta.update(type="FeatureRotationTTAHook", mode=args.tta, angles=parse_angles(" ".join(args.angles)))
        if args.fibre_interp is not None:
            tta.update(fibre_interp=args.fibre_interp)
        hooks.append(tta)
        cfg.custom_hooks = hooks
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


def set_submission(cfg, out_dir: str, merge_iou: float) -> None:
    """Make ``cfg`` write a DOTA submission to ``out_dir`` (see the module doc): the test evaluator merges patches
    and only formats, the test dataset is read without annotations. Refuses a non-empty ``out_dir`` before anything
    runs (mmrotate would refuse it only after the whole inference)."""
    import os
    import os.path as osp

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
    from mmengine.runner import Runner

    from rotplugin.engine import finish_distributed, init_cpu_distributed
    from rotplugin.presets import trusted_checkpoints

    args = parse_args(argv)
    cfg = build_test_config(args)
    init_cpu_distributed(cfg, args.launcher)  # torchrun on a machine without GPU: gloo
    runner = Runner.from_cfg(cfg)
    with trusted_checkpoints():  # the checkpoint is usually one an mmengine Runner wrote
        metrics = runner.test()
    finish_distributed()
    return metrics


if __name__ == "__main__":
    main()
