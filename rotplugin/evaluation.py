"""DOTA mAP with the per-class APs returned (not only logged), computed without a process pool.

mmrotate's ``DOTAMetric`` computes the AP of every class with ``eval_rbbox_map`` but returns only the mean (the
per-class numbers go to the log as a table), and ``eval_rbbox_map`` matches detections to ground truth in a
``spawn`` pool of 4 fresh interpreters, each of which imports torch, mmcv and mmdet again (about 20 s per
evaluation on a 2-core machine, more than the evaluation itself for small sets).

:class:`DOTAClassAPMetric` is a ``DOTAMetric`` (same arguments, same mAP: the matching and AP code is mmrotate's
``eval_rbbox_map``) that

* returns ``mAP``, ``AP50`` (one key per IoU threshold, as ``DOTAMetric``) and ``AP_<class>`` for every class
  with ground truth (the classes the mAP averages; classes absent from the ground truth are left out, as in the
  mean), averaged over the IoU thresholds like the mAP;
* keeps :attr:`DOTAClassAPMetric.class_results` (``{class: dict(ap, num_gts, num_dets)}``, all classes) after an
  evaluation;
* runs the matching in the calling process (``nproc=0``, default) or in mmrotate's pool (``nproc >= 1``);
* prints the table only when ``silent=False`` (default).

``merge_patches`` / ``format_only`` (DOTA test-set submission, ``tools/test.py --submission-dir``) are
``DOTAMetric``'s, except that the ``Task1_<class>.txt`` files and the zip are written into a temporary folder beside
``outfile_prefix`` that is renamed to it when complete (an interrupted run leaves no partial submission), and that
``outfile_prefix`` may be an empty folder.

:func:`results_to_task1` turns the pickle of ``tools/test.py --out`` (mmengine's ``DumpResults``) into the
detections of :func:`rotplugin.data.dota_eval.evaluate_task1` (``tools/eval_dota.py``): patches moved to their full
image and merged as ``DOTAMetric(merge_patches=True)`` merges them, but with the scores unrounded (mmrotate writes
them to the Task1 files rounded to 2 decimals).
"""
from __future__ import annotations

import os
import os.path as osp
import re
import shutil
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, List, Sequence

import torch
from mmcv.ops import nms_rotated
from mmdet.structures.bbox import get_box_tensor
from mmengine.logging import MMLogger
from mmrotate.evaluation.functional import eval_rbbox_map, mean_ap
from mmrotate.evaluation.metrics import DOTAMetric
from mmrotate.structures.bbox import rbox2qbox

from rotplugin.registry import METRICS

__all__ = ["DOTAClassAPMetric", "in_process_pool", "results_to_task1", "PATCH_NAME"]

# a patch of tools/dota_split.py: <image id>__<window side>__<x>___<y>
PATCH_NAME = re.compile(r"^(?P<image>.+)__(?P<size>\d+)__(?P<x>-?\d+)___(?P<y>-?\d+)$")


class _SerialPool:
    """The part of ``multiprocessing.Pool`` that ``eval_rbbox_map`` uses, run in the calling process."""

    def starmap(self, func, iterable):
        return [func(*args) for args in iterable]

    def close(self):
        pass

    def join(self):
        pass


class _SerialContext:
    def Pool(self, *args, **kwargs):  # noqa: N802 (multiprocessing's name)
        return _SerialPool()


@contextmanager
def in_process_pool():
    """While the block runs, mmrotate's ``eval_rbbox_map`` matches detections in this process instead of a spawn
    pool (it takes its pool from ``multiprocessing.get_context`` looked up in its own module)."""
    saved = getattr(mean_ap, "get_context", None)
    if saved is None:  # another mmrotate layout: leave it alone, it uses whatever pool it has
        yield
        return
    mean_ap.get_context = lambda method=None: _SerialContext()
    try:
        yield
    finally:
        mean_ap.get_context = saved


