"""The drop-in rotated NMS (rotplugin.models.rotated_nms.batched_nms / multiclass_nms) and the
PrunedNMSShared2FCBBoxHead give exactly what mmcv's batched_nms, mmdet's multiclass_nms and mmdet's head give."""
import pytest
import torch

from conftest import ROOT, clustered, random_boxes

from rotplugin.models.rotated_nms import batched_nms, multiclass_nms


def assert_same_nms(boxes, scores, idxs, cfg, class_agnostic=False):
    from mmcv.ops import batched_nms as mmcv_batched_nms

    copy = (lambda c: None if c is None else dict(c))  # mmcv's batched_nms pops keys of a copy; so must we
    ref_dets, ref_keep = mmcv_batched_nms(boxes, scores, idxs, copy(cfg), class_agnostic)
    dets, keep = batched_nms(boxes, scores, idxs, copy(cfg), class_agnostic)
    assert torch.equal(keep, ref_keep), (cfg, keep.tolist()[:20], ref_keep.tolist()[:20])
    assert torch.equal(dets, ref_dets)
    return keep


def tied(scores, levels=4):
    return (scores * levels).round() / levels  # a handful of distinct values: many ties within and across classes


# below split_thr: one kernel call over all class-offset boxes (its processing order); above: one call per class
CFGS = [dict(type="nms_rotated", iou_threshold=0.1), dict(type="nms_rotated", iou_threshold=0.5),
        dict(type="nms_rotated", iou_threshold=0.1, split_thr=0),
        dict(type="nms_rotated", iou_threshold=0.3, split_thr=0, max_num=50),
        dict(type="nms_rotated", iou_threshold=0.1, class_agnostic=True)]


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "type"))
def test_batched_nms_matches_mmcv(cfg):
    g = torch.Generator().manual_seed(0)
    boxes, scores, labels = clustered(g, 120, 6, ncls=15)
    keep = assert_same_nms(boxes, scores, labels, cfg)
    assert 0 < keep.numel() < boxes.shape[0] // 2  # the views were actually merged
    assert_same_nms(boxes, tied(scores), labels, cfg)  # ties
    assert_same_nms(boxes, torch.full_like(scores, 0.5), labels, cfg)
    # many classes, large coordinates (large offsets)
    boxes, scores, labels = random_boxes(g, 600, 1000.0, ncls=60)
    assert_same_nms(boxes, tied(scores, 8), labels, cfg)
    # degenerate boxes: the kernel's verdict for them is arbitrary, also across classes in one call
    boxes, scores, labels = random_boxes(g, 300, 60.0, ncls=5)
    boxes[::5, 2] = 1e-8
    boxes[1::5, 2:4] = 0.05
    boxes[2::5, 2], boxes[2::5, 3] = 1e-3, 80.0
    assert_same_nms(boxes, scores, labels, cfg)
    # one box; two identical boxes of different classes
    assert_same_nms(boxes[:1], scores[:1], labels[:1], cfg)
    assert_same_nms(boxes[:1].repeat(2, 1), scores[:1].repeat(2), torch.tensor([0, 1]), cfg)


def test_batched_nms_class_agnostic_argument_and_fallbacks():
    g = torch.Generator().manual_seed(1)
    boxes, scores, labels = clustered(g, 60, 4, ncls=3)
    keep = assert_same_nms(boxes, scores, labels, dict(type="nms_rotated", iou_threshold=0.1), class_agnostic=True)
    assert keep.numel() < assert_same_nms(boxes, scores, labels, dict(type="nms_rotated", iou_threshold=0.1)).numel()
    # another NMS, no NMS, float64: mmcv's own batched_nms
    hboxes = torch.cat([boxes[:, :2] - boxes[:, 2:4] / 2, boxes[:, :2] + boxes[:, 2:4] / 2], 1)
    assert_same_nms(hboxes, scores, labels, dict(type="nms", iou_threshold=0.5))
    assert_same_nms(boxes, scores, labels, None)
    assert_same_nms(boxes.double(), scores.double(), labels, dict(type="nms_rotated", iou_threshold=0.1))


def test_batched_nms_empty():
    dets, keep = batched_nms(torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                             dict(type="nms_rotated", iou_threshold=0.1))
    assert dets.shape == (0, 6) and keep.shape == (0,) and keep.dtype == torch.long


