"""Canvas and feature-grid geometry (torch-free maths, no mm* imports).

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
  centre, rotating by ``+90°`` gives ``(-x, y)``.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence, Tuple

__all__ = [
    "equivariant_canvas_size",
    "equivariant_canvas_shape",
    "is_equivariant_canvas",
    "check_equivariant_canvas",
    "feature_size",
    "canvas_centre",
]


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