@METRICS.register_module()
class DOTAClassAPMetric(DOTAMetric):
    """``DOTAMetric`` that also returns the AP of each class (``AP_<class>``); see the module doc.

    Args:
        nproc: processes for matching detections to ground truth; 0 (default) = in the calling process.
        silent: do not print mmrotate's per-class table.
        **kwargs: ``DOTAMetric``'s arguments (``iou_thrs``, ``scale_ranges``, ``metric``, ``predict_box_type``,
            ``eval_mode``, ``merge_patches``, ``format_only``, ``outfile_prefix``, ...).
    """

    def __init__(self, nproc: int = 0, silent: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(nproc, int) or nproc < 0:
            raise ValueError(f"DOTAClassAPMetric: nproc must be an integer >= 0, got {nproc!r}")
        if self.scale_ranges is not None:
            raise ValueError("DOTAClassAPMetric reports one AP per class; scale_ranges is not supported (use "
                             "DOTAMetric)")
        self.nproc, self.silent = nproc, silent
        self.class_results: Dict[str, dict] = {}

    def merge_results(self, results, outfile_prefix: str) -> str:
        """``DOTAMetric.merge_results`` into a temporary sibling folder, renamed to ``outfile_prefix`` at the end."""
        final = osp.abspath(outfile_prefix)
        if osp.exists(final) and (not osp.isdir(final) or os.listdir(final)):
            raise ValueError(f"submission folder {final} exists and is not empty; remove it or name another")
        parent, name = osp.split(final)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
        try:
            zip_path = super().merge_results(results, osp.join(staging, name))
            os.replace(osp.join(staging, name), final)  # onto nothing or an empty folder: atomic
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return osp.join(final, osp.basename(zip_path))

    def compute_metrics(self, results: list) -> dict:
        if self.merge_patches or self.format_only:
            return super().compute_metrics(results)
        gts, preds = zip(*results)
        dets = [pred["pred_bbox_scores"] for pred in preds]
        classes = list(self.dataset_meta["classes"])
        logger = "silent" if self.silent else MMLogger.get_current_instance()
        out = OrderedDict()
        mean_aps = []
        per_class = {c: dict(ap=0.0, num_gts=0, num_dets=0) for c in classes}
        for iou_thr in self.iou_thrs:
            kwargs = dict(scale_ranges=None, iou_thr=iou_thr, use_07_metric=self.use_07_metric,
                          box_type=self.predict_box_type, dataset=classes, logger=logger)
            if self.nproc == 0:
                with in_process_pool():
                    mean_ap, class_results = eval_rbbox_map(dets, list(gts), nproc=1, **kwargs)
            else:
                mean_ap, class_results = eval_rbbox_map(dets, list(gts), nproc=self.nproc, **kwargs)
            mean_aps.append(float(mean_ap))
            out[f"AP{int(iou_thr * 100):02d}"] = round(float(mean_ap), 3)
            for name, res in zip(classes, class_results):
                per_class[name]["ap"] += float(res["ap"]) / len(self.iou_thrs)
                per_class[name]["num_gts"] = int(res["num_gts"])
                per_class[name]["num_dets"] = int(res["num_dets"])
        out["mAP"] = sum(mean_aps) / len(mean_aps)
        out.move_to_end("mAP", last=False)
        for name in classes:
            if per_class[name]["num_gts"] > 0:
                out[f"AP_{name}"] = per_class[name]["ap"]
        self.class_results = per_class
        return out


def results_to_task1(results: Sequence[dict], classes: Sequence[str], merge_iou: float = 0.1,
                     source: str = "results") -> Dict[str, List[tuple]]:
    """``{class: [(image_id, score, 8 coordinates), ...]}`` from the per-image results of ``DumpResults``
    (``tools/test.py --out``: dicts with ``img_id`` or ``img_path`` and ``pred_instances`` of le90 rotated boxes,
    scores, labels indexing ``classes``).

    A result named like a patch (``<image id>__<size>__<x>___<y>``, :data:`PATCH_NAME`) is moved by ``(x, y)`` to
    its full image, and the patches of an image are merged by class-wise rotated NMS at IoU ``merge_iou`` (mmcv's
    ``nms_rotated``, as ``DOTAMetric.merge_results``); other results are full images, taken as they are.
    Polygons: the corners of each box in mmrotate's order (``rbox2qbox``, as in its Task1 files)."""
    if not 0.0 <= merge_iou <= 1.0:
        raise ValueError(f"merge_iou must be in [0, 1], got {merge_iou}")
    by_image: Dict[str, list] = {}
    patched = set()
    for k, res in enumerate(results):
        if not isinstance(res, dict) or "pred_instances" not in res:
            raise ValueError(f"{source}: entry {k} is not a detection result (a dict with pred_instances); give the "
                             f"pickle of tools/test.py --out")
        name = res.get("img_id")
        if not isinstance(name, str):
            name = osp.splitext(osp.basename(str(res.get("img_path", ""))))[0]
        if not name:
            raise ValueError(f"{source}: entry {k} names no image (img_id / img_path)")
        pred = res["pred_instances"]
        boxes = get_box_tensor(pred["bboxes"]).detach().to("cpu", torch.float64)
        if boxes.ndim != 2 or boxes.shape[-1] != 5:
            raise ValueError(f"{source}: entry {k} ({name}): expected rotated boxes (n, 5), got {tuple(boxes.shape)}")
        scores = torch.as_tensor(pred["scores"]).detach().to("cpu", torch.float64)
        labels = torch.as_tensor(pred["labels"]).detach().to("cpu", torch.long)
        bad = (labels < 0) | (labels >= len(classes))
        if bad.any():
            raise ValueError(f"{source}: entry {k} ({name}): class index {int(labels[bad][0])} outside the "
                             f"{len(classes)} classes ({', '.join(classes)}); --classes names them")
        if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
            raise ValueError(f"{source}: entry {k} ({name}): boxes or scores that are not finite")
        m = PATCH_NAME.match(name)
        if m:
            boxes = boxes.clone()
            boxes[:, 0] += int(m["x"])
            boxes[:, 1] += int(m["y"])
            name = m["image"]
            patched.add(name)
        by_image.setdefault(name, []).append((boxes, scores, labels))
    out: Dict[str, List[tuple]] = {c: [] for c in classes}
    for name, parts in by_image.items():
        boxes, scores, labels = (torch.cat(t) for t in zip(*parts))
        for c, cls in enumerate(classes):
            sel = labels == c
            b, s = boxes[sel], scores[sel]
            if name in patched and len(b):
                _, keep = nms_rotated(b, s, merge_iou)
                b, s = b[keep], s[keep]
            polys = rbox2qbox(b).reshape(-1, 8).numpy()
            out[cls].extend((name, float(sc), list(map(float, p))) for sc, p in zip(s.tolist(), polys))
    return out
