"""Rotated weighted box fusion: the merge of TTA views that averages the boxes of one object instead of keeping the
highest-scored one (what NMS does).

:func:`fuse_rotated_boxes` takes every view's detections, mapped back to one canvas, and

1. clusters them, class by class, in descending score order: a box joins the cluster whose first (highest-scored)
   box it overlaps most, with rotated IoU ``>= iou_thr`` (mmcv's ``box_iou_rotated``), provided that cluster holds no
   box of the same view yet (a view sees an object once); otherwise it starts a cluster. A box never joins a cluster
   of another class, so every input box is in exactly one cluster of its own class;
2. replaces each cluster by the score-weighted mean of its boxes: centres and sizes averaged, the angles averaged
   as offsets from the first box's angle after writing every box with the angle nearest to it
   (:func:`rotplugin.boxes.align_rboxes`: the w/h swap of a rectangle written a quarter turn apart, and le90's
   period of π, are handled there), the result wrapped into le90;
3. scores it by the views' agreement: the sum of its boxes' scores over the number of views (a box that all views
   find with score ``s`` keeps ``s``; one that a single view of ``V`` finds gets ``s / V``).

Identical views give their boxes back (each cluster is one box and its copies).
"""
from __future__ import annotations

from typing import Tuple

import torch

from rotplugin.boxes import align_rboxes, wrap_le90
from rotplugin.models.rotated_nms import overlapping_pairs

__all__ = ["fuse_rotated_boxes"]


def _clusters(n: int, src: torch.Tensor, dst: torch.Tensor, iou: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """The cluster (index of its first box) of each of ``n`` boxes in score order; edges ``src < dst`` with IoU."""
    order = torch.argsort(dst, stable=True)
    src_l, iou_l = src[order].tolist(), iou[order].tolist()
    ptr = torch.searchsorted(dst[order], torch.arange(n + 1)).tolist()
    view_l = views.tolist()
    cluster = list(range(n))
    seen = {}                       # head -> the views in its cluster
    for c in range(n):
        best, best_iou = -1, -1.0
        for k in range(ptr[c], ptr[c + 1]):
            h = src_l[k]
            if cluster[h] != h or view_l[c] in seen[h] or iou_l[k] <= best_iou:
                continue
            best, best_iou = h, iou_l[k]
        if best < 0:
            seen[c] = {view_l[c]}
        else:
            cluster[c] = best
            seen[best].add(view_l[c])
    return torch.tensor(cluster, dtype=torch.long)


def fuse_rotated_boxes(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, views: torch.Tensor,
                       num_views: int, iou_thr: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotated weighted box fusion (module doc) of ``boxes`` (n, 5: le90 ``cx, cy, w, h, t``), ``scores`` (n,),
    ``labels`` (n,) found in the views ``views`` (n,: view index) of ``num_views`` views. Returns the fused
    ``(boxes, scores, labels)``, sorted by descending score."""
    n = boxes.shape[0]
    if not (boxes.dim() == 2 and boxes.shape[1] == 5 and scores.shape == labels.shape == views.shape == (n,)):
        raise ValueError(f"fuse_rotated_boxes: boxes (n, 5) with n scores, labels and views, got {tuple(boxes.shape)}"
                         f", {tuple(scores.shape)}, {tuple(labels.shape)}, {tuple(views.shape)}")
    if not isinstance(num_views, int) or num_views < 1 or (n and int(views.max()) >= num_views):
        raise ValueError(f"fuse_rotated_boxes: num_views must be an int above every view index, got {num_views!r}")
    if not 0 < iou_thr <= 1:
        raise ValueError(f"fusion iou_thr must be in (0, 1], got {iou_thr}")
    if n == 0:
        return boxes.new_zeros(0, 5), scores.new_zeros(0), labels.new_zeros(0)
    order = torch.argsort(scores, descending=True, stable=True)
    b, s, lab, v = boxes[order], scores[order], labels[order], views[order]
    src, dst, iou = overlapping_pairs(b, lab, iou_thr)
    cluster = _clusters(n, src, dst, iou, v)
    heads, index = torch.unique(cluster, return_inverse=True)      # heads ascending = score order
    aligned = align_rboxes(b, b[cluster, 4])
    w = s.to(b.dtype)
    total = torch.zeros(len(heads), dtype=b.dtype).index_add_(0, index, w)
    values = torch.cat([aligned[:, :4], (aligned[:, 4] - b[cluster, 4])[:, None]], 1)
    mean = torch.zeros(len(heads), 5, dtype=b.dtype).index_add_(0, index, values * w[:, None]) / total[:, None]
    mean[:, 4] = wrap_le90(mean[:, 4] + b[heads, 4])
    fused_scores = (torch.zeros(len(heads), dtype=s.dtype).index_add_(0, index, s) / num_views)
    keep = torch.argsort(fused_scores, descending=True, stable=True)
    return mean[keep], fused_scores[keep], lab[heads][keep]
