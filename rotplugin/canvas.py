"""All coordinate and angle geometry: canvas, feature grids, angles, the point map of a rotation (torch and numpy
only; no escnn, no mm* imports).

Conventions (the single place they are written down; everything else refers here):

* **Pixel coordinates.** A pixel's *centre* sits at integer coordinates: pixel ``(row, col)`` of an image is the point
  ``(y, x) = (row, col)``. Coordinates are written ``(y, x)`` / ``(row, col)``, rows growing downwards.
* **Feature grid.** Feature ``(i, j)`` of a map of stride ``s`` sits at image coordinate ``(s*i, s*j)``. This is what
  odd convolutions with ``padding = k // 2`` (and 1x1 convs / max-pools with the matching padding) produce: output
  ``i`` is centred on input ``s*i``.
* **Canvas.** The image a network sees after padding, of size ``(H, W)``. Its centre is ``((H-1)/2, (W-1)/2)`` in
  image coordinates, i.e. ``((H-1)/(2s), (W-1)/(2s))`` in the coordinates of a stride-``s`` feature map.
* **Equivariant canvas.** A side ``n`` is *equivariant for stride S* when ``n ≡ 1 (mod S)``. Then every layer of
  stride ``s | S`` sees an odd input size, samples a grid symmetric about the canvas centre, and produces a map of
  ``m = (n-1)/s + 1`` pixels whose middle *is* the canvas centre (the middle pixel when ``m`` is odd, the middle
  between two pixels when ``m`` is even, e.g. ``n = 129``, ``s = 128``): rotations by multiples of 90° about the
  canvas centre map the feature grid onto itself (``i -> m-1-i``), and equivariance is exact.
* **Angles** are in degrees. A positive angle turns the image content in the direction of
  ``torch.rot90(x, k=1, dims=(-2, -1))`` (counter-clockwise as displayed with rows downwards), which is also the
  direction of escnn's rotation generator acting on ``(-2, -1)`` grids. For a point ``(y, x)`` relative to the
  centre, rotating by ``+90°`` gives ``(-x, y)``. Any finite angle (negative, several turns) is reduced modulo 360°;
  NaN / Inf raise ``ValueError``. An angle within ``1e-9`` degrees of a multiple of 90° is that multiple (exact
  ``cos``/``sin`` of 0 / ±1).
* **Mirror.** ``flip=True`` mirrors ``x -> -x`` about the canvas centre *before* the rotation (escnn's default
  reflection of the flipRot2dOnR2 group, ``tensor.flip(-1)`` of a centred map).
* **Rotated canvas.** For odd multiples of 90° the canvas ``(H, W)`` becomes ``(W, H)``; for every other angle it is
  kept (what leaves it is lost). :func:`rotation_matrix_and_offset` maps points of the canvas to points of the
  rotated canvas, centre to centre; :func:`rotate_points` applies it (boxes use it through
  :mod:`rotplugin.boxes`, feature maps through :mod:`rotplugin.fields`).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "equivariant_canvas_size",
    "equivariant_canvas_shape",
    "is_equivariant_canvas",
    "check_equivariant_canvas",
    "feature_size",
    "canvas_centre",
    "rotated_canvas_size",
    "rotation_matrix_and_offset",
    "rotate_points",
]

_ANGLE_TOL = 1e-9      # degrees: an angle this close to a multiple counts as that multiple
AngleLike = Union[float, int, torch.Tensor, np.ndarray, Sequence[float]]


def _is_int(n) -> bool:
    """Python and numpy integers (``np.int64`` from array shapes), not ``bool``."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def _check_stride(stride: int) -> int:
    if not _is_int(stride) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return int(stride)


def equivariant_canvas_size(size: int, max_stride: int) -> int:
    """Smallest side ``n >= size`` with ``n ≡ 1 (mod max_stride)`` (1025 for 1024 and strides up to 1024).

    Images smaller than ``max_stride`` get the canvas ``max_stride + 1`` (a 20x30 image and strides up to 128: 129).
    A zero or negative size raises ``ValueError``."""
    max_stride = _check_stride(max_stride)
    if not _is_int(size) or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    size = int(size)
    return size + ((1 - size) % max_stride)


def equivariant_canvas_shape(shape: Sequence[int], max_stride: int) -> Tuple[int, int]:
    """:func:`equivariant_canvas_size` applied to both sides of ``(H, W)``."""
    h, w = shape
    return equivariant_canvas_size(int(h), max_stride), equivariant_canvas_size(int(w), max_stride)


