"""Train a detector with mmengine's Runner (configs with ``custom_imports=['rotplugin.mm']`` or any mmrotate config).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] [--cfg-options k=v ...]
                          [--launcher pytorch]
"""
from __future__ import annotations

import argparse

from mmengine.runner import Runner

import rotplugin.mm  # noqa: F401  (registers the components and lets torch's weights_only load Runner checkpoints)
from rotplugin.engine import finish_distributed, init_cpu_distributed
from rotplugin.presets import add_runner_args, runner_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")
    parser.add_argument("--resume", nargs="?", type=str, const="auto",
                        help="resume from CKPT, or from the latest checkpoint of the work dir when no path is given")
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_train_config(args):
    cfg = runner_config(args)
    if args.amp and cfg.optim_wrapper.get("type", "OptimWrapper") != "AmpOptimWrapper":
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_train_config(args)
    init_cpu_distributed(cfg, args.launcher)  # torchrun on a machine without GPU: gloo
    runner = Runner.from_cfg(cfg)
    runner.train()
    finish_distributed()
    return runner


if __name__ == "__main__":
    main()
