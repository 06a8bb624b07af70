"""Rotation augmentation in training by rotating the features: K rotated views from one backbone pass.

For an equivariant backbone and neck on an equivariant canvas, the feature pyramid of the image rotated by ``angle``
about the canvas centre *is* the passive rotation of the image's pyramid (:func:`rotplugin.fields.rotate_pyramid`;
exact at multiples of 90°, approximate between orientation steps with a ``fibre_interp``). So one backbone pass serves
K rotated training views: :class:`FeatureRotationViews` runs ``extract_feat`` once, then for each view the detector's
own loss (its dense head, or RPN + RoI head, as the detector computes it) on the rotated pyramid with the data samples
rotated alike, and averages the K losses. With image rotation the same views cost K full passes.

A view's data sample (:func:`rotate_sample`): the metainfo of :func:`rotplugin.models.tta_views.view_sample`
(``img_shape = batch_input_shape = pad_shape`` = the rotated canvas, as in feature TTA), the ground-truth and ignored
boxes rotated about the canvas centre by :func:`rotplugin.boxes.rotate_rboxes` (mmrotate ``rbox``, le90, the w/h
kept and the angle wrapped), the other instance fields (labels, ...) carried along; between quarter turns, boxes whose
centre leaves the canvas are dropped.

:class:`rotplugin.engine.FeatureRotationViewsHook` switches it on in a training config; the detector and its
checkpoints stay the plain ones (nothing is wrapped), testing is unchanged.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import BaseBoxes, get_box_tensor

from rotplugin.boxes import rotate_rboxes
from rotplugin.canvas import _quarter_turns, check_equivariant_canvas
from rotplugin.equivariance import feature_pyramid
from rotplugin.fields import fibre_operator, rotate_pyramid
from rotplugin.models.tta_views import parse_angles, view_sample

__all__ = ["FeatureRotationViews", "rotate_sample", "mean_losses"]


def rotate_sample(sample: DetDataSample, angle: float, canvas) -> DetDataSample:
    """The training data sample of the view rotated by ``angle`` degrees on the canvas ``canvas = (H, W)``
    (module docstring)."""
    view = view_sample(sample, angle, canvas)
    view_canvas = view.metainfo["batch_input_shape"]
    for key in ("gt_instances", "ignored_instances"):
        if key not in sample:
            continue
        inst = sample.get(key)
        boxes = inst.bboxes
        tensor = get_box_tensor(boxes)
        if tensor.ndim != 2 or tensor.shape[-1] != 5:
            raise ValueError(f"feature-rotation views rotate rotated boxes (cx, cy, w, h, t; mmrotate 'rbox'); the "
                             f"{key} of {sample.metainfo.get('img_id', 'a sample')} has boxes of shape "
                             f"{tuple(tensor.shape)}: convert them with ConvertBoxType(box_type_mapping="
                             f"dict(gt_bboxes='rbox')) in the training pipeline")
        rotated = rotate_rboxes(tensor, angle, canvas)
        if _quarter_turns(angle) is None:   # corners of the canvas rotate out of it
            h, w = view_canvas
            cx, cy = rotated[:, 0], rotated[:, 1]
            keep = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
            inst, rotated = inst[keep], rotated[keep]
        else:
            inst = inst.clone()
        inst.bboxes = type(boxes)(rotated) if isinstance(boxes, BaseBoxes) else rotated
        view.set_field(inst, key)
    return view


def mean_losses(per_view: List[Dict]) -> Dict:
    """The mean over the views of loss dicts whose values are tensors or lists of tensors (per level)."""
    k = len(per_view)
    out = {}
    for key in per_view[0]:
        values = [losses[key] for losses in per_view]
        if isinstance(values[0], (list, tuple)):
            out[key] = [sum(parts) / k for parts in zip(*values)]
        else:
            out[key] = sum(values) / k
    return out


class FeatureRotationViews:
    """The K-view loss of a detector ``det`` with an equivariant pyramid (module docstring).

    Args:
        det: the detector (its neck, or backbone without a neck, must declare ``out_field_types`` and
            ``out_strides``: an equivariant one).
        angles: the views to draw from (degrees, :mod:`rotplugin.canvas`'s sign); multiples of ``360/N`` are exact,
            others need ``fibre_interp``.
        views: K, views per training step, drawn without replacement from ``angles`` every step (default: all, in
            the order given).
        fibre_interp: :func:`rotplugin.fields.fibre_operator`'s rule for angles between orientation steps.
        seed: seed of the generator that draws the views (its own: the global random state stays as it was).
    """

    def __init__(self, det, angles: Sequence[float] = (0, 90, 180, 270), views: Optional[int] = None,
                 fibre_interp: Optional[str] = None, seed: int = 0):
        try:
            self.pyramid = feature_pyramid(det, "feature-rotation views in training")
        except ValueError as err:
            raise ValueError(f"FeatureRotationViews: {err}") from None
        self.angles = parse_angles(angles)
        if len(set(a % 360 for a in self.angles)) != len(self.angles):
            raise ValueError(f"FeatureRotationViews: angles {self.angles} repeat a view")
        for ft in self.pyramid.field_types:
            for a in self.angles:
                try:
                    fibre_operator(ft, a, fibre_interp)
                except ValueError as err:
                    raise ValueError(f"FeatureRotationViews: angle {a}° is not an orientation step of the pyramid's "
                                     f"fields and needs fibre_interp ('linear' or 'fourier'): {err}") from None
        if views is None:
            views = len(self.angles)
        if isinstance(views, bool) or not isinstance(views, int) or not 1 <= views <= len(self.angles):
            raise ValueError(f"FeatureRotationViews: views must be an int from 1 to the number of angles "
                             f"({len(self.angles)}: {self.angles}), got {views!r}")
        self.views, self.fibre_interp = views, fibre_interp
        self.generator = torch.Generator().manual_seed(int(seed))

    def draw(self) -> List[float]:
        """This step's views: all angles, or ``views`` of them without replacement (in the order of ``angles``)."""
        if self.views == len(self.angles):
            return list(self.angles)
        idx = torch.randperm(len(self.angles), generator=self.generator)[: self.views].sort().values
        return [self.angles[int(i)] for i in idx]

    def loss(self, det, inputs: torch.Tensor, data_samples: List[DetDataSample],
             angles: Optional[Sequence[float]] = None) -> Dict:
        """The mean of ``det``'s losses over the views ``angles`` (default: :meth:`draw`) of one backbone pass."""
        angles = self.draw() if angles is None else parse_angles(angles)
        canvas = tuple(int(n) for n in inputs.shape[-2:])
        check_equivariant_canvas(canvas, self.pyramid.max_stride, "the training batch (feature-rotation views)")
        feats = type(det).extract_feat(det, inputs)
        per_view = []
        for angle in angles:
            view_feats = tuple(rotate_pyramid(feats, self.pyramid.field_types, self.pyramid.strides, angle,
                                              canvas_size=canvas, fibre_interp=self.fibre_interp, contiguous=True))
            samples = [rotate_sample(s, angle, canvas) for s in data_samples]
            per_view.append(_loss_on(det, view_feats, inputs, samples))
        return mean_losses(per_view)


def _loss_on(det, feats, inputs, samples) -> Dict:
    """``det``'s own loss with its ``extract_feat`` giving ``feats`` (the class's ``loss``, whatever is patched)."""
    det.extract_feat = lambda _inputs: feats       # an instance attribute shadows the method for this call
    try:
        return type(det).loss(det, inputs, samples)
    finally:
        del det.extract_feat
