"""The TTA merge by rotated weighted box fusion, and the view options (angles x flips x scales, merge)."""
import math

import pytest
import torch

from rotplugin.boxes import align_rboxes, rbox_to_polygon, wrap_le90


def fuse(boxes, scores, labels, views, num_views, iou_thr=0.1):
    from rotplugin.models.rotated_fusion import fuse_rotated_boxes

    return fuse_rotated_boxes(boxes, scores, labels, views, num_views, iou_thr)


def random_boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 40 + 4
    t = torch.rand(n, 1, generator=g) * math.pi - math.pi / 2
    return torch.cat([ctr, wh, t], 1), torch.rand(n, generator=g) * 0.9 + 0.05, torch.randint(0, 3, (n,), generator=g)


def polygon_iou(a, b):
    from shapely.geometry import Polygon

    p, q = Polygon(rbox_to_polygon(a[None].double())[0].tolist()), Polygon(rbox_to_polygon(b[None].double())[0].tolist())
    return p.intersection(q).area / p.union(q).area


def same_box(a, b, tol=1e-4):
    """The same rectangle (polygon IoU ~ 1), whatever its le90 writing."""
    return polygon_iou(a, b) > 1 - tol


def test_identical_views_give_the_input_boxes_back():
    # 200 boxes in 300²: many of one class overlap each other above the IoU threshold; a view holds each once
    boxes, scores, labels = random_boxes(200)
    v = 4
    out_b, out_s, out_l = fuse(boxes.repeat(v, 1), scores.repeat(v), labels.repeat(v),
                               torch.arange(v).repeat_interleave(200), v)
    assert len(out_b) == 200
    order = torch.argsort(scores, descending=True, stable=True)
    assert torch.allclose(out_s, scores[order], atol=1e-6) and torch.equal(out_l, labels[order])
    assert torch.allclose(out_b, boxes[order], atol=1e-4)


def test_a_box_and_its_le90_twin_fuse_to_one():
    box = torch.tensor([[100.0, 80.0, 40.0, 12.0, 1.2]])
    twin = torch.tensor([[100.0, 80.0, 12.0, 40.0, float(wrap_le90(torch.tensor(1.2 + math.pi / 2)))]])
    assert -math.pi / 2 <= twin[0, 4] < 0 and same_box(box[0], twin[0])
    b, s, lab = fuse(torch.cat([box, twin]), torch.tensor([0.9, 0.5]), torch.tensor([1, 1]), torch.tensor([0, 1]), 2)
    assert len(b) == 1 and lab.tolist() == [1]
    assert torch.allclose(b[0], box[0], atol=1e-5)          # written as the higher-scored box
    assert s[0].item() == pytest.approx((0.9 + 0.5) / 2)


