"""No TTA / image-rotation TTA / feature-rotation TTA of one detector on one DOTA-format set, in one table.

    python tools/benchmark.py [CONFIG CHECKPOINT] [--data-root DIR] [--modes none image feature]
                              [--angles 0 90 180 270] [--out-dir DIR] [--max-images N] [--warmup 1] [--force]
                              [--device cpu] [--cfg-options k=v ...]

Prints, per mode, the DOTA mAP (IoU 0.5) and the AP of every class with ground truth, the seconds per image and
their split (backbone+neck, heads, rotation, merge, other), and writes ``benchmark.json`` and ``benchmark.png``
(mAP bars; seconds per image stacked by the split) into ``--out-dir`` (default ``work_dirs/benchmark/<config>``),
atomically. A rerun skips the modes the JSON already holds with the same config, checkpoint, data and angles
(``--force`` measures them again), so an interrupted run resumes.

``--data-root``: a folder with ``images/`` and ``labelTxt/`` (``tools/make_synthetic_dota.py``,
``tools/dota_split.py``); without it the config's own test set. Without any argument: the demo model of
``make demo`` (``configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py``, ``work_dirs/demo/model.pth``)
on ``work_dirs/demo/data/test``, results in ``work_dirs/demo/benchmark``.

Details (what is timed, thresholds of the TTA merge): ``rotplugin/apis/benchmark.py``.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from pathlib import Path

from mmengine.config import DictAction

from rotplugin.apis.benchmark import run_benchmark
from rotplugin.apis.demo import DEMO_CONFIG, DEMO_WORK_DIR, DemoLayout

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="model config (default: the demo model)")
    parser.add_argument("checkpoint", nargs="?", help="weights (default: the demo model's)")
    parser.add_argument("--data-root", help="DOTA-format folder with images/ and labelTxt/ (default: the config's "
                                            "test set; the demo's test set without CONFIG)")
    parser.add_argument("--modes", nargs="+", default=["none", "image", "feature"],
                        help="none (plain), image (image-rotation TTA), feature (feature-rotation TTA)")
    parser.add_argument("--angles", nargs="+", default=["0", "90", "180", "270"], help="TTA view angles (degrees)")
    parser.add_argument("--out-dir", help="where benchmark.json / benchmark.png go")
    parser.add_argument("--max-images", type=int, help="only the first N images (sorted by name)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images per mode (default 1)")
    parser.add_argument("--force", action="store_true", help="measure again modes already in the JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (the time split of the TTA modes "
                                                        "is then approximate: kernels run asynchronously)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    args = parser.parse_args(argv)
    if (args.config is None) != (args.checkpoint is None):
        parser.error("give both CONFIG and CHECKPOINT, or neither (the demo model)")
    return args


def resolve_inputs(args):
    """``(config, checkpoint, data_root, out_dir)``: the demo's when no CONFIG is given (clear error when the demo
    has not been run yet)."""
    if args.config is None:
        config, demo = ROOT / DEMO_CONFIG, DemoLayout(ROOT / DEMO_WORK_DIR)
        missing = [str(p) for p in (config, demo.checkpoint, demo.test_data) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"the demo model is not there ({', '.join(missing)} missing): run `make demo` "
                                    f"first, or give CONFIG CHECKPOINT [--data-root DIR]")
        return (str(config), str(demo.checkpoint), args.data_root or str(demo.test_data),
                args.out_dir or str(demo.benchmark_dir))
    out_dir = args.out_dir or osp.join("work_dirs", "benchmark", osp.splitext(osp.basename(args.config))[0])
    return args.config, args.checkpoint, args.data_root, out_dir


def main(argv=None):
    args = parse_args(argv)
    config, checkpoint, data_root, out_dir = resolve_inputs(args)
    report = run_benchmark(config, checkpoint, data_root, modes=args.modes, angles=" ".join(args.angles),
                           out_dir=out_dir, max_images=args.max_images, force=args.force, warmup=args.warmup,
                           device=args.device, cfg_options=args.cfg_options)
    print()
    print(report["table"])
    print(f"\nwrote {report['json']} and {report['png']}")
    return report


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:  # bad input: the message, not a traceback
        print(f"tools/benchmark.py: error: {err}", file=sys.stderr)
        sys.exit(2)
