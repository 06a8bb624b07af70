"""IoU of the horizontal boxes circumscribing rotated boxes, computed as what it is (axis-aligned boxes).

mmrotate's ``FakeRBboxOverlaps2D`` (its "hbox" anchor assignment) turns both sets of rotated boxes into their
circumscribed horizontal boxes and then runs the *rotated* IoU kernel on them (polygon clipping per pair): on the
CPU that costs more per training step than a small backbone. :class:`CircumscribedHBoxOverlaps2D` gives the same
numbers with mmdet's vectorised axis-aligned ``bbox_overlaps``.
"""
from __future__ import annotations

import torch
from mmdet.structures.bbox import bbox_overlaps, get_box_tensor

from rotplugin.boxes import circumscribed_half_sizes
from rotplugin.registry import TASK_UTILS

__all__ = ["CircumscribedHBoxOverlaps2D", "circumscribed_hboxes"]


def circumscribed_hboxes(rboxes: torch.Tensor, min_size: float = 1e-3) -> torch.Tensor:
    """``(x1, y1, x2, y2)`` of the smallest horizontal box around each ``(cx, cy, w, h, angle)`` box (radians; any
    angle version). Its sides are clamped to at least ``min_size``, as mmrotate does before its IoU."""
    cx, cy = rboxes[..., 0], rboxes[..., 1]
    half_w, half_h = (half.clamp(min=min_size / 2) for half in circumscribed_half_sizes(rboxes))
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


@TASK_UTILS.register_module()
class CircumscribedHBoxOverlaps2D:
    """Overlaps (``iou`` / ``iof``) of the circumscribed horizontal boxes of two sets of rotated boxes (``(m, 5)``
    and ``(n, 5)``, or with a 6th score column, tensors or ``RotatedBoxes``): a drop-in for mmrotate's
    ``FakeRBboxOverlaps2D`` in assigners, equal to it up to float rounding."""

    def __call__(self, bboxes1, bboxes2, mode: str = "iou", is_aligned: bool = False) -> torch.Tensor:
        if mode not in ("iou", "iof"):
            raise ValueError(f"CircumscribedHBoxOverlaps2D: mode must be 'iou' or 'iof', got {mode!r}")
        boxes = []
        for name, b in (("bboxes1", bboxes1), ("bboxes2", bboxes2)):
            b = get_box_tensor(b)
            if b.size(-1) not in (0, 5, 6):
                raise ValueError(f"CircumscribedHBoxOverlaps2D: {name} must be (n, 5) rotated boxes (cx, cy, w, h, "
                                 f"angle) or (n, 6) with scores, got shape {tuple(b.shape)}")
            boxes.append(b[..., :5].reshape(-1, 5) if b.numel() else b.new_zeros((b.shape[0], 5)))
        return bbox_overlaps(circumscribed_hboxes(boxes[0]), circumscribed_hboxes(boxes[1]), mode=mode,
                             is_aligned=is_aligned)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