def is_equivariant_canvas(shape: Sequence[int], max_stride: int) -> bool:
    max_stride = _check_stride(max_stride)
    return all(int(n) % max_stride == 1 % max_stride for n in shape)


def check_equivariant_canvas(shape: Sequence[int], max_stride: int, what: str = "input") -> None:
    """Raise ``ValueError`` naming the offending side when ``shape`` is not an equivariant canvas."""
    max_stride = _check_stride(max_stride)
    for name, n in zip(("height", "width"), shape):
        if int(n) % max_stride != 1 % max_stride:
            good = equivariant_canvas_size(int(n), max_stride)
            raise ValueError(
                f"{what} {name} {int(n)} is not an equivariant canvas for the largest stride {max_stride}: "
                f"exact equivariance needs size ≡ 1 (mod {max_stride}); pad to {good} "
                f"(rotplugin.canvas.equivariant_canvas_size)")


def feature_size(n: int, stride: int) -> int:
    """Side of the stride-``stride`` map of a canvas side ``n`` (stride-2 steps of ``floor((n-1)/2) + 1``)."""
    stride = _check_stride(stride)
    if stride & (stride - 1):
        raise ValueError(f"stride must be a power of two, got {stride}")
    for _ in range(int(math.log2(stride))):
        n = (n - 1) // 2 + 1
    return n


def canvas_centre(canvas_shape: Sequence[int], stride: int = 1) -> Tuple[float, float]:
    """Canvas centre ``(y, x)`` in the coordinates of a stride-``stride`` feature map: ``((H-1)/(2s), (W-1)/(2s))``."""
    stride = _check_stride(stride)
    h, w = canvas_shape
    return (h - 1) / (2.0 * stride), (w - 1) / (2.0 * stride)


# ----------------------------------------------------------------------------------------------------------------
# angles
# ----------------------------------------------------------------------------------------------------------------

def _scalar_angle(angle) -> float:
    if isinstance(angle, torch.Tensor):
        if angle.numel() != 1:
            raise ValueError(f"expected one angle, got a tensor of shape {tuple(angle.shape)}")
        angle = angle.item()
    if isinstance(angle, np.ndarray):
        if angle.size != 1:
            raise ValueError(f"expected one angle, got an array of shape {angle.shape}")
        angle = angle.item()
    if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
        raise TypeError(f"angle must be a real number of degrees, got {angle!r} ({type(angle).__name__})")
    a = float(angle)
    if not math.isfinite(a):
        raise ValueError(f"angle must be finite, got {angle!r}")
    return a


def _batch_angles(angle: AngleLike, batch: Optional[int]):
    """A float for one angle, or a list of ``batch`` floats for a 1-D tensor / array / sequence of angles."""
    if isinstance(angle, torch.Tensor):
        if angle.dim() == 0:
            return _scalar_angle(angle)
        if angle.dim() != 1:
            raise ValueError(f"batched angles must be a 1-D tensor, got shape {tuple(angle.shape)}")
        values = [float(v) for v in angle.detach().cpu().double().tolist()]
    elif isinstance(angle, np.ndarray):
        if angle.ndim == 0:
            return _scalar_angle(angle)
        if angle.ndim != 1:
            raise ValueError(f"batched angles must be 1-D, got shape {angle.shape}")
        values = [_scalar_angle(v) for v in angle.tolist()]
    elif isinstance(angle, (list, tuple)):
        values = [_scalar_angle(v) for v in angle]
    else:
        return _scalar_angle(angle)
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"angles must be finite, got {values}")
    if batch is not None and len(values) != batch:
        raise ValueError(f"got {len(values)} angles for a batch of {batch} samples")
    return values


def _quarter_turns(angle: float) -> Optional[int]:
    """``k`` in 0..3 when ``angle`` is ``90k`` degrees modulo 360 (within tolerance), else ``None``."""
    q = round(angle / 90.0)
    if abs(angle - 90.0 * q) <= _ANGLE_TOL:
        return int(q) % 4
    return None


def _cos_sin(angle: float) -> Tuple[float, float]:
    """cos / sin of ``angle`` degrees, exact (0, ±1) at multiples of 90°."""
    k = _quarter_turns(angle)
    if k is not None:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[k]
    t = math.radians(angle)
    return math.cos(t), math.sin(t)


