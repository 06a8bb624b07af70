"""Equivariance table of an equivariant backbone (+ neck) on a real image, with and without an equivariant canvas.

Examples::

    python tools/check_equivariance.py                                   # R50 C8 + FPN, demo.jpg at 512²
    python tools/check_equivariance.py --depth 18 --orientation 4 --size 256 --angles 90 180 270 --json eq.json
    python tools/check_equivariance.py --config configs/rotated_retinanet/...py --image my.png

For each level the number printed is the max relative error ``max|rotate_fields(F(I)) - F(rot I)| / max|F(rot I)|``
(:mod:`rotplugin.equivariance`). With ``--flip`` (D_N models) mirrored copies are checked too.

``--json OUT`` is written atomically after each of the two tables (``canvas``, ``no_canvas``), each stored with the
settings it was measured with; a rerun with the same file skips a table already there with the same settings
(``--force`` measures it again).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rotplugin.io import ResumableResults

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGE = ROOT.parent / "shared" / "data" / "dota_samples" / "images" / "demo.jpg"


def load_image(path, size, seed=0):
    """The image as a (1, 3, size, size) float tensor normalised like mmrotate's DOTA configs; a generated image when
    ``path`` does not exist (printed)."""
    import cv2

    from rotplugin.io import image_to_tensor

    h, w = (size, size) if isinstance(size, int) else (size or (None, None))
    if path and os.path.exists(path):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"could not read image {path}")
        if size:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        source = str(path)
    else:
        rng = np.random.default_rng(seed)
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        source = f"generated noise image {h}x{w} (no file at {path})"
    return image_to_tensor(img), source


def build_from_args(args):
    """(model callable, field types, strides, max stride) from --config or the backbone options."""
    import rotplugin  # noqa: F401  (registers)
    from rotplugin.models import EquivariantFPN, EquivariantResNet

    if args.config:
        from mmengine.config import Config
        from mmrotate.registry import MODELS
        from mmrotate.utils import register_all_modules

        register_all_modules()
        cfg = Config.fromfile(args.config)
        backbone = MODELS.build(cfg.model.backbone)
        neck = MODELS.build(cfg.model.neck) if cfg.model.get("neck") else None
    else:
        backbone = EquivariantResNet(depth=args.depth, orientation=args.orientation, flip=args.flip)
        neck = None
        if not args.no_neck:
            neck = EquivariantFPN(in_channels=backbone.out_channels, out_channels=256, num_outs=5,
                                  orientation=args.orientation, flip=args.flip, start_level=1,
                                  add_extra_convs="on_input")
    backbone.eval()
    if neck is not None:
        neck.eval()
        fn = lambda x: neck(backbone(x))  # noqa: E731
        fn.modules_ = (backbone, neck)
        return fn, neck.out_field_types, neck.out_strides, neck.max_stride
    backbone.modules_ = (backbone,)
    return backbone, backbone.out_field_types, backbone.out_strides, backbone.max_stride


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="mmrotate config whose backbone (+neck) to check")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--orientation", type=int, default=8)
    parser.add_argument("--flip", action="store_true", help="D_N model; also check mirrored inputs")
    parser.add_argument("--no-neck", action="store_true", help="backbone only")
    parser.add_argument("--image", default=str(DEMO_IMAGE))
    parser.add_argument("--size", type=int, default=512, help="resize the image to size x size (0: keep)")
    parser.add_argument("--angles", type=float, nargs="+", default=[90, 180, 270])
    parser.add_argument("--fibre-interp", choices=["linear", "fourier"], default=None,
                        help="rule for angles between orientation steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="float64 separates the construction's exactness from float32 rounding")
    parser.add_argument("--metric", choices=["max", "l2"], default="max",
                        help="max: max|diff|/max|ref| per level; l2: ||diff||/||ref||")
    parser.add_argument("--json", help="write (and resume) the tables as JSON here")
    parser.add_argument("--force", action="store_true", help="measure again what --json already holds")
    args = parser.parse_args(argv)

    from rotplugin.equivariance import measure_equivariance, pad_image

    store = ResumableResults(args.json, force=args.force)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "force")}
    tables = [(canvas, "canvas" if canvas else "no_canvas") for canvas in (True, False)]
    tables = [(canvas, key) for canvas, key in tables if not store.done(key, settings)]
    if not tables:
        return 0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model, field_types, strides, max_stride = build_from_args(args)
    print(f"built model in {time.perf_counter() - t0:.1f} s; strides {strides}, largest {max_stride}")
    image, source = load_image(args.image, args.size or None, args.seed)
    if args.dtype == "float64":
        for m in getattr(model, "modules_", ()):
            m.double()
        image = image.double()
    print(f"image: {source}, {tuple(image.shape[-2:])}")
    flips = (False, True) if args.flip else (False,)
    store.data.update({"image": source, "image_shape": list(image.shape[-2:])})
    for canvas, key in tables:
        padded = pad_image(image, max_stride, canvas=canvas)
        report = measure_equivariance(model, padded, field_types, strides, args.angles, flips,
                                      fibre_interp=args.fibre_interp, metric=args.metric)
        name = "equivariant canvas (≡ 1 mod max stride)" if canvas else f"plain padding to multiples of {max_stride}"
        print()
        print(report.table(f"== {name} =="))
        store.put(key, report.to_json(), settings)
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
