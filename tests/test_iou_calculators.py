"""CircumscribedHBoxOverlaps2D against mmrotate's FakeRBboxOverlaps2D (same numbers, other kernel)."""
import pytest
import torch

from conftest import random_boxes


@pytest.mark.parametrize("mode", ["iou", "iof"])
def test_equals_mmrotate_fake_rbbox_overlaps(mode):
    from mmrotate.models.task_modules.assigners.rotate_iou2d_calculator import FakeRBboxOverlaps2D
    from rotplugin.models.iou_calculators import CircumscribedHBoxOverlaps2D

    gen = torch.Generator().manual_seed(0)
    a, b = random_boxes(gen, 300, 200.0, (0.5, 60.5))[0], random_boxes(gen, 40, 200.0, (0.5, 60.5))[0]
    b[0, 2] = 0.0  # degenerate width: both clamp it
    expected = FakeRBboxOverlaps2D()(a, b, mode)
    got = CircumscribedHBoxOverlaps2D()(a, b, mode)
    assert got.shape == (300, 40)
    assert (expected > 0.1).sum() > 50  # overlapping pairs are compared, not only zeros
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # with a score column, and aligned
    torch.testing.assert_close(CircumscribedHBoxOverlaps2D()(torch.cat([a[:40], torch.ones(40, 1)], 1), b, mode,
                                                             is_aligned=True),
                               FakeRBboxOverlaps2D()(a[:40], b, mode, is_aligned=True).reshape(-1), atol=1e-5, rtol=0)


def test_empty_and_bad_input():
    from rotplugin.models.iou_calculators import CircumscribedHBoxOverlaps2D

    calc = CircumscribedHBoxOverlaps2D()
    boxes = torch.rand(7, 5)
    assert calc(boxes, boxes[:0]).shape == (7, 0)
    assert calc(boxes[:0], boxes).shape == (0, 7)
    with pytest.raises(ValueError, match="bboxes2 must be"):
        calc(boxes, torch.rand(3, 4))
    with pytest.raises(ValueError, match="mode"):
        calc(boxes, boxes, mode="giou")
