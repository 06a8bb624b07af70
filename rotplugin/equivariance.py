"""Measure how equivariant a feature extractor is: ``rotate_fields(F(I))`` against ``F(rotate(I))``.

Torch + escnn only (no mm* imports): the model is any callable from an image batch to a sequence of tensors whose
fields and strides are given. Errors are *max relative errors* per level: ``max|a - b| / max|b|``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rotplugin.canvas import equivariant_canvas_shape
from rotplugin.fields import rotate_fields
from rotplugin.nn.field_layers import trivial_field_type

__all__ = ["max_relative_error", "l2_relative_error", "pad_image", "EquivarianceReport", "measure_equivariance",
           "FeaturePyramid", "feature_pyramid"]


@dataclass(frozen=True)
class FeaturePyramid:
    """What a model's feature extractor produces: ``extract(images) -> maps``, one field type and stride per map,
    and the largest stride (the canvas must be ``≡ 1`` modulo it). ``modules``: the modules whose parameters make
    the features (for ``.to(dtype)`` / ``.eval()``), when known."""
    extract: Callable[[torch.Tensor], Sequence[torch.Tensor]]
    field_types: List
    strides: List[int]
    max_stride: int
    modules: Tuple = ()

    @classmethod
    def of_modules(cls, backbone, neck=None) -> "FeaturePyramid":
        """The pyramid of ``neck(backbone(x))`` (or of ``backbone(x)`` without a neck): the fields, strides and
        largest stride the last module declares (``out_field_types``, ``out_strides``, ``max_stride``)."""
        last = neck if neck is not None else backbone
        extract = backbone if neck is None else (lambda x: neck(backbone(x)))
        return cls(extract, list(last.out_field_types), [int(s) for s in last.out_strides],
                   int(getattr(last, "max_stride", max(last.out_strides))),
                   tuple(m for m in (backbone, neck) if m is not None))


def feature_pyramid(model, purpose: str = "rotating its features") -> FeaturePyramid:
    """The :class:`FeaturePyramid` of a detector (``model.extract_feat``; the fields are those its neck declares,
    or its backbone's without a neck) or of a bare module that declares its own (``EquivariantResNet``,
    ``EquivariantFPN``, a function with these attributes): ``out_field_types``, ``out_strides`` and optionally
    ``max_stride`` (default: the largest stride). ``ValueError`` naming the module and ``purpose`` when the module
    that produces the features does not declare them (e.g. mmdet's plain FPN after an equivariant backbone). A
    :class:`FeaturePyramid` is returned as it is."""
    if isinstance(model, FeaturePyramid):
        return model
    neck = getattr(model, "neck", None) if getattr(model, "with_neck", True) else None
    backbone = getattr(model, "backbone", None)
    if hasattr(model, "extract_feat") and (neck is not None or backbone is not None):
        producer, extract = (neck if neck is not None else backbone), model.extract_feat
    else:
        producer, extract = model, model
    missing = [a for a in ("out_field_types", "out_strides") if not hasattr(producer, a)]
    if missing:
        raise ValueError(f"{purpose} needs an equivariant neck/backbone that declares out_field_types and "
                         f"out_strides (EquivariantFPN, FeatureRotationNeck, EquivariantResNet); "
                         f"{type(producer).__name__} has no {' / '.join(missing)}: what its features hold is "
                         f"unknown")
    strides = [int(s) for s in producer.out_strides]
    return FeaturePyramid(extract, list(producer.out_field_types), strides,
                          int(getattr(producer, "max_stride", max(strides))))


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|`` (0 when both are zero)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale > 0 else diff


def pad_image(image: torch.Tensor, max_stride: int, canvas: bool = True, value: float = 0.0) -> torch.Tensor:
    """Pad a ``(B, C, H, W)`` batch at the bottom/right to an equivariant canvas (``canvas=True``) or, like mmdet's
    ``pad_size_divisor``, to multiples of ``max_stride`` (``canvas=False``)."""
    h, w = image.shape[-2:]
    if canvas:
        th, tw = equivariant_canvas_shape((h, w), max_stride)
    else:
        th, tw = -(-h // max_stride) * max_stride, -(-w // max_stride) * max_stride
    return F.pad(image, (0, tw - w, 0, th - h), value=value)


def l2_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_2 / ||expected||_2`` (0 when both are zero)."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    scale = expected.double().norm().item()
    diff = (actual.double() - expected.double()).norm().item()
    return diff / scale if scale > 0 else diff


ERROR_METRICS = {"max": max_relative_error, "l2": l2_relative_error}


@dataclass
class EquivarianceReport:
    """``errors[(angle, flip)][level]``: max relative error of the passive rotation against the rotated input."""

    canvas_shape: Tuple[int, int]
    strides: List[int]
    metric: str = "max"
    errors: Dict[Tuple[float, bool], List[float]] = field(default_factory=dict)

    def worst(self) -> float:
        return max((e for errs in self.errors.values() for e in errs), default=0.0)

    def table(self, title: str = "") -> str:
        head = f"{'transform':>14} | " + " | ".join(f"stride {s:>3}" for s in self.strides)
        lines = [title] if title else []
        lines += [f"canvas {self.canvas_shape[0]}x{self.canvas_shape[1]}, {self.metric} relative error", head,
                  "-" * len(head)]
        for (angle, flip), errs in self.errors.items():
            name = f"{'flip+' if flip else ''}rot {angle:g}"
            lines.append(f"{name:>14} | " + " | ".join(f"{e:10.2e}" for e in errs))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"canvas_shape": list(self.canvas_shape), "strides": self.strides, "metric": self.metric,
                "errors": [{"angle": a, "flip": f, "per_level": errs} for (a, f), errs in self.errors.items()]}


@torch.no_grad()
def measure_equivariance(model: Callable[[torch.Tensor], Sequence[torch.Tensor]], image: torch.Tensor,
                         field_types: Sequence, strides: Sequence[int], angles: Sequence[float] = (90, 180, 270),
                         flips: Sequence[bool] = (False,), map_centred: bool = True,
                         fibre_interp: Optional[str] = None, metric: str = "max") -> EquivarianceReport:
    """Run ``model`` on ``image`` (already padded to its canvas) and on each transformed copy, and compare.

    ``map_centred=True`` rotates each feature map about its own centre pixel (what users do with ``rot90``; on an
    equivariant canvas this *is* the canvas centre); ``False`` rotates about the canvas centre expressed at each
    stride (interpolating where that centre is fractional). ``metric``: ``"max"`` (:func:`max_relative_error`) or
    ``"l2"`` (:func:`l2_relative_error`).
    """
    if metric not in ERROR_METRICS:
        raise ValueError(f"metric must be one of {sorted(ERROR_METRICS)}, got {metric!r}")
    if image.dim() != 4:
        raise ValueError(f"image must be a (B, C, H, W) batch, got shape {tuple(image.shape)}")
    canvas = tuple(image.shape[-2:])
    gspace = field_types[0].gspace
    in_type = trivial_field_type(gspace, image.shape[1])
    feats = model(image)
    if len(feats) != len(field_types) or len(feats) != len(strides):
        raise ValueError(f"model returned {len(feats)} levels but {len(field_types)} field types and "
                         f"{len(strides)} strides were given")
    report = EquivarianceReport(canvas_shape=canvas, strides=list(strides), metric=metric)
    for flip in flips:
        for angle in angles:
            rotated_image = rotate_fields(image, in_type, angle, flip=flip, fibre_interp=fibre_interp)
            expected = model(rotated_image)
            errs = []
            for f, e, ft, s in zip(feats, expected, field_types, strides):
                kw = {} if map_centred else {"stride": s, "canvas_size": canvas}
                actual = rotate_fields(f, ft, angle, flip=flip, fibre_interp=fibre_interp,
                                       out_size=tuple(e.shape[-2:]), **kw)
                errs.append(ERROR_METRICS[metric](actual, e))
            report.errors[(float(angle), bool(flip))] = errs
    return report
