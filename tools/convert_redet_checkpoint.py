"""Convert an e2cnn ReDet checkpoint (mmrotate's ReResNet / ReFPN detector, or a bare ReResNet) to rotplugin's escnn
EquivariantResNet / EquivariantFPN, printing the per-layer residual table.

Examples::

    python tools/convert_redet_checkpoint.py redet_re50_refpn_1x_dota_le90-724ab2da.pth redet_er50.pth
    python tools/convert_redet_checkpoint.py re_resnet50_c8_batch256-25b16846.pth er50_c8.pth --json report.json

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="ReDet checkpoint (.pth) or URL")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--orientation", type=int, default=8, help="N of C_N (ReDet: 8)")
    parser.add_argument("--stem-channels", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--num-stages", type=int, default=4)
    parser.add_argument("--prefix", default=None,
                        help="key prefix of the backbone (default: auto, 'backbone.' in detector checkpoints)")
    parser.add_argument("--trusted", action="store_true",
                        help="load SRC with torch.load(weights_only=False): needed for checkpoints saved by mmengine's "
                             "runner (message_hub, numpy objects); only for files you trust")
    parser.add_argument("--json", default=None, help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore", message=".*py3nj.*")
    from rotplugin.convert import RedetConversionError, convert_redet_checkpoint

    start = time.perf_counter()
    try:
        _, report = convert_redet_checkpoint(
            args.src, args.dst, depth=args.depth, orientation=args.orientation, stem_channels=args.stem_channels,
            base_channels=args.base_channels, num_stages=args.num_stages, prefix=args.prefix, trusted=args.trusted)
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
