"""The official DOTA Task1 evaluation (oriented boxes), with the rules of the DOTA devkit's
``dota_evaluation_task1.py`` (what the DOTA server runs), on numpy and shapely.

Inputs:

* **Ground truth**: a DOTA ``labelTxt/`` folder of full images, ``<image id>.txt`` with lines
  ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]`` (:func:`load_ground_truth`; the lines are read by
  :func:`rotplugin.data.dota_split.parse_dota_lines`). An image set file (one image id per line) limits the images.
* **Detections**: ``{class: [(image_id, score, [x1, y1, ..., x4, y4]), ...]}`` in full-image pixel coordinates;
  :func:`read_task1_dir` reads them from a folder of ``Task1_<class>.txt`` files, lines
  ``<image id> <score> x1 y1 x2 y2 x3 y3 x4 y4`` (what ``tools/test.py --submission-dir`` writes).

The rules, per class (the devkit's, reproduced decision for decision):

1. The detections of the class over all images are sorted by score, descending, with the devkit's own call
   (``numpy.argsort(-scores)``, numpy's default sort, on the detections in input order; ties fall as they fall
   there: the same input order gives the same order).
2. Each detection, in that order, is compared with **every** ground-truth object of its image and class
   (difficult ones and already matched ones included) by the IoU of the **quadrilaterals as given** (not of a
   rotated box fitted to them). ``ovmax`` is the largest IoU, ``jmax`` the first object (in label-file order) that
   has it. If ``ovmax > iou_thr`` (strictly greater): a difficult ``jmax`` makes the detection neither true nor
   false positive; otherwise the first detection that reaches an unmatched ``jmax`` is a true positive and every
   later one a false positive (duplicate). A detection whose best IoU is not above the threshold -- also one
   whose best match is taken, there is no fall-back to the second best -- is a false positive.
3. ``recall = cumsum(tp) / npos`` with ``npos`` the number of non-difficult objects (difficulty != 0: the
   splitter's 2 counts as difficult too), ``precision = cumsum(tp) / max(cumsum(tp + fp), eps)``.
4. AP: ``voc07`` (default; the devkit's main and the DOTA server): the mean over the 11 recall thresholds
   ``numpy.arange(0, 1.1, 0.1)`` of the largest precision at recall >= threshold (0 when none); ``area``: the area
   under the monotone precision envelope (VOC 2010+, the devkit's ``use_07_metric=False``).

IoU of two quadrilaterals, as the devkit's ``polyiou`` computes it: each is oriented counter-clockwise (by its signed
area) and decomposed into signed triangles, so that the intersection area is the integral of the product of the
two winding numbers and each area is ``|shoelace area|``; ``IoU = inter / (area_a + area_b - inter)``. For convex
and for simple non-convex quadrilaterals that is the plain polygon IoU. A self-intersecting ("bow-tie")
quadrilateral counts its two lobes with opposite signs, as there. Here: a convex quadrilateral is one shapely
polygon; any other is split into the fan triangles ``(p0, p1, p2)`` and ``(p0, p2, p3)`` with weights ``±1`` (the
sign of each triangle's area relative to the quadrilateral's; a degenerate triangle weighs 0), and the intersection
is the weighted sum of shapely's triangle intersections. A pair whose union is not positive has IoU 0 here (the devkit
divides by it; that takes degenerate or self-overlapping bow-ties, and changes a decision only when such a union is
exactly 0 with a positive intersection). Only pairs whose bounding boxes touch (within the
devkit's ``+1`` pixel test) are intersected; the others have IoU 0 and never change ``ovmax`` or ``jmax``.

What differs from the devkit, deliberately (each only where the devkit crashes or reports nothing):

* an empty ``Task1_<class>.txt`` (the devkit fails to index it) gives AP 0 with ``num_dets`` 0; a class with
  detections but no non-difficult ground truth has AP 0 (the devkit divides by ``npos = 0`` and also ends at 0);
* the mean: ``mAP`` averages the classes with ``npos > 0`` (as mmrotate's ``DOTAMetric``); ``devkit_mAP``
  divides the sum of the APs by the length of the class list (the devkit's ``main`` over its 15 DOTA-v1.0 names),
  given when the class list is known. On a full DOTA val / test set, where every class has objects, they agree;
* bad input gets an error naming the file and line (:class:`DOTAFormatError`) instead of a Python traceback:
  a result line that is not ``image score 8 coordinates``, a score or coordinate that is not a finite number, a
  ``Task1_<class>.txt`` of a class outside the class list, a detection on an image without a label file (ground
  truth of a class outside the class list is ignored, as the devkit ignores it, and counted);
* label lines with fewer than 9 fields, which the devkit skips, are skipped too and counted in the warnings
  (the ``imagesource:`` / ``gsd:`` header lines of the original files are skipped silently); detections on
  images that have labels but are outside the image set are dropped and counted (the devkit fails on them); label
  images without any detection are counted (a wrong results folder shows there).

Difference from mmrotate's ``eval_rbbox_map`` (``DOTAMetric``), which the tests pin down: mmrotate compares
detections with the rotated box it fits to each ground-truth quadrilateral (``qbox2rbox``: the minimum-area
rectangle), and accepts ``IoU >= iou_thr``; it matches within each image and sorts per image before the global
sort. On rectangular ground truth and IoUs away from the threshold the two give the same AP; on non-rectangular
quadrilaterals the IoUs differ and a detection can fall on either side of 0.5.
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from rotplugin.data.dota_split import _HEADER_PREFIXES, DOTAFormatError, parse_dota_lines, resolve_classes

__all__ = [
    "METRICS",
    "CountedWarnings",
    "DOTAFormatError",
    "read_task1_dir",
    "read_image_set",
    "load_ground_truth",
    "quad_iou_pairs",
    "voc_ap",
    "evaluate_task1",
    "format_results_table",
]

METRICS = ("voc07", "area")
TASK1_PREFIX, TASK1_SUFFIX = "Task1_", ".txt"
Detections = Dict[str, List[Tuple[str, float, Sequence[float]]]]


class CountedWarnings:
    """Counted warnings: ``{kind: [count, first example]}``, reported as one line per kind."""

    def __init__(self):
        self.kinds: Dict[str, list] = {}

    def add(self, kind: str, example: str, count: int = 1) -> None:
        if kind in self.kinds:
            self.kinds[kind][0] += count
        else:
            self.kinds[kind] = [count, example]

    def lines(self) -> List[str]:
        return [f"{kind}: {n} (first: {example})" for kind, (n, example) in self.kinds.items()]


# ---------------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------------
def read_task1_dir(results_dir: str, classes: Optional[Sequence[str]] = "dota1.0") -> Detections:
    """Read ``Task1_<class>.txt`` files: ``{class: [(image_id, score, 8 coordinates), ...]}`` in file order.

    ``classes``: the allowed class names (a preset ``dota1.0`` / ``dota1.5`` / ``dota2.0``, names, or ``None`` /
    ``'any'``); a file of another class is an error naming it. Errors (:class:`DOTAFormatError`) name file and line.
    """
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"results folder {results_dir!r} does not exist (a folder of Task1_<class>.txt)")
    allowed = resolve_classes(classes)
    names = sorted(n for n in os.listdir(results_dir) if n.startswith(TASK1_PREFIX) and n.endswith(TASK1_SUFFIX))
    if not names:
        raise DOTAFormatError(f"no {TASK1_PREFIX}<class>{TASK1_SUFFIX} files in {results_dir!r}")
    dets: Detections = {}
    for name in names:
        cls = name[len(TASK1_PREFIX):-len(TASK1_SUFFIX)]
        path = os.path.join(results_dir, name)
        if allowed is not None and cls not in allowed:
            raise DOTAFormatError(f"{path}: unknown class {cls!r} (known: {', '.join(allowed)}; "
                                  f"--classes names the class list)")
        dets[cls] = _parse_task1_lines(path)
    return dets


def _parse_task1_lines(path: str) -> List[Tuple[str, float, List[float]]]:
    out = []
    with open(path, "r", encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 10:
                raise DOTAFormatError(f"{path}:{lineno}: expected 10 fields 'image_id score x1 y1 x2 y2 x3 y3 x4 y4', "
                                      f"got {len(fields)}: {line!r}")
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                values = None
            if values is None or not all(math.isfinite(v) for v in values):
                raise DOTAFormatError(f"{path}:{lineno}: score and coordinates must be finite numbers: {line!r}")
            out.append((fields[0], values[0], values[1:]))
    return out


def read_image_set(path: str) -> List[str]:
    """Image ids of an image-set file, one per line (blank lines ignored; an extension is not stripped, as in the
    devkit: ``P0003`` names ``labelTxt/P0003.txt``). Duplicates are an error."""
    with open(path, "r", encoding="utf-8-sig") as f:
        ids = [line.strip() for line in f if line.strip()]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        raise DOTAFormatError(f"{path}: image ids listed twice: {', '.join(sorted(dup)[:5])}")
    if not ids:
        raise DOTAFormatError(f"{path}: the image set is empty")
    return ids


def load_ground_truth(label_dir: str, image_set: Optional[Sequence[str]] = None,
                      notes: Optional[CountedWarnings] = None) -> Dict[str, dict]:
    """``{image_id: dict(polys (N, 8) float64, labels [str], difficulties (N,) int64)}`` of ``label_dir``
    (``<image id>.txt`` files), or of the ids of ``image_set`` only (each must have its file).

    Lines with fewer than 9 fields are skipped as the devkit skips them (counted in ``notes``); any other bad line
    (more than 10 fields, a coordinate that is not finite, a difficulty that is not an integer) is a
    :class:`DOTAFormatError` naming file and line. Every class name is read (the evaluation's class list decides
    which are scored)."""
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"label folder {label_dir!r} does not exist (a DOTA labelTxt/ folder)")
    if image_set is None:
        ids = sorted(n[:-4] for n in os.listdir(label_dir) if n.endswith(".txt"))
        if not ids:
            raise DOTAFormatError(f"no <image id>.txt label files in {label_dir!r}")
    else:
        ids = list(image_set)
        missing = [i for i in ids if not os.path.isfile(os.path.join(label_dir, i + ".txt"))]
        if missing:
            raise DOTAFormatError(f"{len(missing)} image(s) of the image set have no label file in {label_dir!r}: "
                                  f"{', '.join(missing[:5])}")
    gts = {}
    for image_id in ids:
        path = os.path.join(label_dir, image_id + ".txt")
        with open(path, "r", encoding="utf-8-sig") as f:
            lines = f.readlines()
        kept = []
        for lineno, raw in enumerate(lines, start=1):
            line = raw.strip()
            n = len(line.split())
            if 0 < n < 9 and not line.lower().startswith(_HEADER_PREFIXES):
                if notes is not None:
                    notes.add("label lines with fewer than 9 fields skipped (as the devkit does)",
                              f"{path}:{lineno}: {line!r}")
                kept.append("")  # blank: skipped by the parser, line numbers stay those of the file
            else:
                kept.append(raw)
        gts[image_id] = parse_dota_lines(kept, source=path, classes=None)
    return gts


# ---------------------------------------------------------------------------------------------------------------
# quadrilateral IoU
# ---------------------------------------------------------------------------------------------------------------
def _signed_area(q: np.ndarray) -> np.ndarray:
    """Shoelace area of ``(n, 4, 2)`` quadrilaterals, positive counter-clockwise (x right, y up) -- in image
    coordinates (y down) positive means clockwise on screen; only the sign's consistency matters here."""
    x, y = q[..., 0], q[..., 1]
    return 0.5 * (x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(-1)


def _is_convex(q: np.ndarray) -> np.ndarray:
    """Strictly convex (no three collinear corners, no self-intersection) ``(n, 4, 2)`` quadrilaterals."""
    e = np.roll(q, -1, axis=1) - q                          # edges
    en = np.roll(e, -1, axis=1)
    cross = e[..., 0] * en[..., 1] - e[..., 1] * en[..., 0]  # turn at each corner
    return (cross > 0).all(1) | (cross < 0).all(1)


class _Pieces:
    """Each quadrilateral as shapely pieces with weights: a convex one is one polygon (weight 1), any other the two
    fan triangles with weight ``sign(triangle area) * sign(quadrilateral area)`` (0 for a degenerate triangle)."""

    def __init__(self, polys: np.ndarray):
        import shapely

        q = np.asarray(polys, np.float64).reshape(-1, 4, 2)
        signed = _signed_area(q)
        self.area = np.abs(signed)
        convex = _is_convex(q)
        n = len(q)
        orient = np.where(signed < 0, -1.0, 1.0)  # the devkit reverses a polygon of negative area
        t1 = q[:, [0, 1, 2]]
        t2 = q[:, [0, 2, 3]]
        w1 = np.sign(_signed_area(t1)) * orient
        w2 = np.sign(_signed_area(t2)) * orient
        general = np.nonzero(~convex)[0]
        owner = [np.nonzero(convex)[0]]
        rings = [q[convex]]
        weights = [np.ones(int(convex.sum()))]
        for tri, w in ((t1, w1), (t2, w2)):
            keep = general[w[general] != 0]
            owner.append(keep)
            rings.append(tri[keep])
            weights.append(w[keep])
        self.owner = np.concatenate(owner).astype(np.int64)
        self.weight = np.concatenate(weights)
        geoms = np.empty(len(self.owner), dtype=object)
        start = 0
        for r in rings:
            if len(r):
                geoms[start:start + len(r)] = shapely.polygons(r)
            start += len(r)
        self.geoms = geoms
        # pieces of quadrilateral i: self.order[self.start[i]:self.start[i + 1]]
        self.order = np.argsort(self.owner, kind="stable")
        self.count = np.bincount(self.owner, minlength=n)
        self.start = np.concatenate([[0], np.cumsum(self.count)])


def quad_iou_pairs(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """IoU of the quadrilaterals ``a[ia[k]]`` and ``b[ib[k]]`` for every ``k`` (``a``: (n, 8), ``b``: (m, 8)), with
    the devkit's definition (see the module doc)."""
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    if len(ia) == 0:
        return np.zeros(0, np.float64)
    return _pair_iou(_Pieces(a), _Pieces(b), ia, ib)


def _expand(pieces: _Pieces, idx: np.ndarray):
    """For each ``idx[k]``, its pieces: (pair k repeated, piece index)."""
    counts = pieces.count[idx]
    pair = np.repeat(np.arange(len(idx)), counts)
    offsets = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    return pair, pieces.order[pieces.start[idx][pair] + offsets]


def _pair_iou(pa: _Pieces, pb: _Pieces, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    import shapely

    pair_a, piece_a = _expand(pa, ia)                  # pieces of a for every pair
    counts_b = pb.count[ib][pair_a]                     # each of those meets every piece of b of its pair
    pair = np.repeat(pair_a, counts_b)
    piece_a = np.repeat(piece_a, counts_b)
    offsets = np.arange(len(pair)) - np.repeat(np.cumsum(counts_b) - counts_b, counts_b)
    piece_b = pb.order[pb.start[ib[pair]] + offsets]
    inter_pieces = shapely.area(shapely.intersection(pa.geoms[piece_a], pb.geoms[piece_b]))
    inter = np.bincount(pair, weights=inter_pieces * pa.weight[piece_a] * pb.weight[piece_b], minlength=len(ia))
    union = pa.area[ia] + pb.area[ib] - inter
    iou = np.zeros(len(ia), np.float64)
    ok = union > 0
    iou[ok] = inter[ok] / union[ok]
    return iou


def _bbox(polys: np.ndarray) -> np.ndarray:
    q = polys.reshape(-1, 4, 2)
    return np.concatenate([q.min(1), q.max(1)], axis=1)  # x0, y0, x1, y1


def _candidate_pairs(det_img: np.ndarray, det_box: np.ndarray, gt_img: np.ndarray, gt_box: np.ndarray):
    """Pairs (detection, object) of the same image whose bounding boxes pass the devkit's ``+1`` overlap test,
    in (detection, object index) order."""
    order = np.argsort(gt_img, kind="stable")
    sorted_img = gt_img[order]
    lo = np.searchsorted(sorted_img, det_img, side="left")
    hi = np.searchsorted(sorted_img, det_img, side="right")
    counts = hi - lo
    d = np.repeat(np.arange(len(det_img)), counts)
    offsets = np.arange(len(d)) - np.repeat(np.cumsum(counts) - counts, counts)
    g = order[np.repeat(lo, counts) + offsets]
    if len(d) == 0:
        return d, g
    db, gb = det_box[d], gt_box[g]
    iw = np.minimum(db[:, 2], gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0]) + 1.0
    ih = np.minimum(db[:, 3], gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1]) + 1.0
    keep = (iw > 0) & (ih > 0)
    d, g = d[keep], g[keep]
    o = np.lexsort((g, d))
    return d[o], g[o]


# ---------------------------------------------------------------------------------------------------------------
# AP
# ---------------------------------------------------------------------------------------------------------------
def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP of a precision/recall curve (detections in score order): ``voc07`` 11-point or ``area`` (module doc)."""
    rec, prec = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if metric == "voc07":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = rec >= t
            ap += (float(np.max(prec[above])) if above.any() else 0.0) / 11.0
        return ap
    if metric == "area":
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
        i = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def _class_tp_fp(det_img, det_scores, det_polys, gt_img, gt_polys, gt_difficult, iou_thr):
    """tp / fp flags of the class's detections in the devkit's score order."""
    order = np.argsort(-det_scores)  # the devkit's call (numpy's default sort), so that ties fall the same way
    det_img, det_polys = det_img[order], det_polys[order]
    nd = len(order)
    tp, fp = np.zeros(nd), np.ones(nd)
    if nd == 0 or len(gt_img) == 0:
        return tp, fp
    d, g = _candidate_pairs(det_img, _bbox(det_polys), gt_img, _bbox(gt_polys))
    if len(d) == 0:
        return tp, fp
    iou = quad_iou_pairs(det_polys, gt_polys, d, g)
    # per detection: the largest IoU and the first object (label order) that has it
    o = np.lexsort((g, -iou, d))
    first = np.ones(len(o), bool)
    first[1:] = d[o][1:] != d[o][:-1]
    best = o[first]
    dets, ovmax, jmax = d[best], iou[best], g[best]
    hit = ovmax > iou_thr
    dets, jmax = dets[hit], jmax[hit]
    difficult = gt_difficult[jmax]
    fp[dets[difficult]] = 0.0                      # matched a difficult object: neither
    dets, jmax = dets[~difficult], jmax[~difficult]
    _, first_hit = np.unique(jmax, return_index=True)  # dets is in score order: the first one per object wins
    tp[dets[first_hit]] = 1.0
    fp[dets[first_hit]] = 0.0
    return tp, fp


def evaluate_task1(detections: Mapping[str, Iterable], ground_truth: Mapping[str, dict], iou_thr: float = 0.5,
                   metric: str = "voc07", classes: Optional[Sequence[str]] = None,
                   image_set: Optional[Sequence[str]] = None, notes: Optional[CountedWarnings] = None) -> dict:
    """DOTA Task1 AP per class and mAP (module doc for the rules).

    Args:
        detections: ``{class: [(image_id, score, [x1, y1, ..., x4, y4]), ...]}``, full-image coordinates.
        ground_truth: ``{image_id: dict(polys, labels, difficulties)}`` (:func:`load_ground_truth`).
        iou_thr: a detection matches when its best IoU is strictly greater.
        metric: ``'voc07'`` (11 points, the devkit's and the DOTA server's) or ``'area'``.
        classes: the class list (a preset or names): the classes scored (objects of other classes are ignored, as
            the devkit ignores them, and counted); reported are those with objects or detections, and
            ``devkit_mAP`` averages over all of it. ``None``: the classes found in either input.
        image_set: only these images (ground truth and detections); detections on other labelled images are
            dropped and counted.

    Returns ``{"mAP", "metric", "iou_thr", "classes": {class: {"ap", "num_gts", "num_dets"}}, "num_images",
    "warnings": [str]}`` (+ ``"devkit_mAP"`` with a class list). ``num_gts`` counts the non-difficult objects (the
    devkit's ``npos``), ``num_dets`` the detections evaluated.

    Raises :class:`DOTAFormatError` for a detection on an image without ground truth, a non-finite number, or
    detections of a class outside ``classes``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not (isinstance(iou_thr, (int, float)) and 0.0 <= float(iou_thr) < 1.0):
        raise ValueError(f"iou_thr must be a number in [0, 1), got {iou_thr!r}")
    notes = notes if notes is not None else CountedWarnings()
    class_list = resolve_classes(classes)
    images = list(ground_truth) if image_set is None else list(image_set)
    missing = [i for i in images if i not in ground_truth]
    if missing:
        raise DOTAFormatError(f"{len(missing)} image(s) of the image set have no label file (no ground truth): "
                              f"{', '.join(missing[:5])}")
    index = {img: k for k, img in enumerate(images)}

    # ground truth per class: image index, polygons, difficult flags
    gt_by_class: Dict[str, list] = defaultdict(lambda: [[], [], []])
    for img in images:
        ann = ground_truth[img]
        for poly, label, diff in zip(ann["polys"], ann["labels"], ann["difficulties"]):
            if class_list is not None and label not in class_list:  # the devkit scores only its class list
                notes.add("objects of classes outside the class list ignored (as the devkit does)",
                          f"{img}: {label}")
                continue
            entry = gt_by_class[label]
            entry[0].append(index[img])
            entry[1].append(poly)
            entry[2].append(bool(diff))

    names = list(class_list) if class_list is not None else sorted(set(gt_by_class) | set(detections))
    seen_images = set()
    results = {}
    for cls in names:
        lines = list(detections.get(cls, ()))
        if class_list is not None and cls not in class_list:
            raise DOTAFormatError(f"detections of unknown class {cls!r} (known: {', '.join(class_list)})")
        det_img, det_scores, det_polys = [], [], []
        for k, (img, score, poly) in enumerate(lines):
            where = f"class {cls!r}, detection {k + 1} ({img})"
            if img not in index:
                if img in ground_truth:
                    notes.add("detections on labelled images outside the image set dropped", where)
                    continue
                raise DOTAFormatError(f"{where}: image {img!r} has no ground truth (no {img}.txt in the labels)")
            vals = np.asarray(poly, np.float64).reshape(-1)
            if vals.shape != (8,) or not np.isfinite(vals).all() or not math.isfinite(float(score)):
                raise DOTAFormatError(f"{where}: expected a finite score and 8 finite coordinates, got "
                                      f"{score!r}, {list(poly)!r}")
            det_img.append(index[img])
            det_scores.append(float(score))
            det_polys.append(vals)
            seen_images.add(img)
        gi, gp, gd = gt_by_class.get(cls, ([], [], []))
        gt_difficult = np.asarray(gd, bool)
        npos = int((~gt_difficult).sum())
        tp, fp = _class_tp_fp(np.asarray(det_img, np.int64), np.asarray(det_scores, np.float64),
                              np.asarray(det_polys, np.float64).reshape(-1, 8), np.asarray(gi, np.int64),
                              np.asarray(gp, np.float64).reshape(-1, 8), gt_difficult, float(iou_thr))
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos if npos > 0 else np.zeros_like(tp)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = voc_ap(rec, prec, metric) if npos > 0 else 0.0
        if len(gi) or len(det_img):
            results[cls] = dict(ap=float(ap), num_gts=npos, num_dets=len(det_img))
    unseen = [img for img in images if img not in seen_images]
    if unseen and len(unseen) < len(images):
        notes.add("labelled images without any detection", unseen[0], len(unseen))
    elif unseen:
        notes.add("no detection on any labelled image", unseen[0], len(unseen))
    with_gts = [r["ap"] for r in results.values() if r["num_gts"] > 0]
    out = {"mAP": float(np.mean(with_gts)) if with_gts else 0.0, "metric": metric, "iou_thr": float(iou_thr),
           "classes": results, "num_images": len(images)}
    if class_list is not None:
        out["devkit_mAP"] = float(sum(r["ap"] for r in results.values()) / len(class_list))
    out["warnings"] = notes.lines()
    return out


def format_results_table(result: dict) -> str:
    """A plain-text table: class, objects, detections, AP; then the mean(s)."""
    rows = [("class", "gts", "dets", "AP")]
    for cls, r in result["classes"].items():
        rows.append((cls, str(r["num_gts"]), str(r["num_dets"]), f"{r['ap']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"mAP ({result['metric']}, IoU > {result['iou_thr']:g}): {result['mAP']:.4f} over the classes "
                 f"with ground truth")
    if "devkit_mAP" in result:
        lines.append(f"devkit mean over the class list: {result['devkit_mAP']:.4f}")
    return "\n".join(lines)
