"""The views of rotation test-time augmentation, without the models: angles, each view's metainfo, the views'
boxes mapped back to the original canvas and merged. No escnn: what :class:`rotplugin.models.FeatureRotationTTAModel`
and :class:`rotplugin.models.ImageRotationTTAModel` use, and what the ONNX Runtime runner
(:class:`rotplugin.deploy.onnx.OnnxDetector`) uses without the equivariant layers."""
from __future__ import annotations

import math
from typing import List

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor, scale_boxes
from mmengine.structures import InstanceData
from mmrotate.structures.bbox import RotatedBoxes

from rotplugin.boxes import unrotate_rboxes
from rotplugin.canvas import rotated_canvas_size
from rotplugin.models.rotated_nms import batched_rotated_nms

__all__ = ["parse_angles", "view_sample", "views_to_original", "merge_views"]


def parse_angles(angles) -> List[float]:
    """Angles in degrees from a sequence of numbers or a string like ``"0,90,180,270"``; clear error otherwise."""
    if isinstance(angles, str):
        parts = [a for a in angles.replace(",", " ").split() if a]
        try:
            angles = [float(a) for a in parts]
        except ValueError:
            raise ValueError(f"angles not understood: {angles!r}; give degrees like '0,90,180,270'") from None
    if isinstance(angles, (int, float)):
        angles = [angles]
    try:
        out = [float(a) for a in angles]
    except (TypeError, ValueError):
        raise ValueError(f"angles not understood: {angles!r}; give a list of degrees like [0, 90, 180, 270]") \
            from None
    if not out:
        raise ValueError("angles is empty: give at least one angle in degrees, e.g. [0, 90, 180, 270]")
    if any(not math.isfinite(a) for a in out):
        raise ValueError(f"angles must be finite degrees, got {out}")
    return out


def view_sample(sample: DetDataSample, angle: float, canvas) -> DetDataSample:
    """The metainfo the heads see for the view ``angle`` of ``sample`` on the canvas ``canvas = (H, W)``:
    ``img_shape = batch_input_shape = pad_shape`` = the rotated canvas."""
    view_canvas = tuple(rotated_canvas_size(canvas, angle))
    view = DetDataSample(metainfo=dict(sample.metainfo))
    view.set_metainfo({"img_shape": view_canvas, "batch_input_shape": view_canvas, "pad_shape": view_canvas})
    return view


def views_to_original(results: List[InstanceData], angle: float, canvas, data_samples: List[DetDataSample]) \
        -> List[DetDataSample]:
    """One view's detections of each image (``results``, boxes on the view's rotated canvas) as
    :class:`DetDataSample` s of the original canvas ``canvas`` (boxes mapped back, ``metainfo['tta_angle']``, the
    image's ground truth carried along)."""
    out = []
    for sample, res in zip(data_samples, results):
        res = res.clone()
        res.bboxes = unrotate_rboxes(get_box_tensor(res.bboxes), angle, canvas)
        view = DetDataSample(metainfo=dict(sample.metainfo, tta_angle=angle))
        for key in ("gt_instances", "ignored_instances"):   # ground truth of the original image, if any
            if key in sample:
                view.set_field(sample.get(key), key)
        view.pred_instances = res
        out.append(view)
    return out


def merge_views(views: List[DetDataSample], iou_thr: float, score_thr: float, max_per_img: int) -> DetDataSample:
    """Merge one image's views (from :func:`views_to_original`): class-wise rotated NMS (mmcv's
    ``batched_nms(nms_rotated)`` kept set and order, exact IoU only for pairs that can reach ``iou_thr``) after
    ``score_thr``, ``max_per_img`` kept, boxes rescaled to the original image (``scale_factor``)."""
    sample = views[0]
    preds = [v.pred_instances for v in views]
    boxes = torch.cat([get_box_tensor(p.bboxes) for p in preds])
    scores = torch.cat([p.scores for p in preds])
    labels = torch.cat([p.labels for p in preds])
    keep = scores >= score_thr
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if boxes.numel():
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
    metainfo.pop("tta_angle", None)
    out = DetDataSample(metainfo=metainfo)
    for key in ("gt_instances", "ignored_instances"):
        if key in sample:
            out.set_field(sample.get(key), key)
    out.pred_instances = result
    return out