def class_boxes(g, n, ncls, shared=False):
    """RoI-head-like input: per RoI one box per class (or one shared box) jittered around an object, softmax
    scores over ncls + 1 (background last)."""
    base, _, _ = random_boxes(g, n // 4, 400.0, (4.0, 60.0))
    base = base.repeat(4, 1)
    sets = 1 if shared else ncls
    jitter = torch.randn(base.shape[0], sets, 5, generator=g) * torch.tensor([1.5, 1.5, 2.0, 2.0, 0.05])
    boxes = (base[:, None] + jitter).reshape(base.shape[0], sets * 5)
    scores = torch.softmax(torch.randn(base.shape[0], ncls + 1, generator=g), 1)
    return boxes, scores


@pytest.mark.parametrize("n, ncls, shared", [(400, 15, False), (1000, 15, False), (150, 40, True), (5, 3, False)])
@pytest.mark.parametrize("score_thr, max_num", [(0.02, 2000), (0.05, 100), (0.0, -1)])
def test_multiclass_nms_matches_mmdet(n, ncls, shared, score_thr, max_num):
    from mmdet.models.layers import multiclass_nms as mmdet_multiclass_nms

    g = torch.Generator().manual_seed(n + ncls)
    boxes, scores = class_boxes(g, n, ncls, shared)
    scores = tied(scores, 64)
    nms = dict(type="nms_rotated", iou_threshold=0.1)
    factors = torch.rand(scores.shape[0], generator=g)
    for kw in (dict(), dict(return_inds=True), dict(score_factors=factors, return_inds=True)):
        ref = mmdet_multiclass_nms(boxes, scores, score_thr, nms, max_num, box_dim=5, **kw)
        got = multiclass_nms(boxes, scores, score_thr, nms, max_num, box_dim=5, **kw)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert torch.equal(a, b)
    if (n, score_thr) == (1000, 0.0):  # 15000 candidates above split_thr: mmcv's per-class path was compared
        assert int((scores[:, :-1] > score_thr).sum()) >= 10000


def test_multiclass_nms_nothing_above_threshold():
    from mmdet.models.layers import multiclass_nms as mmdet_multiclass_nms

    boxes, scores = class_boxes(torch.Generator().manual_seed(5), 40, 4)
    nms = dict(type="nms_rotated", iou_threshold=0.1)
    got = multiclass_nms(boxes, scores, 1.0, nms, 100, box_dim=5, return_inds=True)
    ref = mmdet_multiclass_nms(boxes, scores, 1.0, nms, 100, box_dim=5, return_inds=True)
    assert [t.shape for t in got] == [t.shape for t in ref] == [(0, 6), (0,), (0,)]


def load(config):
    from rotplugin.presets import load_config

    return load_config(str(ROOT / config))


def twin_heads(head_cfg, reference_type):
    """The pruned-NMS head of the config and the mmdet head it replaces, with the same weights."""
    from mmrotate.registry import MODELS

    pruned = MODELS.build(head_cfg.copy())
    ref = MODELS.build(dict(head_cfg.copy(), type=reference_type))
    ref.load_state_dict(pruned.state_dict())
    assert type(pruned) is not type(ref) and isinstance(pruned, type(ref))
    return pruned.eval(), ref.eval()


def assert_same_instances(a, b):
    assert len(a) == len(b) > 0
    for key in ("bboxes", "scores", "labels"):
        x, y = a.get(key), b.get(key)
        x, y = getattr(x, "tensor", x), getattr(y, "tensor", y)
        assert torch.equal(x, y), key


@pytest.mark.parametrize("num_rois", [600, 800, 0])
def test_oriented_rcnn_bbox_head_same_as_mmdet(num_rois):
    from rotplugin.models import PrunedNMSShared2FCBBoxHead

    cfg = load("configs/oriented_rcnn/oriented-rcnn-le90_er50-c8_efpn_1x_dota.py")
    assert cfg.model.roi_head.bbox_head.type == "PrunedNMSShared2FCBBoxHead"
    pruned, ref = twin_heads(cfg.model.roi_head.bbox_head, "mmdet.Shared2FCBBoxHead")
    assert isinstance(pruned, PrunedNMSShared2FCBBoxHead)
    g = torch.Generator().manual_seed(num_rois)
    boxes, _, _ = random_boxes(g, num_rois, 400.0, (8.0, 80.0))
    rois = torch.cat([torch.zeros(num_rois, 1), boxes], 1)
    cls_score = torch.randn(num_rois, pruned.num_classes + 1, generator=g) * 0.5
    box_sets = 1 if pruned.reg_class_agnostic else pruned.num_classes
    bbox_pred = torch.randn(num_rois, box_sets * 5, generator=g) * 0.1
    metas = [dict(img_shape=(513, 513), scale_factor=(1.0, 1.0))]
    test_cfg = cfg.model.test_cfg.rcnn.copy()
    test_cfg.score_thr = 0.02
    with torch.no_grad():
        args = ((rois,), (cls_score,), (bbox_pred,), metas)
        got = pruned.predict_by_feat(*args, rcnn_test_cfg=test_cfg)[0]
        want = ref.predict_by_feat(*args, rcnn_test_cfg=test_cfg)[0]
        if num_rois == 0:
            assert len(got) == len(want) == 0 and type(got.bboxes) is type(want.bboxes)
            return
        assert_same_instances(got, want)
        assert len(got) < num_rois * pruned.num_classes  # NMS suppressed boxes
        raw, raw_ref = (h.predict_by_feat(*args, rcnn_test_cfg=None)[0] for h in (pruned, ref))  # aug-test path
        assert torch.equal(raw.bboxes, raw_ref.bboxes) and torch.equal(raw.scores, raw_ref.scores)

