"""The TTA merge's sparse class-wise rotated NMS keeps exactly what mmcv's batched_nms + nms_rotated keeps."""

import pytest
import torch

from conftest import clustered, random_boxes
from rotplugin.models import rotated_nms
from rotplugin.models.rotated_nms import batched_rotated_nms


def mmcv_batched_rotated_nms(boxes, scores, labels, iou_thr):
    """The reference: mmcv's class-wise rotated NMS; returns the kept indices (score order)."""
    from mmcv.ops import batched_nms
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    _, keep = batched_nms(boxes, scores, labels, dict(type="nms_rotated", iou_threshold=iou_thr, split_thr=0))
    return keep


def assert_same(boxes, scores, labels, thr):
    ref = mmcv_batched_rotated_nms(boxes, scores, labels, thr)
    got = batched_rotated_nms(boxes, scores, labels, thr)
    assert got.dtype == ref.dtype
    assert torch.equal(got, ref), (thr, got.tolist()[:20], ref.tolist()[:20])
    return ref


THRS = [0.1, 0.5]


@pytest.mark.parametrize("thr", THRS)
@pytest.mark.parametrize("seed", range(4))
def test_random_and_dense(thr, seed):
    g = torch.Generator().manual_seed(seed)
    for n, spread in ((1, 10.0), (2, 5.0), (30, 50.0), (300, 100.0), (400, 400.0)):
        assert_same(*random_boxes(g, n, spread), thr)


@pytest.mark.parametrize("thr", THRS)
def test_clusters_of_views(thr):
    g = torch.Generator().manual_seed(1)
    keep = assert_same(*clustered(g, 150, 8), thr)
    assert 0 < keep.numel() < 1200  # the views were actually merged


@pytest.mark.parametrize("thr", THRS)
def test_duplicates_and_equal_scores(thr):
    g = torch.Generator().manual_seed(2)
    boxes, scores, labels = random_boxes(g, 60, 80.0, ncls=2)
    # exact duplicates, several copies, equal scores in and across clusters
    boxes = torch.cat([boxes, boxes, boxes[:20]])
    labels = torch.cat([labels, labels, labels[:20]])
    scores = torch.cat([scores, scores, scores[:20]])
    scores = (scores * 4).round() / 4  # only five distinct values: many ties
    assert_same(boxes, scores, labels, thr)
    # all the same score
    assert_same(boxes, torch.full_like(scores, 0.5), labels, thr)


@pytest.mark.parametrize("thr", THRS)
def test_degenerate_boxes(thr):
    g = torch.Generator().manual_seed(3)
    boxes, scores, labels = random_boxes(g, 200, 60.0)
    boxes[::4, 2] = 1e-8  # zero-area (the kernel gives them IoU 0)
    boxes[1::4, 2:4] = 0.05  # tiny
    boxes[2::4, 2] = 1e-3  # needles
    boxes[2::4, 3] = 80.0
    boxes = torch.cat([boxes, boxes[:50]])
    scores = torch.cat([scores, scores[:50]])
    labels = torch.cat([labels, labels[:50]])
    assert_same(boxes, scores, labels, thr)


def test_large_offsets_many_classes():
    """16 classes on a 1024 canvas: the class offsets put centres at ~20k, where float32 rounds."""
    g = torch.Generator().manual_seed(4)
    boxes, scores, labels = clustered(g, 300, 4, ncls=16, spread=1024.0)
    for thr in THRS:
        assert_same(boxes, scores, labels, thr)


def test_empty_and_single():
    e = torch.zeros(0, 5)
    out = batched_rotated_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.1)
    assert out.shape == (0,) and out.dtype == torch.long
    one = torch.tensor([[10.0, 10.0, 5.0, 3.0, 0.3]])
    assert batched_rotated_nms(one, torch.tensor([0.9]), torch.tensor([2]), 0.1).tolist() == [0]


def test_sequential_finish(monkeypatch):
    """Long suppression chains go past the vectorised rounds: the sequential finish gives the same."""
    monkeypatch.setattr(rotated_nms, "_MAX_ROUNDS", 1)
    g = torch.Generator().manual_seed(5)
    # a chain: each box overlaps the next by about half
    n = 40
    boxes = torch.stack([torch.arange(n) * 6.0, torch.zeros(n), torch.full((n,), 10.0), torch.full((n,), 4.0),
                         torch.zeros(n)], 1)
    scores = torch.linspace(1, 0.1, n)
    assert_same(boxes, scores, torch.zeros(n, dtype=torch.long), 0.2)
    assert_same(*clustered(g, 100, 8), 0.1)


def test_small_chunks(monkeypatch):
    """The pair search in many chunks finds the same pairs."""
    monkeypatch.setattr(rotated_nms, "_CHUNK_PAIRS", 37)
    g = torch.Generator().manual_seed(6)
    assert_same(*clustered(g, 80, 6), 0.1)


def test_fallbacks_match():
    g = torch.Generator().manual_seed(7)
    boxes, scores, labels = random_boxes(g, 100, 60.0)
    assert torch.equal(batched_rotated_nms(boxes, scores, labels, 0.0),
                       mmcv_batched_rotated_nms(boxes, scores, labels, 0.0))
    assert torch.equal(batched_rotated_nms(boxes.double(), scores.double(), labels, 0.3),
                       mmcv_batched_rotated_nms(boxes.double(), scores.double(), labels, 0.3))


def test_tta_merge_uses_it():
    """merge_preds of the TTA models: score_thr filter, the NMS above, max_per_img cut, rescale."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from rotplugin.models.tta import _RotationTTAModel

    g = torch.Generator().manual_seed(8)
    boxes, scores, labels = clustered(g, 120, 4, ncls=5)
    views = []
    for k in range(4):
        sl = slice(k * 120, (k + 1) * 120)
        view = DetDataSample(metainfo=dict(scale_factor=(2.0, 2.0), tta_angle=90.0 * k))
        view.pred_instances = InstanceData(bboxes=boxes[sl], scores=scores[sl], labels=labels[sl])
        views.append(view)
    model = _RotationTTAModel.__new__(_RotationTTAModel)
    model.iou_thr, model.score_thr, model.max_per_img = 0.1, 0.3, 50
    model.merge, model.fusion_iou_thr = "nms", None
    (out,) = _RotationTTAModel.merge_preds(model, [views])
    assert "tta_angle" not in out.metainfo and out.metainfo["scale_factor"] == (2.0, 2.0)
    keep = scores >= 0.3
    ref = mmcv_batched_rotated_nms(boxes[keep], scores[keep], labels[keep], 0.1)[:50]
    pred = out.pred_instances
    assert torch.equal(pred.scores, scores[keep][ref])
    assert torch.equal(pred.labels, labels[keep][ref])
    expect = boxes[keep][ref].clone()
    expect[:, :4] /= 2
    assert torch.allclose(pred.bboxes.tensor, expect)
