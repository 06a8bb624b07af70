"""Oriented boxes under rotations of the canvas (torch only, no mm* imports).

Box convention: mmrotate's ``rbox`` in **le90**: ``(cx, cy, w, h, t)`` with the centre in image pixels ``(x, y)``
(x to the right, y downwards; pixel centres at integers as in :mod:`rotplugin.canvas`), ``t`` in **radians** in
``[-pi/2, pi/2)``, and the box's width axis along ``(cos t, sin t)`` in ``(x, y)`` — so a positive ``t`` turns the
box clockwise on screen. A canvas rotation by ``+a`` degrees (counter-clockwise on screen, see
:mod:`rotplugin.canvas`) therefore maps ``t -> t - a`` and a mirror ``x -> -x`` maps ``t -> -t``; ``w`` and ``h``
are kept and ``t`` is wrapped back into ``[-pi/2, pi/2)`` (a box is symmetric under half turns).

Inputs outside the convention: angles anywhere (outside le90's range, several turns, negative) are accepted and the
results are wrapped into ``[-pi/2, pi/2)`` — a rotation by 0° only normalises the angle. ``w`` and ``h`` are never
swapped: mmrotate's le90 also wants ``w >= h`` (``RotatedBoxes.regularize_boxes('le90')``), which the mapping keeps
when the input has it. Degenerate boxes (``w`` or ``h`` = 0) map like any other; NaN / Inf values propagate. Boxes
must be a floating-point ``(n, 5)`` tensor (``n = 0`` allowed), else ``ValueError`` / ``TypeError``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from rotplugin.canvas import rotate_points, rotated_canvas_size

__all__ = ["wrap_le90", "rotate_rboxes", "unrotate_rboxes", "align_rboxes", "rbox_to_polygon",
           "circumscribed_half_sizes", "match_detections"]


def wrap_le90(t: torch.Tensor) -> torch.Tensor:
    """Angles (radians, any value) wrapped into le90's ``[-pi/2, pi/2)`` (the bounds in ``t``'s dtype).

    ``remainder`` can round up to exactly ``pi`` for an angle a hair below ``-pi/2 + k pi`` (float64
    ``nextafter(-pi/2, -inf)`` gave ``+pi/2``); such results are moved to ``-pi/2``, the same box orientation."""
    out = torch.remainder(t + math.pi / 2, math.pi) - math.pi / 2
    return torch.where(out >= math.pi / 2, out - math.pi, out)


def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"rotated boxes must be an (n, 5) tensor (cx, cy, w, h, t[rad], le90), got {shape}")
    if not boxes.is_floating_point():   # integer boxes would silently truncate the mapped centres and angles
        raise TypeError(f"rotated boxes must be a floating-point tensor, got dtype {boxes.dtype}")
    return boxes


def rotate_rboxes(boxes: torch.Tensor, angle: float, canvas_size: Sequence[int], flip: bool = False) -> torch.Tensor:
    """Boxes of an image on the canvas ``canvas_size = (H, W)`` → the same boxes in the image rotated by ``angle``
    degrees about the canvas centre (mirrored first when ``flip``), on the rotated canvas
    (:func:`rotplugin.canvas.rotated_canvas_size`)."""
    boxes = _check_boxes(boxes)
    out = boxes.clone()
    out[:, :2] = rotate_points(boxes[:, :2], angle, canvas_size, flip=flip, order="xy")
    t = -boxes[:, 4] if flip else boxes[:, 4]
    out[:, 4] = wrap_le90(t - math.radians(angle))
    return out


def unrotate_rboxes(boxes: torch.Tensor, angle: float, canvas_size: Sequence[int], flip: bool = False) -> torch.Tensor:
    """Inverse of :func:`rotate_rboxes`: boxes found in the view rotated by ``angle`` (of the canvas
    ``canvas_size``, the *unrotated* one) mapped back to the original canvas."""
    boxes = _check_boxes(boxes)
    view_canvas = rotated_canvas_size(canvas_size, angle)
    back = rotate_rboxes(boxes, -angle, view_canvas)
    if flip:  # undo the mirror about the original canvas centre: x -> (W - 1) - x, t -> -t
        back[:, 0] = (canvas_size[1] - 1) - back[:, 0]
        back[:, 4] = wrap_le90(-back[:, 4])
    return back


def align_rboxes(boxes: torch.Tensor, ref_t: torch.Tensor) -> torch.Tensor:
    """The same rectangles written with the angle nearest to ``ref_t`` (radians, one per box): ``(w, h, t)`` becomes
    ``(w, h, t + kπ/2)`` for even ``k`` and ``(h, w, t + kπ/2)`` for odd ``k`` (a rectangle turned by a quarter turn
    with its sides swapped is the same rectangle), ``k`` chosen so that ``|t' - ref_t| <= π/4``. The angles are not
    wrapped into le90 (so that they can be averaged about ``ref_t``); :func:`wrap_le90` the result when done."""
    boxes = _check_boxes(boxes)
    cx, cy, w, h, t = boxes.unbind(-1)
    k = torch.round((ref_t.to(t) - t) / (math.pi / 2))
    odd = torch.remainder(k, 2) == 1
    return torch.stack([cx, cy, torch.where(odd, h, w), torch.where(odd, w, h), t + k * (math.pi / 2)], -1)


def rbox_to_polygon(boxes: torch.Tensor) -> torch.Tensor:
    """``(n, 5)`` le90 boxes → ``(n, 4, 2)`` corner points ``(x, y)``."""
    boxes = _check_boxes(boxes)
    cx, cy, w, h, t = boxes.unbind(-1)
    c, s = torch.cos(t), torch.sin(t)
    dx = torch.stack([c * w / 2, s * w / 2], -1)
    dy = torch.stack([-s * h / 2, c * h / 2], -1)
    ctr = torch.stack([cx, cy], -1)
    return torch.stack([ctr - dx - dy, ctr + dx - dy, ctr + dx + dy, ctr - dx + dy], 1)


def circumscribed_half_sizes(boxes: torch.Tensor):
    """Half width and half height ``(half_x, half_y)`` of the smallest horizontal box around each ``(..., 5)``
    ``(cx, cy, w, h, t)`` box (any angle version: only ``|cos t|``, ``|sin t|`` enter)."""
    w, h, t = boxes[..., 2], boxes[..., 3], boxes[..., 4]
    c, s = torch.cos(t).abs(), torch.sin(t).abs()
    return (w * c + h * s) / 2, (w * s + h * c) / 2


def match_detections(a, b, box_tol: float = 1e-3, score_tol: float = 1e-4):
    """Compare two detection sets ``(boxes (n, 5), scores (n,), labels (n,))``: pair each detection of ``a`` with
    the nearest one of ``b`` of the same label (distance: max over centre/size differences in px and the le90 angle
    difference in radians). Returns ``(fraction of a with a partner within box_tol and score_tol, largest box
    difference and largest score difference over those pairs)``."""
    (ab, as_, al), (bb, bs, bl) = a, b
    if len(ab) == 0:
        return (1.0 if len(bb) == 0 else 0.0), 0.0, 0.0
    if len(bb) == 0:
        return 0.0, float("inf"), float("inf")
    d = (ab[:, None, :4] - bb[None, :, :4]).abs().amax(-1)
    d = torch.maximum(d, wrap_le90(ab[:, None, 4] - bb[None, :, 4]).abs())
    d[al[:, None] != bl[None, :]] = float("inf")
    dist, nearest = d.min(1)
    score_diff = (as_ - bs[nearest]).abs()
    ok = (dist <= box_tol) & (score_diff <= score_tol)
    if not ok.any():
        return 0.0, float("inf"), float("inf")
    return ok.float().mean().item(), dist[ok].max().item(), score_diff[ok].max().item()
