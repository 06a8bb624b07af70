"""Export a trained rotplugin detector to a folder that stock mmrotate (no escnn, no rotplugin) and ONNX Runtime load.

    python tools/export.py CONFIG CHECKPOINT OUT_DIR [--keep-bn] [--canvas H W] [--onnx [--tta-angles 0 90 180 270 |
                           --no-tta-graph]] [--threads N] [--overwrite]

Writes ``OUT_DIR/model.py`` (the stock config, with a header saying what changed), ``OUT_DIR/model.pth`` (its weights:
EquivariantResNet -> mmdet ResNet, EquivariantFPN -> mmdet FPN, batch norms folded unless ``--keep-bn``) and
``OUT_DIR/export.json`` (what was checked). ``--onnx`` adds ``model.onnx`` (the network: backbone, neck, head
outputs), ``model_tta.onnx`` (feature-rotation TTA in one graph, quarter turns), ``roi_bbox_head.onnx`` for two-stage
detectors and ``deploy.json``; :class:`rotplugin.deploy.onnx.OnnxDetector` runs them. Every file is checked against
the source model before anything is written (features / graph outputs within 1e-4 relative), and the folder appears
only when all of them are complete.

Why not mmdeploy (1.3.1, its last release; tried on this stack): it calls ``torch.onnx.export`` without
``dynamo=False``, which since torch 2.9 takes the new exporter and fails (no onnxscript, and mmdeploy's rewriters need
the TorchScript one); with ``torch.onnx.export`` patched at runtime and ``max_output_boxes_per_class`` added to its
mmrotate deploy config it exports the stock Rotated RetinaNet with its ``mmdeploy::NMSRotated`` op, but its rewritten
pre-NMS selection (top boxes with all classes, not mmdet's top (box, class) pairs) gives other detections than the
PyTorch model (2000 boxes against 638 on one random-weight image), and it pins ``protobuf<=3.20.2`` against onnx's
newer protobuf. So the graphs hold the tensor part, exported with ``torch.onnx`` (TorchScript exporter); decoding and
rotated NMS stay in Python, in the stock heads: the same detections as PyTorch.

Exit status 2, with a message naming what was wrong, for: a checkpoint of another architecture, a model already plain,
a backbone or neck without an export, a rotplugin type with no stock equivalent, a canvas that is not equivariant,
an OUT_DIR that is not empty (without ``--overwrite``).
"""
from __future__ import annotations

import argparse
import sys
import warnings

warnings.filterwarnings("ignore", message=".*py3nj.*")

from rotplugin.apis.export import DEFAULT_TTA_ANGLES, export_detector  # noqa: E402
from rotplugin.deploy.stock import ExportError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument("--keep-bn", action="store_true",
                        help="keep the batch norms with their statistics (to fine-tune) instead of folding them")
    parser.add_argument("--canvas", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="the fixed canvas the exported pipeline pads to (default: from the test Resize)")
    parser.add_argument("--onnx", action="store_true", help="also export the ONNX graphs")
    parser.add_argument("--tta-angles", type=float, nargs="+", default=list(DEFAULT_TTA_ANGLES),
                        help="views of model_tta.onnx, multiples of 90 degrees (default 0 90 180 270)")
    parser.add_argument("--no-tta-graph", action="store_true", help="no model_tta.onnx")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the checks")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        report = export_detector(args.config, args.checkpoint, args.out_dir, fold_bn=not args.keep_bn,
                                 canvas=args.canvas, onnx=args.onnx,
                                 tta_angles=None if args.no_tta_graph else args.tta_angles, threads=args.threads,
                                 overwrite=args.overwrite)
    except (ExportError, ValueError) as err:
        print(f"export.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: {', '.join(report['files'])} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
