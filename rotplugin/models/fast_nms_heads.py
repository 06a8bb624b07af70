"""mmdet/mmrotate detection heads whose test-time rotated NMS is :mod:`rotplugin.models.rotated_nms`'s.

Each class is the named head with one change: its final class-wise NMS, when the test config asks for
``nms=dict(type='nms_rotated', ...)``, runs :func:`rotplugin.models.rotated_nms.batched_nms` /
:func:`~rotplugin.models.rotated_nms.multiclass_nms` instead of mmcv's ``batched_nms`` / mmdet's
``multiclass_nms``. Those keep exactly the same boxes, scores, labels and order (same ``score_thr``, ``max_per_img``,
``iou_threshold``, ``split_thr``) but compute the rotated IoU only for the pairs that can reach the threshold:
on CPU, with thousands of candidate boxes, mmcv's O(n²) polygon clipping is most of the heads' time. Any other NMS
configuration, and CUDA tensors, go to mmcv unchanged. Training is untouched.

Select them in a config by type name (after ``custom_imports=dict(imports=['rotplugin'])``):

* ``FastNMSShared2FCBBoxHead``: ``mmdet.Shared2FCBBoxHead`` (Oriented R-CNN's and ReDet's RoI bbox head);
* ``FastNMSRetinaHead``: ``mmdet.RetinaHead`` (Rotated RetinaNet's head in mmrotate 1.x);
* ``FastNMSRotatedFCOSHead``: ``RotatedFCOSHead``.

configs/oriented_rcnn selects ``FastNMSShared2FCBBoxHead`` (2000 RoIs x 15 classes on a 1025² canvas: the NMS
8.8 s -> 3.2 s on 2 CPU cores). The RetinaNet and FCOS configs keep the stock heads: on the TTA benchmark's input
(10000 large boxes of a random-weight RetinaNet) the pruning search costs more than it saves (0.49 s against
mmcv's 0.40 s), as it does wherever boxes are large and mostly suppressed.
"""
from __future__ import annotations

from typing import Optional

from mmdet.models.dense_heads import RetinaHead
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.structures.bbox import get_box_tensor
from mmengine.structures import InstanceData
from mmrotate.models.dense_heads import RotatedFCOSHead

from rotplugin.models.rotated_nms import batched_nms, multiclass_nms
from rotplugin.registry import MODELS

__all__ = ["FastNMSShared2FCBBoxHead", "FastNMSRetinaHead", "FastNMSRotatedFCOSHead"]


class _FastNMSDenseHeadMixin:
    """Dense heads (``BaseDenseHead._bbox_post_process``): the parent rescales, applies score factors and
    ``min_bbox_size`` without NMS; then the same NMS step as mmdet's: ``batched_nms(boxes, scores, labels,
    cfg.nms)``, the kept results with the NMS scores, the first ``cfg.max_per_img``."""

    def _bbox_post_process(self, results: InstanceData, cfg, rescale: bool = False, with_nms: bool = True,
                           img_meta: Optional[dict] = None) -> InstanceData:
        results = super()._bbox_post_process(results, cfg, rescale=rescale, with_nms=False, img_meta=img_meta)
        if with_nms and results.bboxes.numel() > 0:
            dets, keep = batched_nms(get_box_tensor(results.bboxes), results.scores, results.labels, cfg.nms)
            results = results[keep]
            results.scores = dets[:, -1]
            results = results[:cfg.max_per_img]
        return results


@MODELS.register_module()
class FastNMSRetinaHead(_FastNMSDenseHeadMixin, RetinaHead):
    """``mmdet.RetinaHead`` with the pruned exact rotated NMS at test time (see the module docstring)."""


@MODELS.register_module()
class FastNMSRotatedFCOSHead(_FastNMSDenseHeadMixin, RotatedFCOSHead):
    """``RotatedFCOSHead`` with the pruned exact rotated NMS at test time (see the module docstring)."""


@MODELS.register_module()
class FastNMSShared2FCBBoxHead(Shared2FCBBoxHead):
    """``mmdet.Shared2FCBBoxHead`` with the pruned exact rotated NMS at test time (see the module docstring).

    The parent decodes one image's boxes without NMS (its ``rcnn_test_cfg=None`` path: ``bboxes`` (n, C·box_dim)
    or (n, box_dim) when class-agnostic, softmax ``scores`` (n, C + 1)); then mmdet's multiclass NMS step with the
    test config's ``score_thr``, ``nms`` and ``max_per_img``."""

    def _predict_by_feat_single(self, roi, cls_score, bbox_pred, img_meta: dict, rescale: bool = False,
                                rcnn_test_cfg=None) -> InstanceData:
        if rcnn_test_cfg is None or roi.shape[0] == 0:  # raw (aug-test) results, or the parent's empty result
            return super()._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale=rescale,
                                                   rcnn_test_cfg=rcnn_test_cfg)
        raw = super()._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale=rescale,
                                              rcnn_test_cfg=None)
        num_box_sets = 1 if self.reg_class_agnostic or bbox_pred is None else self.num_classes
        dets, labels = multiclass_nms(raw.bboxes, raw.scores, rcnn_test_cfg.score_thr, rcnn_test_cfg.nms,
                                      rcnn_test_cfg.max_per_img, box_dim=raw.bboxes.size(1) // num_box_sets)
        results = InstanceData()
        results.bboxes, results.scores, results.labels = dets[:, :-1], dets[:, -1], labels
        return results
