"""Does equivariance pay on real imagery? Equal-budget, from-scratch CPU training on real DOTA patches.

    python tools/benchmark_real.py [--data-dir ../shared/data/dota_real] [--out-dir work_dirs/benchmark_real]
                                   [--models a b c d] [--seeds 0 1] [--iters 600] [--patch-size 256]
                                   [--batch-size 4] [--quick] [--force]

Rotated RetinaNet (le90) with (a) EquivariantResNet-18 C4 + EquivariantFPN, (b) the same with C8, (c) a plain
ResNet-18 + FPN of the same channel widths and (d) a plain ResNet-18 narrowed to (a)'s parameter count, each
trained from scratch for the same iterations with the same schedule and augmentation (random rotation + flips)
on patches of P0003, P0004 and the top of P0706, and tested on regions training never sees (P0005 and the bottom
of P0706): DOTA Task1 mAP (VOC07, IoU 0.5) with no TTA, image-rotation TTA, feature-rotation TTA (equivariant
models only) and on the held-out images rotated by 90° and 30°. (a) and (c) are trained once per seed (default 0
and 1) for the seed-to-seed spread, (b) and (d) with the first seed.

Defaults (full run: 40.3 min measured on 2 CPU cores): 600 iterations of 4 patches of 256² (stride-64 canvas 257²),
widths 32 (stem/base) and 64 (FPN/head). ``--quick``: a smoke run of a minute or two (8 iterations of 2 patches
of 128², seed 0, 257² held-out crops, output in ``work_dirs/benchmark_real_quick``); options given explicitly
override it. A rerun skips trained runs and measured evaluations with the same settings (an interrupted training
restarts that run); ``--force`` does everything again.

Outputs in ``--out-dir``: ``benchmark_real.json``, ``benchmark_real.png``, ``benchmark_real.md`` (the README table,
also printed), ``runs/<model>_seed<s>/model.pth``, ``data/``. Every choice (split, cut objects, augmentation,
what is timed) is documented in ``rotplugin/apis/real_benchmark.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rotplugin.apis.demo import DEMO_CONFIG
from rotplugin.data.dota_split import DOTAFormatError
from rotplugin.apis.real_benchmark import MODEL_KEYS, RealBenchmarkSettings, run_real_benchmark

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / ".." / "shared" / "data" / "dota_real"
OUT_DIR, QUICK_OUT_DIR = ROOT / "work_dirs" / "benchmark_real", ROOT / "work_dirs" / "benchmark_real_quick"
FULL = dict(iters=600, patch_size=256, batch_size=4, seeds=[0, 1])
QUICK = dict(iters=8, patch_size=128, batch_size=2, seeds=[0])


def log(msg: str) -> None:
    print(f"[benchmark_real {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DATA_DIR), help="DOTA folder with images/ and labelTxt/ of P0003, "
                                                             "P0004, P0005, P0706 (default: ../shared/data/dota_real)")
    p.add_argument("--out-dir", help="output folder (default work_dirs/benchmark_real, with --quick "
                                     "work_dirs/benchmark_real_quick)")
    p.add_argument("--models", nargs="+", default=list(MODEL_KEYS), choices=list(MODEL_KEYS),
                   help="which of (a) C4, (b) C8, (c) plain same widths, (d) plain narrowed (default all)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds of (a) and (c); (b), (d) use the first "
                                                        "(default 0 1; --quick 0)")
    p.add_argument("--iters", type=int, help="training iterations of every model (default 600; --quick 8)")
    p.add_argument("--patch-size", type=int, help="training patch side in px (default 256; --quick 128)")
    p.add_argument("--batch-size", type=int, help="patches per iteration (default 4; --quick 2)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (numbers mean nothing)")
    p.add_argument("--force", action="store_true", help="train and evaluate again what the out dir already holds")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out_dir is None:
        args.out_dir = str(QUICK_OUT_DIR if args.quick else OUT_DIR)
    for key in ("iters", "patch_size", "batch_size"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    if not data_dir.is_dir():
        print(f"error: data dir {data_dir} does not exist (--data-dir: a DOTA folder with images/ and labelTxt/ "
              f"of P0003, P0004, P0005, P0706)", file=sys.stderr)
        return 2
    settings = RealBenchmarkSettings(
        data_dir=str(data_dir), out_dir=str(Path(args.out_dir).resolve()), base_config=str(ROOT / DEMO_CONFIG),
        models=args.models, seeds=args.seeds, iters=args.iters, patch_size=args.patch_size,
        batch_size=args.batch_size, quick=args.quick, force=args.force)
    try:
        res = run_real_benchmark(settings, log=log)
    except (FileNotFoundError, FileExistsError, DOTAFormatError) as err:   # bad data / out dir: named in err
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(res["table"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
