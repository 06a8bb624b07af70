"""Class-wise rotated NMS that keeps exactly what ``mmcv.ops.batched_nms(..., dict(type='nms_rotated',
iou_threshold=t, split_thr=0))`` keeps, in the same order, but computes the rotated IoU only for the pairs that
could reach the threshold.

mmcv's CPU ``nms_rotated`` clips polygons for every pair of a class (O(n²) exact IoUs). Here, per class:

1. the same boxes as mmcv's (centres offset by ``label * (max_coordinate + 1)``, identical float operations), in
   the same order (``scores.sort(0, descending=True)`` of the class's scores, so ties fall as mmcv's fall);
2. candidate pairs ``(a, b)``, ``a`` before ``b`` in that order, that pass a necessary condition for
   ``IoU >= t``: with ``I = min(area_a, area_b, overlap of the axis-aligned bounding boxes)`` (an upper bound of
   the intersection), ``I / (area_a + area_b - I) >= t`` — which implies the AABBs overlap and
   ``min(area) >= t * max(area)``; AABBs, areas and ``t`` carry a safety margin for the kernel's float32
   rounding. Found by sweep and prune (boxes sorted by class and x_min; each meets those whose x_min lies within
   its x extent), in chunks of at most ``_CHUNK_PAIRS`` pairs so memory stays bounded;
3. the exact IoU of the candidates with ``mmcv.ops.box_iou_rotated(box_a, box_b, aligned=True)`` — the same
   ``single_box_iou_rotated(higher, lower)`` call mmcv's NMS makes, so bit-identical values — compared with
   ``>=`` against the float32 threshold, as mmcv does;
   degenerate boxes (near-zero short side), for which mmcv's polygon clipping returns arbitrary values, get no
   pruning: every pair of their class is evaluated, so mmcv's verdict is reproduced there too;
4. the greedy suppression over that sparse graph (a box is kept iff no kept box before it overlaps it), resolved
   in vectorised rounds, then sequentially for whatever long chains remain; the exact IoU is asked only for
   pairs whose first box is kept (as the kernel, which skips suppressed boxes);
5. the classes' kept boxes gathered and sorted by score exactly as ``batched_nms`` does.

Falls back to mmcv's ``batched_nms`` where the equality is not guaranteed: non-float32 boxes, non-CPU tensors
(the CUDA kernel is fast already), ``iou_thr <= 0``.
"""
from __future__ import annotations

import torch

__all__ = ["batched_rotated_nms", "mmcv_batched_rotated_nms"]

# relative slack on the two pruning conditions: the exact IoU (float32, polygon clipping) may exceed the true
# bound by rounding; 1e-3 is far above float32 error and costs only a few extra candidate pairs
_SLACK = 1e-3
_MAX_ROUNDS = 32  # vectorised rounds of the greedy resolution before the sequential finish
_CHUNK_PAIRS = 1 << 22  # pairs per chunk of the candidate search (~4M: a few hundred MB of temporaries at most)
# a box whose short side is below this fraction of max(long side, 1 px) is "degenerate": see _candidate_pairs
_DEGENERATE = 1e-3


def mmcv_batched_rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thr: float):
    """The reference: mmcv's class-wise rotated NMS; returns the kept indices (score order)."""
    from mmcv.ops import batched_nms
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    _, keep = batched_nms(boxes, scores, labels, dict(type="nms_rotated", iou_threshold=iou_thr, split_thr=0))
    return keep


