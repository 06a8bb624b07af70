"""The views of rotation test-time augmentation, without the models: the view set (angles, mirrors, scales), each
view's metainfo, the views' boxes mapped back to the original canvas and merged (NMS or fusion). No escnn: what
:class:`rotplugin.models.FeatureRotationTTAModel` and :class:`rotplugin.models.ImageRotationTTAModel` use, and what
the ONNX Runtime runner (:class:`rotplugin.deploy.onnx.OnnxDetector`) uses without the equivariant layers.

A view is a :class:`View` ``(angle, flip, scale)``: the canvas image resized by ``scale`` (onto its own equivariant
canvas), mirrored ``x -> -x`` about the canvas centre when ``flip``, then rotated by ``angle`` degrees about the
centre (the mirror and angle conventions of :mod:`rotplugin.canvas`). The options users give are
``angles`` x ``flips`` x ``scales`` (:func:`make_views`); the flips are named as mmdet's ``RandomFlip`` names them:
``'none'``, ``'horizontal'`` (columns reversed: the mirror) and ``'vertical'`` (rows reversed: the mirror followed by
a half turn, so ``('vertical', a)`` is the view ``View(a + 180, True)``; for a set of angles closed under half turns
'vertical' repeats the views of 'horizontal'). Views are taken in the order scales, flips, angles (the angles vary
fastest).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor, scale_boxes
from mmengine.structures import InstanceData
from mmrotate.structures.bbox import RotatedBoxes

from rotplugin.boxes import unrotate_rboxes
from rotplugin.canvas import rotated_canvas_size
from rotplugin.models.rotated_fusion import fuse_rotated_boxes
from rotplugin.models.rotated_nms import batched_rotated_nms

__all__ = ["View", "FLIPS", "MERGES", "parse_angles", "parse_flips", "parse_scales", "parse_merge", "make_views",
           "view_sample", "views_to_original", "merge_views"]

# flip name -> (mirror, extra angle): the view 'vertical' then ``a`` is the mirror, then ``a + 180``
FLIPS = {"none": (False, 0.0), "horizontal": (True, 0.0), "vertical": (True, 180.0)}
MERGES = ("nms", "fusion")


class View(NamedTuple):
    """One TTA view (module doc): rotate by ``angle`` degrees after the mirror ``flip``, on the canvas of the image
    resized by ``scale``."""
    angle: float
    flip: bool = False
    scale: float = 1.0


def parse_angles(angles) -> List[float]:
    """Angles in degrees from a sequence of numbers or a string like ``"0,90,180,270"``; clear error otherwise."""
    values = _as_list(angles, "angles", "[0, 90, 180, 270]")
    try:
        out = [float(a) for a in values]
    except (TypeError, ValueError):
        raise ValueError(f"angles not understood: {angles!r}; give a list of degrees like [0, 90, 180, 270]") \
            from None
    if any(not math.isfinite(a) for a in out):
        raise ValueError(f"angles must be finite degrees, got {out}")
    return out


def _as_list(value, what: str, example: str) -> list:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    try:
        out = list(value)
    except TypeError:
        raise ValueError(f"{what} not understood: {value!r}; give a list like {example}") from None
    if not out:
        raise ValueError(f"{what} is empty: give at least one, e.g. {example}")
    return out


def parse_flips(flips) -> List[str]:
    """Flip names (``'none'``, ``'horizontal'``, ``'vertical'``) from a sequence or a string like
    ``"none,horizontal"``; clear error otherwise."""
    out = _as_list(flips, "flips", "['none', 'horizontal']")
    bad = [f for f in out if not isinstance(f, str) or f not in FLIPS]
    if bad:
        raise ValueError(f"unknown flips {bad}: flips are {', '.join(FLIPS)}")
    return out


def parse_scales(scales) -> List[float]:
    """Image scales (positive, finite) from a sequence or a string like ``"0.5,1,1.5"``; clear error otherwise."""
    out = []
    for v in _as_list(scales, "scales", "[0.5, 1.0, 1.5]"):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"scales not understood: {scales!r}; give positive numbers like [0.5, 1.0, 1.5]") \
                from None
        if isinstance(v, bool) or not math.isfinite(f) or f <= 0:
            raise ValueError(f"scales must be positive and finite, got {v!r} in {scales!r}")
        out.append(f)
    return out


def parse_merge(merge) -> str:
    if merge not in MERGES:
        raise ValueError(f"unknown merge {merge!r}: merge is one of {', '.join(MERGES)}")
    return merge


def make_views(angles, flips: Sequence[str] = ("none",), scales: Sequence[float] = (1.0,)) -> List[View]:
    """The views ``scales`` x ``flips`` x ``angles`` (module doc; the options checked, clear errors naming them)."""
    angles, flips, scales = parse_angles(angles), parse_flips(flips), parse_scales(scales)
    views = []
    for scale in scales:
        for name in flips:
            mirror, extra = FLIPS[name]
            views += [View((a + extra) % 360.0 if extra else a, mirror, scale) for a in angles]
    return views


def view_sample(sample: DetDataSample, angle: float, canvas) -> DetDataSample:
    """The metainfo the heads see for the view ``angle`` of ``sample`` on the canvas ``canvas = (H, W)``:
    ``img_shape = batch_input_shape = pad_shape`` = the rotated canvas."""
    view_canvas = tuple(rotated_canvas_size(canvas, angle))
    view = DetDataSample(metainfo=dict(sample.metainfo))
    view.set_metainfo({"img_shape": view_canvas, "batch_input_shape": view_canvas, "pad_shape": view_canvas})
    return view


def views_to_original(results: List[InstanceData], angle: float, canvas, data_samples: List[DetDataSample],
                      flip: bool = False, scale_factors: Optional[Sequence[Sequence[float]]] = None) \
        -> List[DetDataSample]:
    """One view's detections of each image (``results``, boxes on the view's rotated canvas) as
    :class:`DetDataSample` s of the original canvas (boxes mapped back, ``metainfo['tta_angle']`` and
    ``'tta_flip'``, the image's ground truth carried along). ``canvas`` is the canvas the view was rotated from: the
    original one, or for a scaled view the scaled one, from which each image's boxes go back by its
    ``scale_factors[i] = (sx, sy)`` (new size / old size, mmdet's ``scale_factor``)."""
    out = []
    for i, (sample, res) in enumerate(zip(data_samples, results)):
        res = res.clone()
        boxes = unrotate_rboxes(get_box_tensor(res.bboxes), angle, canvas, flip=flip)
        if scale_factors is not None and tuple(scale_factors[i]) != (1.0, 1.0):
            boxes = scale_boxes(RotatedBoxes(boxes), [1.0 / f for f in scale_factors[i]]).tensor
        res.bboxes = boxes
        meta = dict(sample.metainfo, tta_angle=angle, tta_flip=flip)
        if scale_factors is not None:
            meta["tta_scale"] = tuple(scale_factors[i])
        view = DetDataSample(metainfo=meta)
        for key in ("gt_instances", "ignored_instances"):   # ground truth of the original image, if any
            if key in sample:
                view.set_field(sample.get(key), key)
        view.pred_instances = res
        out.append(view)
    return out


def merge_views(views: List[DetDataSample], iou_thr: float, score_thr: float, max_per_img: int,
                merge: str = "nms", fusion_iou_thr: Optional[float] = None) -> DetDataSample:
    """Merge one image's views (from :func:`views_to_original`), after ``score_thr``, by ``merge``:

    * ``'nms'``: class-wise rotated NMS at ``iou_thr`` (mmcv's ``batched_nms(nms_rotated)`` kept set and order,
      exact IoU only for pairs that can reach ``iou_thr``);
    * ``'fusion'``: rotated weighted box fusion (:func:`rotplugin.models.rotated_fusion.fuse_rotated_boxes`),
      clusters at IoU ``fusion_iou_thr`` (default ``iou_thr``), scores by the agreement of the ``len(views)`` views;

    then ``max_per_img`` kept, boxes rescaled to the original image (``scale_factor``)."""
    merge = parse_merge(merge)
    sample = views[0]
    preds = [v.pred_instances for v in views]
    boxes = torch.cat([get_box_tensor(p.bboxes) for p in preds])
    scores = torch.cat([p.scores for p in preds])
    labels = torch.cat([p.labels for p in preds])
    view_ids = torch.repeat_interleave(torch.arange(len(preds)), torch.tensor([len(p.scores) for p in preds]))
    keep = scores >= score_thr
    boxes, scores, labels, view_ids = boxes[keep], scores[keep], labels[keep], view_ids[keep]
    if boxes.numel() and merge == "fusion":
        boxes, scores, labels = fuse_rotated_boxes(boxes, scores, labels, view_ids, len(views),
                                                   iou_thr if fusion_iou_thr is None else fusion_iou_thr)
        boxes, scores, labels = boxes[:max_per_img], scores[:max_per_img], labels[:max_per_img]
    elif boxes.numel():
        idx = batched_rotated_nms(boxes, scores, labels, iou_thr)
        idx = idx[: max_per_img]
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
    result = InstanceData()
    rboxes = RotatedBoxes(boxes.reshape(-1, 5))
    scale = sample.metainfo.get("scale_factor")
    if scale is not None:
        rboxes = scale_boxes(rboxes, [1.0 / s for s in scale])
    result.bboxes, result.scores, result.labels = rboxes, scores, labels
    metainfo = dict(sample.metainfo)
    for key in ("tta_angle", "tta_flip", "tta_scale"):
        metainfo.pop(key, None)
    out = DetDataSample(metainfo=metainfo)
    for key in ("gt_instances", "ignored_instances"):
        if key in sample:
            out.set_field(sample.get(key), key)
    out.pred_instances = result
    return out
