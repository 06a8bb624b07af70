"""Test a detector with mmengine's Runner, optionally with rotation TTA (features or images).

    python tools/test.py CONFIG CHECKPOINT [--tta feature|image|none] [--angles 0 90 180 270]
                         [--out results.pkl] [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

``--tta feature`` adds ``FeatureRotationTTAHook`` (one backbone pass, rotated features per view); ``--tta image`` the
image-rotation baseline; ``none`` (default) plain inference.
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
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_test_config(args):
    from rotplugin.models.tta import parse_angles
    from rotplugin.presets import runner_config

    cfg = runner_config(args)
    cfg.load_from = args.checkpoint
    if args.tta != "none":
        hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != "FeatureRotationTTAHook"]
        hooks.append(dict(type="FeatureRotationTTAHook", mode=args.tta, angles=parse_angles(" ".join(args.angles)),
                          fibre_interp=args.fibre_interp))
        cfg.custom_hooks = hooks
    if args.out:
        if not args.out.endswith((".pkl", ".pickle")):
            raise ValueError(f"--out must be a .pkl file, got {args.out}")
        cfg.test_evaluator = list(cfg.test_evaluator) if isinstance(cfg.test_evaluator, (list, tuple)) \
            else [cfg.test_evaluator]
        cfg.test_evaluator.append(dict(type="DumpResults", out_file_path=args.out))
    return cfg


def main(argv=None):
    from mmengine.runner import Runner

    from rotplugin.engine import init_cpu_distributed
    from rotplugin.presets import trusted_checkpoints

    args = parse_args(argv)
    cfg = build_test_config(args)
    init_cpu_distributed(cfg, args.launcher)  # torchrun on a machine without GPU: gloo
    runner = Runner.from_cfg(cfg)
    with trusted_checkpoints():  # the checkpoint is usually one an mmengine Runner wrote
        return runner.test()


if __name__ == "__main__":
    main()