# ----------------------------------------------------------------------------------------------------------------
# the point map
# ----------------------------------------------------------------------------------------------------------------

def _check_canvas(canvas_size) -> Tuple[int, int]:
    try:
        h, w = canvas_size
    except (TypeError, ValueError):
        raise ValueError(f"canvas_size must be (H, W), got {canvas_size!r}") from None
    for n in (h, w):
        if not _is_int(n) or int(n) < 1:
            raise ValueError(f"canvas_size must be two positive integers, got {canvas_size!r}")
    return int(h), int(w)


def rotated_canvas_size(canvas_size: Sequence[int], angle: float) -> Tuple[int, int]:
    """The canvas after rotating by ``angle`` degrees: ``(W, H)`` for odd multiples of 90°, else ``(H, W)``."""
    h, w = _check_canvas(canvas_size)
    k = _quarter_turns(_scalar_angle(angle))
    return (w, h) if k in (1, 3) else (h, w)


def _feature_side(n: int, stride: int) -> int:
    if stride & (stride - 1) == 0:
        return feature_size(n, stride)
    return (n - 1) // stride + 1        # the same closed form, for strides canvas.feature_size does not take


def rotation_matrix_and_offset(angle: float, canvas_size: Sequence[int], *, stride: int = 1,
                               flip: bool = False,
                               out_size: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The point map of the rotation: ``p_out = A @ p_in + t``.

    Points are ``(y, x)`` (row, column) in the coordinates of a stride-``stride`` feature map (image pixels for
    ``stride=1``) of the canvas ``canvas_size = (H, W)`` before, and of the canvas ``out_size`` (default
    :func:`rotated_canvas_size`) after, the rotation (see :mod:`rotplugin.canvas`); a larger ``out_size`` holds
    the whole rotated canvas at angles off the quarter turns. ``A = R(angle) @ M`` with
    ``R(θ) = [[cos θ, -sin θ], [sin θ, cos θ]]`` acting on ``(y, x)`` and ``M = diag(1, -1)`` (mirror
    ``x -> -x``) when ``flip`` else the identity; ``t = c_out - A @ c_in`` with ``c`` the canvas centres (centre
    onto centre). Exact (integer ``A``) at multiples of 90°.

    Returns ``(A, t)``: float64 arrays of shapes (2, 2) and (2,).
    """
    stride = _check_stride(stride)
    h, w = _check_canvas(canvas_size)
    angle = _scalar_angle(angle)
    out = rotated_canvas_size((h, w), angle) if out_size is None else _check_canvas(out_size)
    c, s = _cos_sin(angle)
    a = np.array([[c, -s], [s, c]], dtype=np.float64)
    if flip:
        a = a @ np.diag([1.0, -1.0])
    c_in = np.array(canvas_centre((h, w), stride), dtype=np.float64)
    c_out = np.array(canvas_centre(out, stride), dtype=np.float64)
    return a, c_out - a @ c_in


def rotate_points(points, angle: float, canvas_size: Sequence[int], *, stride: int = 1, flip: bool = False,
                  order: str = "yx", out_size: Optional[Sequence[int]] = None):
    """Map points of the canvas to the rotated canvas (``out_size``: see :func:`rotation_matrix_and_offset`).

    ``points``: array or tensor of shape ``(..., 2)``; ``order`` is ``"yx"`` (default, the module's convention) or
    ``"xy"`` (e.g. box centres in (x, y) order); the result has the same type, order, dtype and device.
    """
    if order not in ("yx", "xy"):
        raise ValueError(f"order must be 'yx' or 'xy', got {order!r}")
    a, t = rotation_matrix_and_offset(angle, canvas_size, stride=stride, flip=flip, out_size=out_size)
    if order == "xy":
        a, t = a[::-1, ::-1].copy(), t[::-1].copy()
    if isinstance(points, torch.Tensor):
        if points.shape[-1:] != (2,):
            raise ValueError(f"points must have shape (..., 2), got {tuple(points.shape)}")
        dt = points.dtype if points.is_floating_point() else torch.float64
        at = torch.as_tensor(a, dtype=dt, device=points.device)
        tt = torch.as_tensor(t, dtype=dt, device=points.device)
        return points.to(dt) @ at.T + tt
    p = np.asarray(points)
    if p.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    out = p.astype(np.float64) @ a.T + t
    return out.astype(p.dtype) if np.issubdtype(p.dtype, np.floating) else out