def _candidate_pairs(b: torch.Tensor, cls: torch.Tensor, iou_thr: float):
    """Pairs ``(a, c)``, ``a < c``, of rows of ``b`` (n, 5; rows grouped by class, each class in score order) of
    the same class that may have IoU >= iou_thr; everything else provably has IoU < iou_thr.

    Sweep over the boxes sorted by (class, x_min): a box only meets those whose x_min lies within its x extent;
    then the axis-aligned bounding boxes (padded by a float32 rounding allowance) give the bound
    ``IoU <= I / (area1 + area2 - I)``, ``I = min(area1, area2, AABB overlap)``."""
    n = b.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=b.device)
    if n < 2:
        return empty, empty
    bd = b.double()
    cx, cy, w, h, a = bd.unbind(1)
    cos, sin = a.cos().abs(), a.sin().abs()
    # allowance for the kernel's float32 arithmetic on offset centres (relative to the largest magnitude)
    eps = 1e-5 * float(bd[:, :4].abs().max()) + 1e-6
    hx = 0.5 * (w.abs() * cos + h.abs() * sin) + eps
    hy = 0.5 * (w.abs() * sin + h.abs() * cos) + eps
    area = (w * h).abs()
    area_pad = area + 2 * eps * (w.abs() + h.abs()) + 4 * eps * eps
    thr = iou_thr * (1 - _SLACK)
    # sweep and prune: sorted by (class, x_min), box i meets the boxes j > i whose x_min lies before its x_max
    x0, x1 = cx - hx, cx + hx
    perm = torch.argsort(x0, stable=True)
    perm = perm[torch.argsort(cls[perm], stable=True)]
    span = float(x1.max() - x0.min()) + 1
    key = cls[perm].double() * span + (x0[perm] - x0.min())
    key_end = cls[perm].double() * span + (x1[perm] - x0.min())
    hi = torch.searchsorted(key, key_end, right=False)
    count = (hi - torch.arange(1, n + 1, device=b.device)).clamp_(min=0)  # partners after i in the sorted order
    cum = torch.cumsum(count, 0)
    # per sorted box: x0, x1, y0, y1, padded area, area
    feats = torch.stack([x0, x1, cy - hy, cy + hy, area_pad, area], 1)[perm]
    firsts, seconds = [], []
    s = 0
    while s < n:
        base = int(cum[s - 1]) if s else 0
        e = min(n, max(s + 1, int(torch.searchsorted(cum, base + _CHUNK_PAIRS, right=True))))
        cnt = count[s:e]
        total = int(cum[e - 1]) - base
        if total:
            i = torch.repeat_interleave(torch.arange(s, e, device=b.device), cnt)
            start = torch.cumsum(cnt, 0) - cnt
            j = i + 1 + torch.arange(total, device=b.device) - torch.repeat_interleave(start, cnt)
            fi, fj = feats[i], feats[j]
            lo = torch.maximum(fi[:, 0::2], fj[:, 0::2])  # x0, y0, area_pad(max, unused)
            up = torch.minimum(fi[:, 1::2], fj[:, 1::2])  # x1, y1, area(min, unused)
            ov = (up[:, :2] - lo[:, :2]).clamp_(min=0)
            inter = torch.minimum(torch.minimum(fi[:, 4], fj[:, 4]), ov[:, 0] * ov[:, 1])
            ok = inter >= thr * (fi[:, 5] + fj[:, 5] - inter)
            ok &= inter > 0
            pi, pj = perm[i[ok]], perm[j[ok]]
            firsts.append(torch.minimum(pi, pj))
            seconds.append(torch.maximum(pi, pj))
        s = e
    # degenerate boxes (a side ~0 next to the other, or sub-pixel-thin): mmcv's polygon clipping can return any
    # value for them (IoU in the thousands for far-apart boxes), no geometric bound holds; so they are paired with
    # every box of their class and get the kernel's own verdict
    side_min = torch.minimum(w.abs(), h.abs())
    side_max = torch.maximum(w.abs(), h.abs()).clamp(min=1.0)
    degenerate = (side_min < _DEGENERATE * side_max).nonzero(as_tuple=True)[0]
    if degenerate.numel():
        _, counts = torch.unique_consecutive(cls, return_counts=True)
        ends = torch.cumsum(counts, 0)
        cls_start = (ends - counts)[torch.searchsorted(ends, degenerate, right=True)]
        cls_count = counts[torch.searchsorted(ends, degenerate, right=True)]
        others = torch.repeat_interleave(degenerate, cls_count)
        start = torch.cumsum(cls_count, 0) - cls_count
        partner = torch.repeat_interleave(cls_start, cls_count) + torch.arange(int(cls_count.sum())) - \
            torch.repeat_interleave(start, cls_count)
        ok = partner != others
        firsts.append(torch.minimum(others[ok], partner[ok]))
        seconds.append(torch.maximum(others[ok], partner[ok]))
    if not firsts:
        return empty, empty
    first, second = torch.cat(firsts), torch.cat(seconds)
    if degenerate.numel():  # the sweep may have found some of those pairs too
        pair = torch.unique(first * n + second)
        first, second = pair // n, pair % n
    return first, second


