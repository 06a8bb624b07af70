"""An mmdet RoI bbox head whose test-time rotated NMS is :mod:`rotplugin.models.rotated_nms`'s exact pruned one.

``PrunedNMSShared2FCBBoxHead`` is ``mmdet.Shared2FCBBoxHead`` (Oriented R-CNN's and ReDet's RoI bbox head) with one
change: its final class-wise NMS, when the test config asks for ``nms=dict(type='nms_rotated', ...)``, runs
:func:`rotplugin.models.rotated_nms.multiclass_nms` instead of mmdet's ``multiclass_nms``. That keeps exactly the
same boxes, scores, labels and order (same ``score_thr``, ``max_per_img``, ``iou_threshold``, ``split_thr``) but
computes the rotated IoU only for the pairs that can reach the threshold (the pruned pairs): on CPU, with thousands
of candidate boxes, mmcv's O(n²) polygon clipping is most of the head's time. It is exact NMS, not an approximation
such as mmdet's ``fast_nms`` (YOLACT's, which suppresses with already suppressed boxes too). Any other NMS
configuration, and CUDA tensors, go to mmcv unchanged. Training is untouched.

Select it in a config by type name (after ``custom_imports=dict(imports=['rotplugin.mm'])``);
configs/oriented_rcnn does (2000 RoIs x 15 classes on a 1025² canvas: the NMS 8.8 s -> 3.2 s on 2 CPU cores).
The dense heads (RetinaNet, FCOS) keep mmcv's NMS: on the TTA benchmark's input (10000 large boxes of a
random-weight RetinaNet) the pruning search costs more than it saves (0.49 s against mmcv's 0.40 s), as it does
wherever boxes are large and mostly suppressed.
"""
from __future__ import annotations

from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmengine.structures import InstanceData

from rotplugin.models.rotated_nms import multiclass_nms
from rotplugin.registry import MODELS

__all__ = ["PrunedNMSShared2FCBBoxHead"]


@MODELS.register_module()
class PrunedNMSShared2FCBBoxHead(Shared2FCBBoxHead):
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
