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

Entry points: :func:`batched_rotated_nms` (the TTA merge: kept indices of the per-class path), and two drop-ins:
:func:`batched_nms` (mmcv's ``batched_nms`` signature and result, both of its paths: one kernel call over all
class-offset boxes below ``split_thr``, one per class above) and :func:`multiclass_nms` (mmdet's ``multiclass_nms``,
on :func:`batched_nms`), which the test-time head of :mod:`rotplugin.models.pruned_nms_heads` calls.
"""
from __future__ import annotations

import torch
from mmcv.ops import batched_nms as mmcv_batched_nms
from mmcv.ops import box_iou_rotated, nms_rotated

__all__ = ["batched_nms", "batched_rotated_nms", "multiclass_nms", "overlapping_pairs"]

# relative slack on the two pruning conditions: the exact IoU (float32, polygon clipping) may exceed the true
# bound by rounding; 1e-3 is far above float32 error and costs only a few extra candidate pairs
_SLACK = 1e-3
_MAX_ROUNDS = 32  # vectorised rounds of the greedy resolution before the sequential finish
_CHUNK_PAIRS = 1 << 22  # pairs per chunk of the candidate search (~4M: a few hundred MB of temporaries at most)
# a box whose short side is below this fraction of max(long side, 1 px) is "degenerate": see _candidate_pairs
_DEGENERATE = 1e-3


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
            lo = torch.maximum(fi[:, 0:4:2], fj[:, 0:4:2])  # x0, y0
            up = torch.minimum(fi[:, 1:4:2], fj[:, 1:4:2])  # x1, y1
            ov = (up - lo).clamp_(min=0)
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
        cls_of = torch.searchsorted(ends, degenerate, right=True)
        cls_start, cls_count = (ends - counts)[cls_of], counts[cls_of]
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


def overlapping_pairs(boxes: torch.Tensor, labels: torch.Tensor, iou_thr: float):
    """Every pair ``(i, j)``, ``i < j``, of rows of ``boxes`` (n, 5) with the same label and rotated IoU
    ``>= iou_thr`` (``mmcv.ops.box_iou_rotated`` in float32), with that IoU: ``(i, j, iou)``. The exact IoU is
    computed only for the pairs that :func:`_candidate_pairs` cannot rule out. ``iou_thr`` must be > 0."""
    if not iou_thr > 0:
        raise ValueError(f"overlapping_pairs needs iou_thr > 0, got {iou_thr}")
    order = torch.argsort(labels, stable=True)
    b = boxes[order].float()
    first, second = _candidate_pairs(b, labels[order], float(iou_thr))
    if first.numel() == 0:
        return first, second, b.new_zeros(0)
    iou = box_iou_rotated(b[first], b[second], aligned=True)
    ok = iou >= torch.tensor(iou_thr, dtype=torch.float32)
    i, j = order[first[ok]], order[second[ok]]
    return torch.minimum(i, j), torch.maximum(i, j), iou[ok]


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


def _offset_boxes(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The boxes mmcv's ``batched_nms`` hands to ``nms_rotated`` (centres offset by ``label * (max_coordinate +
    1)``; the same float operations, so the same bits)."""
    max_coordinate = boxes[..., :2].max() + boxes[..., 2:4].max()
    offsets = labels.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return torch.cat([boxes[..., :2] + offsets[:, None], boxes[..., 2:5]], dim=-1)


def _kept_by_kernel(boxes_for_nms: torch.Tensor, orders, iou_thr: float) -> torch.Tensor:
    """What separate calls of mmcv's ``nms_rotated`` kernel keep: one call per index tensor of ``orders`` (each the
    kernel's processing order of its boxes, ``scores[group].sort(0, descending=True)``). Returns the kept indices
    into ``boxes_for_nms``, call after call, each call's in its processing order."""
    thr = torch.tensor(iou_thr, dtype=torch.float32)  # the kernel compares against a C++ float
    # all calls laid out one after the other: node k is the box ``order[k]``; pairs only within a call
    order = torch.cat(orders)
    call_of = torch.repeat_interleave(torch.arange(len(orders)), torch.tensor([o.numel() for o in orders]))
    b = boxes_for_nms[order]
    first, second = _candidate_pairs(b, call_of, float(iou_thr))

    def overlaps(edges):
        # higher-scored box first: the kernel's single_box_iou_rotated(box_i, box_j) call, so the same bits
        return box_iou_rotated(b[first[edges]], b[second[edges]], aligned=True) >= thr

    return order[_greedy(b.shape[0], first, second, overlaps)]


def _falls_back(boxes: torch.Tensor, iou_thr) -> bool:
    """Inputs for which the equality with the kernel is not guaranteed (or the CUDA kernel is fast already)."""
    return (boxes.dtype != torch.float32 or boxes.device.type != "cpu" or not iou_thr > 0 or boxes.dim() != 2
            or boxes.shape[-1] != 5)


def _classwise_keep(boxes_for_nms: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                    iou_thr: float) -> torch.Tensor:
    """mmcv's ``batched_nms`` split path: one kernel call per class, then the kept boxes sorted by score."""
    orders = []
    for c in torch.unique(labels):
        mask = (labels == c).nonzero(as_tuple=False).view(-1)
        _, order = scores[mask].sort(0, descending=True)
        orders.append(mask[order])
    total_mask = scores.new_zeros(scores.size(), dtype=torch.bool)
    total_mask[_kept_by_kernel(boxes_for_nms, orders, iou_thr)] = True
    keep = total_mask.nonzero(as_tuple=False).view(-1)
    _, inds = scores[keep].sort(descending=True)
    return keep[inds]