def _greedy(n: int, src: torch.Tensor, dst: torch.Tensor, overlaps) -> torch.Tensor:
    """Greedy NMS over the candidate edges ``src -> dst`` (``src < dst``, positions in score order): bool keep
    mask (n,). ``overlaps(edge_indices)`` says which of those edges have IoU >= thr; it is asked only about edges
    from kept boxes (as the kernel, which never compares with a suppressed box), each edge at most once.

    A box is kept iff no kept box before it overlaps it. Rounds: (1) the edges from kept boxes to undecided ones
    are evaluated, their hits suppressed; (2) an undecided box without undecided candidate predecessors is kept
    (its kept predecessors' edges were evaluated in (1) and missed). At least the first undecided box is decided
    every round; long chains are finished sequentially."""
    UNDECIDED, KEPT, SUPPRESSED = 0, 1, 2
    state = torch.zeros(n, dtype=torch.uint8)
    if src.numel() == 0:
        return torch.ones(n, dtype=torch.bool)
    evaluated = torch.zeros(src.numel(), dtype=torch.bool)
    hit = torch.zeros(src.numel(), dtype=torch.bool)
    for _ in range(_MAX_ROUNDS):
        s_state, d_state = state[src], state[dst]
        todo = ((s_state == KEPT) & (d_state == UNDECIDED) & ~evaluated).nonzero(as_tuple=True)[0]
        if todo.numel():
            evaluated[todo] = True
            h = todo[overlaps(todo)]
            hit[h] = True
            state[dst[h]] = SUPPRESSED
            d_state = state[dst]
        blocked = torch.zeros(n, dtype=torch.bool)
        blocked[dst[(s_state == UNDECIDED) & (d_state == UNDECIDED)]] = True
        state[(state == UNDECIDED) & ~blocked] = KEPT
        if not bool((state == UNDECIDED).any()):
            return state == KEPT
    # long chains: evaluate what may still matter, then finish sequentially in score order
    need = ((state[src] != SUPPRESSED) & (state[dst] == UNDECIDED) & ~evaluated).nonzero(as_tuple=True)[0]
    if need.numel():
        hit[need[overlaps(need)]] = True
    src_h, dst_h = src[hit], dst[hit]
    order = torch.argsort(dst_h, stable=True)
    src_sorted = src_h[order].tolist()
    ptr = torch.searchsorted(dst_h[order], torch.arange(n + 1)).tolist()
    st = state.tolist()
    for v in range(n):
        if st[v] != UNDECIDED:
            continue
        st[v] = SUPPRESSED if any(st[src_sorted[k]] == KEPT for k in range(ptr[v], ptr[v + 1])) else KEPT
    return torch.tensor(st, dtype=torch.uint8) == KEPT


def batched_rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                        iou_thr: float) -> torch.Tensor:
    """Kept indices into ``boxes`` (N, 5: cx, cy, w, h, angle in radians), sorted by score, exactly those (and in
    the order) of ``mmcv.ops.batched_nms(boxes, scores, labels, dict(type='nms_rotated', iou_threshold=iou_thr,
    split_thr=0))``."""
    from mmcv.ops import box_iou_rotated

    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.dtype != torch.float32 or boxes.device.type != "cpu" or not iou_thr > 0 or boxes.shape[-1] != 5:
        return mmcv_batched_rotated_nms(boxes, scores, labels, iou_thr)
    # the boxes mmcv's batched_nms hands to nms_rotated (same float operations, so the same bits)
    max_coordinate = boxes[..., :2].max() + boxes[..., 2:4].max()
    offsets = labels.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    boxes_for_nms = torch.cat([boxes[..., :2] + offsets[:, None], boxes[..., 2:5]], dim=-1)
    thr = torch.tensor(iou_thr, dtype=torch.float32)  # the kernel compares against a C++ float

    # per class, the kernel's order (``scores.sort(0, descending=True)`` of the class's scores, ties included);
    # all classes laid out one after the other: node k is the box ``mask_order[k]``
    mask_orders, cls_of = [], []
    for c in torch.unique(labels):
        mask = (labels == c).nonzero(as_tuple=False).view(-1)
        _, order = scores[mask].sort(0, descending=True)
        mask_orders.append(mask[order])
        cls_of.append(torch.full((mask.numel(),), len(cls_of), dtype=torch.long))
    mask_order = torch.cat(mask_orders)
    b = boxes_for_nms[mask_order]
    first, second = _candidate_pairs(b, torch.cat(cls_of), float(iou_thr))

    def overlaps(edges):
        # higher-scored box first: the kernel's single_box_iou_rotated(box_i, box_j) call, so the same bits
        return box_iou_rotated(b[first[edges]], b[second[edges]], aligned=True) >= thr

    keep_pos = _greedy(b.shape[0], first, second, overlaps)
    total_mask = scores.new_zeros(scores.size(), dtype=torch.bool)
    total_mask[mask_order[keep_pos]] = True
    keep = total_mask.nonzero(as_tuple=False).view(-1)
    _, inds = scores[keep].sort(descending=True)
    return keep[inds]