def test_angles_average_across_the_le90_period():
    # -89° and +89°: 2° apart as rectangles; a naive mean of the angles would say 0°
    a = torch.tensor([[50.0, 50.0, 60.0, 10.0, math.radians(-89)], [50.0, 50.0, 60.0, 10.0, math.radians(89)]])
    b, s, _ = fuse(a, torch.tensor([0.6, 0.6]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert len(b) == 1
    assert same_box(b[0], torch.tensor([50.0, 50.0, 60.0, 10.0, -math.pi / 2]))


def test_weighted_mean_by_score():
    a = torch.tensor([[10.0, 20.0, 30.0, 10.0, 0.10], [14.0, 22.0, 34.0, 12.0, 0.20]])
    b, s, _ = fuse(a, torch.tensor([0.75, 0.25]), torch.tensor([2, 2]), torch.tensor([0, 2]), 3)
    want = 0.75 * a[0] + 0.25 * a[1]
    assert torch.allclose(b[0], want, atol=1e-6)
    assert s.item() == pytest.approx(1.0 / 3)                # agreement: found by 2 of 3 views


def test_no_box_lost_or_duplicated_across_classes():
    # the same rectangles under two labels, four views with jitter: each class fuses on its own
    boxes, scores, _ = random_boxes(60, seed=3)
    g = torch.Generator().manual_seed(1)
    all_b, all_s, all_l, all_v = [], [], [], []
    for view in range(4):
        jit = boxes + torch.randn(boxes.shape, generator=g) * torch.tensor([1.0, 1.0, 0.5, 0.5, 0.02])
        for label in (0, 1):
            all_b.append(jit), all_s.append(scores * (0.5 + 0.5 * label)), all_l.append(torch.full((60,), label))
            all_v.append(torch.full((60,), view))
    b, s, lab, v = (torch.cat(x) for x in (all_b, all_s, all_l, all_v))
    out_b, out_s, out_l = fuse(b, s, lab, v, 4)
    for label in (0, 1):
        mine = out_l == label
        # every input box in exactly one fused box of its class: the scores add up (sum of members / views)
        assert (out_s[mine].sum() * 4).item() == pytest.approx(s[lab == label].sum().item(), rel=1e-5)
        assert 60 <= int(mine.sum()) <= 4 * 60
    # each class ends with the same boxes: the other label does not steal members
    b0, b1 = out_b[out_l == 0], out_b[out_l == 1]
    assert len(b0) == len(b1)
    assert torch.allclose(b0[torch.argsort(b0[:, 0])], b1[torch.argsort(b1[:, 0])], atol=1e-4)


def test_align_rboxes_keeps_the_rectangle():
    boxes, _, _ = random_boxes(50, seed=7)
    ref = torch.rand(50) * 6 - 3
    out = align_rboxes(boxes.double(), ref.double())
    assert (wrap_le90(out[:, 4] - ref.double()).abs() <= math.pi / 4 + 1e-9).all()
    assert ((out[:, 4] - ref.double()).abs() <= math.pi / 4 + 1e-9).all()
    for a, b in zip(boxes[:20], out[:20]):
        assert same_box(a, b.float())


def test_fusion_bad_input():
    boxes, scores, labels = random_boxes(5)
    views = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="num_views"):
        fuse(boxes, scores, labels, views + 2, 2)
    with pytest.raises(ValueError, match="iou_thr"):
        fuse(boxes, scores, labels, views, 1, iou_thr=0.0)
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        fuse(boxes[:, :4], scores, labels, views, 1)
    b, s, lab = fuse(boxes[:0], scores[:0], labels[:0], views[:0], 1)
    assert b.shape == (0, 5) and s.shape == (0,)


# --------------------------------------------------------------------------------------------------------------
# the view set
# --------------------------------------------------------------------------------------------------------------
def test_make_views_order_and_vertical_flip():
    from rotplugin.models.tta_views import View, make_views

    views = make_views([0, 90], ["none", "horizontal", "vertical"], [1.0, 0.5])
    assert views[:6] == [View(0.0, False, 1.0), View(90.0, False, 1.0), View(0.0, True, 1.0),
                         View(90.0, True, 1.0), View(180.0, True, 1.0), View(270.0, True, 1.0)]
    assert [v.scale for v in views[6:]] == [0.5] * 6
    assert make_views("0 90 180 270", "none horizontal") == make_views([0, 90, 180, 270], ["none", "horizontal"])


def test_vertical_flip_is_a_row_flip():
    """'vertical' (mirror, then 180°) reverses the rows of a centred map, as mmdet's vertical RandomFlip."""
    from rotplugin.fields import rotate_grid
    from rotplugin.models.tta_views import make_views

    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    (view,) = make_views([0], ["vertical"])
    assert torch.equal(rotate_grid(x, view.angle, flip=view.flip), x.flip(-2))
    (view,) = make_views([0], ["horizontal"])
    assert torch.equal(rotate_grid(x, view.angle, flip=view.flip), x.flip(-1))


@pytest.mark.parametrize("kw, match", [
    (dict(scales=[0.0]), "scales must be positive and finite"),
    (dict(scales=[-1.0]), "scales must be positive and finite"),
    (dict(scales=[float("nan")]), "scales must be positive and finite"),
    (dict(scales=[float("inf")]), "scales must be positive and finite"),
    (dict(scales="big"), "scales not understood"),
    (dict(scales=[]), "scales is empty"),
    (dict(flips=["diagonal"]), "unknown flips.*none, horizontal, vertical"),
    (dict(flips=[]), "flips is empty"),
    (dict(angles=[]), "angles is empty"),
])
def test_bad_view_options_are_refused_by_name(kw, match):
    from rotplugin.models.tta_views import make_views

    with pytest.raises(ValueError, match=match):
        make_views(kw.get("angles", [0, 90]), kw.get("flips", ["none"]), kw.get("scales", [1.0]))


def test_bad_merge_refused():
    from rotplugin.models.tta_views import merge_views, parse_merge

    assert parse_merge("fusion") == "fusion"
    with pytest.raises(ValueError, match="unknown merge 'wbf'.*nms, fusion"):
        merge_views([], 0.1, 0.05, 100, merge="wbf")