def batched_rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                        iou_thr: float) -> torch.Tensor:
    """Kept indices into ``boxes`` (N, 5: cx, cy, w, h, angle in radians), sorted by score, exactly those (and in
    the order) of ``mmcv.ops.batched_nms(boxes, scores, labels, dict(type='nms_rotated', iou_threshold=iou_thr,
    split_thr=0))``."""
    if boxes.numel() == 0:     # before batched_nms: mmcv's fallback (e.g. float64) fails on empty input
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return batched_nms(boxes, scores, labels, dict(type="nms_rotated", iou_threshold=iou_thr, split_thr=0))[1]


_NMS_CFG_KEYS = {"type", "iou_threshold", "split_thr", "class_agnostic", "max_num"}


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, nms_cfg,
                class_agnostic: bool = False):
    """Drop-in for ``mmcv.ops.batched_nms`` that returns the same ``(dets, keep)`` for rotated boxes
    (``nms_cfg`` of type ``'nms_rotated'``), with the pruned rotated NMS of this module on CPU float32.

    Both of mmcv's paths are reproduced: below ``split_thr`` (default 10000) boxes one kernel call over all the
    (class-offset) boxes, kept in its processing order; otherwise one call per class, the kept boxes sorted by
    score and cut to ``max_num``; ``class_agnostic`` (argument or ``nms_cfg`` key) without offsets. ``dets`` is
    ``(k, 6)``: the kept boxes and their scores. Everything else (another NMS type, other ``nms_cfg`` keys, CUDA,
    non-float32, ``nms_cfg=None``) is handed to mmcv's ``batched_nms`` unchanged. Empty input gives ``(0, 6)`` dets
    and no indices (mmcv's single-call path returns malformed output there; mmdet's heads never call it empty)."""
    cfg = dict(nms_cfg) if nms_cfg is not None else None
    if (cfg is None or cfg.get("type", "nms") not in ("nms_rotated", nms_rotated) or not set(cfg) <= _NMS_CFG_KEYS
            or _falls_back(boxes, cfg.get("iou_threshold", 0))):
        return mmcv_batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic)
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, 6), torch.zeros(0, dtype=torch.long, device=boxes.device)
    class_agnostic = cfg.get("class_agnostic", class_agnostic)
    iou_thr = float(cfg["iou_threshold"])
    boxes_for_nms = boxes if class_agnostic else _offset_boxes(boxes, idxs)
    if boxes.shape[0] < cfg.get("split_thr", 10000):
        if "max_num" in cfg:  # mmcv passes it on to nms_rotated, which rejects it: let mmcv say so
            return mmcv_batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic)
        _, order = scores.sort(0, descending=True)
        keep = _kept_by_kernel(boxes_for_nms, [order], iou_thr)
    else:
        keep = _classwise_keep(boxes_for_nms, scores, idxs, iou_thr)
        if cfg.get("max_num", -1) > 0:
            keep = keep[: cfg["max_num"]]
    return torch.cat([boxes[keep], scores[keep][:, None]], -1), keep


def multiclass_nms(multi_bboxes: torch.Tensor, multi_scores: torch.Tensor, score_thr: float, nms_cfg,
                   max_num: int = -1, score_factors=None, return_inds: bool = False, box_dim: int = 5):
    """Drop-in for mmdet's ``multiclass_nms`` (``mmdet.models.layers``), as the RoI bbox heads call it for rotated
    boxes, with :func:`batched_nms` of this module; same ``(dets, labels[, inds])``.

    ``multi_bboxes`` (n, C·box_dim) or (n, box_dim) (shared by the classes), ``multi_scores`` (n, C + 1), the last
    column the background (ignored); candidates are the (box, class) pairs with score ``> score_thr`` (strictly),
    numbered box-major (``inds = box * C + class``); ``score_factors`` (n,) multiply the scores after that
    threshold; then the class-wise NMS of ``nms_cfg`` and the first ``max_num`` (if > 0)."""
    num_classes = multi_scores.size(1) - 1
    n = multi_scores.size(0)
    if multi_bboxes.shape[1] > box_dim:
        bboxes = multi_bboxes.view(n, -1, box_dim)
    else:
        bboxes = multi_bboxes[:, None].expand(n, num_classes, box_dim)
    bboxes = bboxes.reshape(-1, box_dim)
    scores = multi_scores[:, :-1].reshape(-1)
    labels = torch.arange(num_classes, dtype=torch.long, device=scores.device).repeat(n)
    inds = (scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    if score_factors is not None:
        scores = scores * score_factors.view(-1, 1).expand(n, num_classes).reshape(-1)
    bboxes, scores, labels = bboxes[inds], scores[inds], labels[inds]
    if bboxes.numel() == 0:
        dets = torch.cat([bboxes, scores[:, None]], -1)
        return (dets, labels, inds) if return_inds else (dets, labels)
    dets, keep = batched_nms(bboxes, scores, labels, nms_cfg)
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return (dets, labels[keep], inds[keep]) if return_inds else (dets, labels[keep])
