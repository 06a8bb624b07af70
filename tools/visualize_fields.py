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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rotplugin.engine.benchmark import DEMO_CHECKPOINT, DEMO_CONFIG  # noqa: E402  (the demo's model and layout)

DEMO_IMAGE = ROOT.parent / "shared" / "data" / "dota_samples" / "images" / "demo.jpg"


class ToolError(Exception):
    """A user error: printed without a traceback."""


def build_model(config, checkpoint, orientation, depth, seed):
    """``(model, description)``; the model is in eval mode."""
    torch.manual_seed(seed)
    if config is None and checkpoint is not None:
        raise ToolError("--checkpoint needs --config (the checkpoint's architecture)")
    if config is not None:
        if not os.path.isfile(config):
            raise ToolError(f"config file not found: {config}")
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise ToolError(f"checkpoint file not found: {checkpoint}")
        import rotplugin  # noqa: F401  (registers the components)
        from mmrotate.registry import MODELS
        from rotplugin.presets import load_config, trusted_checkpoints

        cfg = load_config(str(config))
        model = MODELS.build(cfg.model)
        if checkpoint is not None:
            from mmengine.runner import load_checkpoint

            try:
                with trusted_checkpoints():
                    load_checkpoint(model, str(checkpoint), map_location="cpu", strict=True, logger="silent")
            except (RuntimeError, KeyError) as err:
                msg = " ".join(str(err).split())
                msg = msg if len(msg) <= 600 else msg[:600] + " ..."
                raise ToolError(f"checkpoint {checkpoint} does not fit the model of {config}: {msg}") from None
            what = f"{config} with weights {checkpoint}"
        else:
            what = f"{config}, RANDOMLY INITIALISED (seed {seed}; no checkpoint)"
        return model.eval(), what
    from rotplugin.models import EquivariantFPN, EquivariantResNet

    backbone = EquivariantResNet(depth=depth, orientation=orientation, stem_channels=32, base_channels=32)
    neck = EquivariantFPN(in_channels=backbone.out_channels, out_channels=8 * orientation, num_outs=5,
                          orientation=orientation, start_level=1, add_extra_convs="on_input")
    backbone.eval()
    neck.eval()

    def extract_feat(x):
        return neck(backbone(x))

    extract_feat.out_field_types = neck.out_field_types
    extract_feat.out_strides = neck.out_strides
    extract_feat.max_stride = neck.max_stride
    return extract_feat, (f"RANDOMLY INITIALISED EquivariantResNet-{depth} (C{orientation}) + EquivariantFPN "
                          f"(seed {seed}; no trained model given or found)")


def normalisation(model):
    """``(mean, std, to_rgb)`` of the model's data preprocessor (mmengine's ImgDataPreprocessor), else DOTA's."""
    pre = getattr(model, "data_preprocessor", None)
    mean, std = getattr(pre, "mean", None), getattr(pre, "std", None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.numel() == 3:
        return mean.flatten().tolist(), std.flatten().tolist(), bool(getattr(pre, "_channel_conversion", False))
    from rotplugin.io import DOTA_MEAN, DOTA_STD

    return list(DOTA_MEAN), list(DOTA_STD), True


def load_image(path, size, seed):
    """``(BGR uint8 image, description)``: ``path``, or the synthetic scene when ``path`` is None."""
    import cv2

    if path is not None:
        if not os.path.isfile(path):
            raise ToolError(f"image file not found: {path}")
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ToolError(f"could not read image {path}")
        what = str(path)
    else:
        from rotplugin.data.dota_synth import render_scene

        img, _ = render_scene(np.random.default_rng(seed), size or 256)
        what = f"synthetic scene (rotplugin.data.dota_synth.render_scene, seed {seed})"
    if size:
        h, w = img.shape[:2]
        scale = size / max(h, w)
        if scale != 1:
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            what += f", resized to {img.shape[1]}x{img.shape[0]}"
    return img, what


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"mmrotate config (default: {DEMO_CONFIG.relative_to(ROOT)} if present)")
    parser.add_argument("--checkpoint", help=f"weights (default: {DEMO_CHECKPOINT.relative_to(ROOT)} if present)")
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
    from rotplugin.equivariance import feature_pyramid
    from rotplugin.io import image_to_tensor, write_json_atomic
    from rotplugin.visualization import visualize_field_rotation

    config, checkpoint = args.config, args.checkpoint
    if args.random and (config or checkpoint):
        raise ToolError("--random takes no --config / --checkpoint")
    if config is None and checkpoint is not None:
        raise ToolError("--checkpoint needs --config (the checkpoint's architecture)")
    if config is None and not args.random and DEMO_CONFIG.is_file():
        config = str(DEMO_CONFIG)
        checkpoint = str(DEMO_CHECKPOINT) if DEMO_CHECKPOINT.is_file() else None
    model, what = build_model(config, checkpoint, args.orientation, args.depth, args.seed)
    print(f"model: {what}")
    try:
        pyramid = feature_pyramid(model, "drawing its fields")
    except ValueError as err:
        raise ToolError(str(err)) from None

    image_path = args.image if args.image is not None else (str(DEMO_IMAGE) if DEMO_IMAGE.is_file() else None)
    img, image_what = load_image(image_path, args.size, args.seed)
    mean, std, to_rgb = normalisation(model)
    x = image_to_tensor(img, mean, std, bgr_to_rgb=to_rgb)
    print(f"image: {image_what}; levels {args.levels} of strides {pyramid.strides}, angle {args.angle:g}°")
    try:
        plots = visualize_field_rotation(
            pyramid.extract, x, pyramid.field_types, pyramid.strides, args.out_dir, args.angle, levels=args.levels,
            fields=args.fields, combine=args.combine, max_stride=pyramid.max_stride, canvas=not args.no_canvas,
            fibre_interp=args.fibre_interp, bgr=not to_rgb)
    except ValueError as err:
        raise ToolError(str(err)) from None
    for lvl in sorted(plots.errors):
        print(f"  level {lvl} (stride {plots.strides[lvl]}): max relative error {plots.errors[lvl]:.2e}")
    summary = os.path.join(args.out_dir, "fields.json")
    write_json_atomic(summary, {
        "model": what, "image": image_what, "angle": plots.angle, "canvas_shape": list(plots.canvas_shape),
        "equivariant_canvas": not args.no_canvas,
        "levels": [{"level": lvl, "stride": plots.strides[lvl], "max_relative_error": plots.errors[lvl]}
                   for lvl in sorted(plots.errors)],
        "files": [os.path.relpath(p, args.out_dir) for p in plots.paths]})
    print(f"wrote {len(plots.paths)} pictures and {summary}:")
    for p in plots.paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
