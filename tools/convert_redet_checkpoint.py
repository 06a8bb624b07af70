"""Convert an e2cnn ReDet checkpoint (mmrotate's ReResNet / ReFPN detector, or a bare ReResNet) to rotplugin's escnn
EquivariantResNet / EquivariantFPN, printing the per-layer residual table.

Examples::

    python tools/convert_redet_checkpoint.py redet_re50_refpn_1x_dota_le90-724ab2da.pth redet_er50.pth
    python tools/convert_redet_checkpoint.py re_resnet50_c8_batch256-25b16846.pth er50_c8.pth --json report.json

The architecture (ReResNet depth, orientation, stem / base widths, number of stages; the ReFPN's widths and levels)
is read off the checkpoint; ``--depth`` / ``--orientation`` / ``--stem-channels`` / ``--base-channels`` /
``--num-stages`` only override it, and one that contradicts the checkpoint is an error naming the flag.

Columns (relative residuals, see rotplugin/convert/redet.py): ``basis`` = least-squares residual of the e2cnn ->
escnn block basis map, ``filter`` / ``bias`` = max|escnn expansion - e2cnn expansion| / max|e2cnn expansion| of the
whole layer, ``ckpt-flt`` = against the checkpoint's own eval-mode ``filter`` buffer when it has one. Needs e2cnn
(``pip install 'rotplugin[redet]'``) unless the checkpoint holds only eval-mode filters.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*py3nj.*")  # escnn's, at import: SO(3) only, never used here

from rotplugin.convert import (ArchitectureMismatch, RedetConversionError, convert_redet_checkpoint,  # noqa: E402
                               infer_redet_architecture, load_checkpoint_file)
from rotplugin.models import EquivariantFPN, EquivariantResNet  # noqa: E402

# the flags that override (and must agree with) what the checkpoint tells: flag -> EquivariantResNet argument
ARCHITECTURE_FLAGS = {"--depth": "depth", "--orientation": "orientation", "--stem-channels": "stem_channels",
                      "--base-channels": "base_channels", "--num-stages": "num_stages"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="ReDet checkpoint (.pth) or URL")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    helps = {"--depth": "ReResNet depth (18, 34, 50, 101, 152)", "--orientation": "N of C_N (ReDet: 8)"}
    for flag, name in ARCHITECTURE_FLAGS.items():
        parser.add_argument(flag, type=int, default=None, dest=name,
                            help=f"{helps.get(flag, name.replace('_', ' '))}; default: read off the checkpoint "
                                 f"(a value that contradicts it is an error)")
    parser.add_argument("--prefix", default=None,
                        help="key prefix of the backbone (default: auto, 'backbone.' in detector checkpoints)")
    parser.add_argument("--trusted", action="store_true",
                        help="load SRC with torch.load(weights_only=False): only for files you trust that hold Python "
                             "objects besides tensors (an mmengine runner's checkpoints load without it)")
    parser.add_argument("--json", default=None, help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    flags = {name: flag for flag, name in ARCHITECTURE_FLAGS.items()}
    try:
        checkpoint = load_checkpoint_file(args.src, trusted=args.trusted)
        arch = infer_redet_architecture(checkpoint, args.prefix, parts=("backbone",),
                                        **{name: getattr(args, name) for name in flags})
        _, report = convert_redet_checkpoint(args.src, args.dst, checkpoint=checkpoint, backbone=EquivariantResNet,
                                             neck=EquivariantFPN, backbone_cfg=arch["backbone"], prefix=args.prefix)
    except ArchitectureMismatch as err:
        print(f"error: {flags[err.argument]} {err.given} contradicts {args.src}: the checkpoint has {err.found}",
              file=sys.stderr)
        return 2
    except RedetConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = report.table()
    print(table.splitlines()[-1] if args.quiet else table)
    print(f"architecture: {report.architecture}")
    print(f"wrote {args.dst} in {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
