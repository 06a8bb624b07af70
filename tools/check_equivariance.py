"""Equivariance table of an equivariant backbone (+ neck) on a real image, with and without an equivariant canvas.

Examples::

    python tools/check_equivariance.py                                   # R50 C8 + FPN, demo.jpg at 512²
    python tools/check_equivariance.py --depth 18 --orientation 4 --size 256 --angles 90 180 270 --json eq.json
    python tools/check_equivariance.py --config configs/rotated_retinanet/...py --image my.png

For each level the number printed is the max relative error ``max|rotate_fields(F(I)) - F(rot I)| / max|F(rot I)|``
(:mod:`rotplugin.equivariance`). With ``--flip`` (D_N models) mirrored copies are checked too. ``--autocast
bfloat16|float16`` runs the model in mixed precision and adds, per level, its deviation from the float32 model on
the same input: on the canvas the equivariance error is then that rounding, not a construction error.

``--json OUT`` is written atomically after each of the two tables (``canvas``, ``no_canvas``), each stored with the
settings it was measured with; a rerun with the same file skips a table already there with the same settings
(``--force`` measures it again).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
from mmrotate.registry import MODELS

from rotplugin.apis.demo import SAMPLE_IMAGE
from rotplugin.equivariance import ERROR_METRICS, FeaturePyramid, measure_equivariance, pad_image
from rotplugin.io import ResumableResults, image_to_tensor, load_image
from rotplugin.presets import load_config, random_backbone_neck

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / SAMPLE_IMAGE


def build_from_args(args) -> FeaturePyramid:
    """The backbone (+ neck) of ``--config``, or a random EquivariantResNet (+ EquivariantFPN), in eval mode."""
    if not args.config:
        return random_backbone_neck(args.depth, args.orientation, args.flip,
                                    neck_channels=None if args.no_neck else 256)
    cfg = load_config(args.config)
    backbone = MODELS.build(cfg.model.backbone).eval()
    neck = MODELS.build(cfg.model.neck).eval() if cfg.model.get("neck") else None
    return FeaturePyramid.of_modules(backbone, neck)


def _autocast_extract(extract, device_type, dtype, x):
    """``extract(x)`` under ``torch.autocast(device_type, dtype)``, the levels back in float32."""
    with torch.autocast(device_type, dtype=dtype):
        return [f.float() for f in extract(x)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="mmrotate config whose backbone (+neck) to check")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--orientation", type=int, default=8)
    parser.add_argument("--flip", action="store_true", help="D_N model; also check mirrored inputs")
    parser.add_argument("--no-neck", action="store_true", help="backbone only")
    parser.add_argument("--image", help=f"image file (default: {SAMPLE_IMAGE} beside the project when present, "
                                         f"else a synthetic scene)")
    parser.add_argument("--size", type=int, default=512, help="resize the image to size x size (0: keep)")
    parser.add_argument("--angles", type=float, nargs="+", default=[90, 180, 270])
    parser.add_argument("--fibre-interp", choices=["linear", "fourier"], default=None,
                        help="rule for angles between orientation steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="float64 separates the construction's exactness from float32 rounding")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None,
                        help="run the model under torch.autocast in this dtype (mixed precision; CPU, or CUDA with "
                             "--device cuda) and also report each level's deviation from float32 (its rounding)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--metric", choices=["max", "l2"], default="max",
                        help="max: max|diff|/max|ref| per level; l2: ||diff||/||ref||")
    parser.add_argument("--json", help="write (and resume) the tables as JSON here")
    parser.add_argument("--force", action="store_true", help="measure again what --json already holds")
    args = parser.parse_args(argv)

    store = ResumableResults(args.json, force=args.force)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "force")}
    tables = [(canvas, "canvas" if canvas else "no_canvas") for canvas in (True, False)]
    tables = [(canvas, key) for canvas, key in tables if not store.done(key, settings)]
    if not tables:
        return 0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    pyramid = build_from_args(args)
    print(f"built model in {time.perf_counter() - t0:.1f} s; strides {pyramid.strides}, largest "
          f"{pyramid.max_stride}")
    path = args.image or (str(SAMPLE) if SAMPLE.is_file() else None)
    img, source = load_image(path, (args.size, args.size) if args.size else None, args.seed)
    image = image_to_tensor(img)
    if args.dtype == "float64":
        for m in pyramid.modules:
            m.double()
        image = image.double()
    if args.autocast and args.dtype != "float32":
        parser.error("--autocast runs a float32 model in lower precision: leave --dtype at float32")
    for m in pyramid.modules:
        m.to(args.device)
    image = image.to(args.device)
    extract = pyramid.extract if not args.autocast else functools.partial(
        _autocast_extract, pyramid.extract, torch.device(args.device).type, getattr(torch, args.autocast))
    print(f"image: {source}, {tuple(image.shape[-2:])}" + (f"; autocast {args.autocast}" if args.autocast else ""))
    flips = (False, True) if args.flip else (False,)
    store.data.update({"image": source, "image_shape": list(image.shape[-2:])})
    for canvas, key in tables:
        padded = pad_image(image, pyramid.max_stride, canvas=canvas)
        report = measure_equivariance(extract, padded, pyramid.field_types, pyramid.strides, args.angles,
                                      flips, fibre_interp=args.fibre_interp, metric=args.metric)
        name = ("equivariant canvas (≡ 1 mod max stride)" if canvas
                else f"plain padding to multiples of {pyramid.max_stride}")
        print()
        print(report.table(f"== {name} =="))
        entry = report.to_json()
        if args.autocast:   # the size of the rounding: the same input in float32
            with torch.no_grad():
                low, full = extract(padded), pyramid.extract(padded)
            entry["rounding_vs_float32"] = [ERROR_METRICS[args.metric](a, b) for a, b in zip(low, full)]
            print(f"{args.autocast} against float32, same input | "
                  + " | ".join(f"{e:10.2e}" for e in entry["rounding_vs_float32"]))
        store.put(key, entry, settings)
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
