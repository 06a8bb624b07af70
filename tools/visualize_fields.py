"""Pictures of the rotation-equivariant feature fields of an image and of its rotated copy, per pyramid level.

    python tools/visualize_fields.py                                  # demo detector (if trained) on demo.jpg
    python tools/visualize_fields.py --config CFG --checkpoint CKPT --image img.png --angle 90 --levels 0 1
    python tools/visualize_fields.py --angle 45 --fibre-interp linear # between orientation steps (approximate)

For every level it writes ``level{l}_s{stride}_orientation.png`` (image, rotated image; the orientation pictures of
F(I), F(rot I) and rotate_fields(F(I)): hue = dominant orientation, brightness = how oriented; and the difference
|F(rot I) - rotate_fields(F(I))| with its max relative error) and ``level{l}_s{stride}_channels.png`` (the N
orientation channels of the chosen fields as heat maps), plus ``fields.json`` with the errors. See
:mod:`rotplugin.visualization` for what the colours mean.

Model: ``--config`` (+ ``--checkpoint``); by default the demo config and ``work_dirs/demo/model.pth`` when they
exist, otherwise a seeded, randomly initialised EquivariantResNet + EquivariantFPN (printed). Image: ``--image``;
by default the DOTA sample ``demo.jpg`` beside the project when present, otherwise a synthetic aerial scene.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from mmengine.runner import load_checkpoint
from mmrotate.registry import MODELS

from rotplugin.apis.demo import DEMO_CONFIG, DEMO_WORK_DIR, SAMPLE_IMAGE, DemoLayout
from rotplugin.equivariance import feature_pyramid
from rotplugin.io import DOTA_MEAN, DOTA_STD, image_to_tensor, load_image, write_json_atomic
from rotplugin.presets import load_config, random_backbone_neck
from rotplugin.visualization import visualize_detector_fields

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / DEMO_CONFIG, DemoLayout(ROOT / DEMO_WORK_DIR).checkpoint   # the demo model, when trained
SAMPLE = ROOT / SAMPLE_IMAGE


class ToolError(Exception):
    """A user error: printed without a traceback."""


def build_model(config, checkpoint, orientation, depth, seed):
    """``(model or FeaturePyramid, description)``; in eval mode."""
    torch.manual_seed(seed)
    if config is None and checkpoint is not None:
        raise ToolError("--checkpoint needs --config (the checkpoint's architecture)")
    if config is None:
        pyramid = random_backbone_neck(depth, orientation, width=32, neck_channels=8 * orientation)
        return pyramid, (f"RANDOMLY INITIALISED EquivariantResNet-{depth} (C{orientation}) + EquivariantFPN "
                         f"(seed {seed}; no trained model given or found)")
    if not os.path.isfile(config):
        raise ToolError(f"config file not found: {config}")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise ToolError(f"checkpoint file not found: {checkpoint}")
    model = MODELS.build(load_config(str(config)).model)
    if checkpoint is None:
        return model.eval(), f"{config}, RANDOMLY INITIALISED (seed {seed}; no checkpoint)"
    try:
        load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True, logger="silent")
    except (RuntimeError, KeyError) as err:
        msg = " ".join(str(err).split())
        msg = msg if len(msg) <= 600 else msg[:600] + " ..."
        raise ToolError(f"checkpoint {checkpoint} does not fit the model of {config}: {msg}") from None
    return model.eval(), f"{config} with weights {checkpoint}"


def normalisation(model):
    """``(mean, std, to_rgb)`` of the model's data preprocessor (mmengine's ImgDataPreprocessor), else DOTA's."""
    pre = getattr(model, "data_preprocessor", None)
    mean, std = getattr(pre, "mean", None), getattr(pre, "std", None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.numel() == 3:
        return mean.flatten().tolist(), std.flatten().tolist(), bool(getattr(pre, "_channel_conversion", False))
    return list(DOTA_MEAN), list(DOTA_STD), True


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"mmrotate config (default: {DEMO_CONFIG} if present)")
    parser.add_argument("--checkpoint", help=f"weights (default: the demo's {DEMO[1].relative_to(ROOT)} if present)")
    parser.add_argument("--random", action="store_true",
                        help="ignore the demo config/checkpoint: a random EquivariantResNet + EquivariantFPN")
    parser.add_argument("--orientation", type=int, default=8, help="N of C_N for the random model")
    parser.add_argument("--depth", type=int, default=18, help="depth of the random model's EquivariantResNet")
    parser.add_argument("--image", help="image file (default: demo.jpg beside the project, else a synthetic scene)")
    parser.add_argument("--size", type=int, default=256, help="resize the longer side to this (0: keep)")
    parser.add_argument("--angle", type=float, default=90.0, help="degrees, counter-clockwise on screen")
    parser.add_argument("--fibre-interp", choices=["linear", "fourier"], default=None,
                        help="rule for angles between orientation steps (rotplugin.fields.fibre_operator)")
    parser.add_argument("--fields", type=int, nargs="+", default=[0, 1, 2],
                        help="fields whose orientation channels are drawn as heat maps")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2], help="pyramid levels to draw")
    parser.add_argument("--combine", choices=["sum", "max"], default="sum",
                        help="how the fields' orientations make one picture (rotplugin.visualization)")
    parser.add_argument("--no-canvas", action="store_true",
                        help="pad to multiples of the stride instead of the equivariant canvas (shows the error)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(ROOT / "work_dirs" / "visualize_fields"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except ToolError as err:
        raise SystemExit(f"visualize_fields: error: {err}") from None


def run(args):
    config, checkpoint = args.config, args.checkpoint
    if args.random and (config or checkpoint):
        raise ToolError("--random takes no --config / --checkpoint")
    if config is None and checkpoint is not None:
        raise ToolError("--checkpoint needs --config (the checkpoint's architecture)")
    if config is None and not args.random and DEMO[0].is_file():
        config = str(DEMO[0])
        checkpoint = str(DEMO[1]) if DEMO[1].is_file() else None
    model, what = build_model(config, checkpoint, args.orientation, args.depth, args.seed)
    print(f"model: {what}")
    try:
        strides = feature_pyramid(model, "drawing its fields").strides
    except ValueError as err:
        raise ToolError(str(err)) from None

    image_path = args.image if args.image is not None else (str(SAMPLE) if SAMPLE.is_file() else None)
    try:
        img, image_what = load_image(image_path, args.size or None, args.seed)
    except (FileNotFoundError, ValueError) as err:
        raise ToolError(str(err)) from None
    mean, std, to_rgb = normalisation(model)
    x = image_to_tensor(img, mean, std, bgr_to_rgb=to_rgb)
    print(f"image: {image_what}; levels {args.levels} of strides {strides}, angle {args.angle:g}°")
    try:
        plots = visualize_detector_fields(model, x, args.out_dir, args.angle, levels=args.levels, fields=args.fields,
                                          combine=args.combine, canvas=not args.no_canvas,
                                          fibre_interp=args.fibre_interp, bgr=not to_rgb)
    except ValueError as err:
        raise ToolError(str(err)) from None
    for lvl in sorted(plots.errors):
        print(f"  level {lvl} (stride {plots.strides[lvl]}): max relative error {plots.errors[lvl]:.2e}")
    summary = os.path.join(args.out_dir, "fields.json")
    write_json_atomic(summary, plots.summary(args.out_dir, model=what, image=image_what,
                                             equivariant_canvas=not args.no_canvas))
    print(f"wrote {len(plots.paths)} pictures and {summary}:")
    for p in plots.paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
