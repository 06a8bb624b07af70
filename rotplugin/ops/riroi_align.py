"""Rotation-invariant rotated RoI align (ReDet's RiRoIAlign) in pure PyTorch.

This is a device-agnostic (CPU / CUDA), vectorised re-implementation of the
semantics of mmcv 2.1.0's CUDA operator ``RiRoIAlignRotated``.  Gradients come
from autograd; because the forward pass is a weighted gather (a linear map of
the features with fixed weights), the backward pass is exactly the adjoint of
the same bilinear weights, which is what mmcv's backward kernel scatters.  As in
mmcv, no gradient flows into ``rois``.

Conventions (read from the kernel; all in feature-map coordinates, i.e. after
multiplying the RoI by ``spatial_scale``):

* RoI ``(batch_idx, cx, cy, w, h, theta)``, ``theta`` in radians.  The batch
  index is truncated to an integer (C ``int`` cast).
* No ``aligned`` half-pixel offset: the RoI centre is used as is, and pixel
  ``(i, j)`` has its centre at the integer coordinate ``(x=j, y=i)`` (that is
  how the bilinear helper indexes the map).
* ``w`` and ``h`` are clamped to at least 1 (after scaling).
* Bin ``(ph, pw)`` of an ``out_h x out_w`` grid is sampled on a regular
  ``gh x gw`` sub-grid, ``g = num_samples`` if ``num_samples > 0`` else
  ``ceil(roi_size / out_size)`` per RoI and axis; the samples are averaged.
  RoI-local sample offsets are
  ``yy = -h/2 + ph*bin_h + (iy + .5) * bin_h / gh`` (likewise ``xx``).
* Geometric rotation: with ``a = theta`` (``clockwise=False``) or
  ``a = -theta`` (``clockwise=True``), the sample is at
  ``y = yy*cos(a) - xx*sin(a) + cy``, ``x = yy*sin(a) + xx*cos(a) + cx``.  The
  RoI's local x axis (its width direction) therefore points along
  ``(cos a, -sin a)`` in (x, y) image coordinates with y pointing down: a
  positive ``theta`` turns the box counter-clockwise *as seen on screen* when
  ``clockwise=False`` and clockwise when ``clockwise=True`` (mmrotate's box
  convention, and what ReDet's configs use).
* Bilinear interpolation (mmcv's ``bilinear_interpolate``): a sample with
  ``y < -1 or y > H or x < -1 or x > W`` contributes 0; otherwise coordinates
  ``<= 0`` are clamped to 0 and coordinates beyond the last pixel are clamped to
  it (constant extension over one pixel on every side).
* Orientation alignment uses the *unnegated* ``theta`` (also when
  ``clockwise=True``): ``t = theta * N / (2*pi)``, ``k = floor(t)``,
  ``l = t - k``, ``r = 1 - l``.  Output channel ``f*N + o`` is
  ``r * pool(f*N + (o - k) mod N) + l * pool(f*N + (o - k + 1) mod N)``.
  Channel layout: ``C = num_fields * N``, channel ``f*N + o`` is orientation
  ``o`` of field ``f``.  (Note that this interpolation is continuous in
  ``theta`` only at integer ``t``: just below an integer ``k+1`` the output is
  close to channel ``o - k + 1`` and at ``k+1`` it jumps to ``o - k - 1``.  This
  is the kernel's behaviour and it is reproduced here.)
* Precision details of the float kernel are mimicked: ``t`` is formed as
  ``(theta*N)`` in the input dtype, divided by ``2*pi`` in double and rounded
  back; ``floor`` and the adaptive ``ceil`` are taken in float32 (mmcv 2.1.0
  calls ``floorf``/``ceilf``).
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RiRoIAlignRotated", "riroi_align_rotated"]


def _parse_output_size(output_size) -> tuple[int, int]:
    """Return ``(out_h, out_w)`` from an int or a pair of ints."""

    def _is_int(v) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool)

    if _is_int(output_size):
        out_h = out_w = int(output_size)
    elif isinstance(output_size, (tuple, list)):
        if len(output_size) != 2 or not all(_is_int(v) for v in output_size):
            raise TypeError(
                "output_size must be an int or a pair (out_h, out_w) of ints, "
                f"got {output_size!r}")
        out_h, out_w = (int(v) for v in output_size)
    else:
        raise TypeError(
            "output_size must be an int or a pair (out_h, out_w) of ints, "
            f"got {output_size!r}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return out_h, out_w


def _check_num_orientations(num_orientations) -> int:
    if not isinstance(num_orientations, Integral) or isinstance(num_orientations, bool) \
            or num_orientations < 1:
        raise ValueError(f"num_orientations must be a positive int, got {num_orientations!r}")
    return int(num_orientations)


def _check_spatial_scale(spatial_scale) -> float:
    if not isinstance(spatial_scale, Real) or isinstance(spatial_scale, bool) \
            or not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale!r}")
    return float(spatial_scale)


def riroi_align_rotated(features: Tensor,
                        rois: Tensor,
                        output_size,
                        spatial_scale: float,
                        num_samples: int = 0,
                        num_orientations: int = 8,
                        clockwise: bool = False) -> Tensor:
    """Rotation-invariant RoI align of rotated RoIs (ReDet), pure PyTorch.

    Args:
        features: ``(B, C, H, W)`` float tensor, ``C = num_fields * num_orientations``
            with channel ``f * num_orientations + o`` = orientation ``o`` of field ``f``.
        rois: ``(n, 6)`` tensor ``[batch_idx, cx, cy, w, h, theta]`` in input-image
            coordinates, ``theta`` in radians.  No gradient flows into it.
        output_size: int or ``(out_h, out_w)``.
        spatial_scale: factor mapping RoI coordinates to feature-map coordinates.
        num_samples: samples per bin and axis; ``<= 0`` means adaptive
            ``ceil(roi_size / output_size)``.
        num_orientations: ``N``, the number of orientation channels per field.
        clockwise: whether ``theta`` turns the box clockwise on screen (y down).

    Returns:
        ``(n, C, out_h, out_w)`` tensor with the dtype and device of ``features``.
    """
    out_h, out_w = _parse_output_size(output_size)
    n_or = _check_num_orientations(num_orientations)
    scale = _check_spatial_scale(spatial_scale)
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError("features must be a 4-D tensor (B, C, H, W), got "
                         f"{getattr(features, 'shape', type(features))}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {features.dtype}")
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.size(1) != 6:
        raise ValueError("rois must be a tensor of shape (n, 6) = "
                         "[batch_idx, cx, cy, w, h, theta], got "
                         f"{tuple(getattr(rois, 'shape', ())) or type(rois)}")
    if rois.device != features.device:
        raise ValueError(f"rois ({rois.device}) and features ({features.device}) "
                         "must be on the same device")
    batch, channels, height, width = features.shape
    if channels % n_or != 0:
        raise ValueError(f"the number of channels ({channels}) must be divisible by "
                         f"num_orientations ({n_or})")
    num_fields = channels // n_or
    n = rois.size(0)
    if n == 0:
        return features.new_zeros((0, channels, out_h, out_w))
    if height == 0 or width == 0 or batch == 0:
        raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}")

    # Half / bfloat16 inputs are computed in float32 and cast back.
    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    device = features.device
    feats = features.to(dtype)
    r = rois.detach().to(dtype)

    batch_ind = r[:, 0].long()  # C int cast: truncation towards zero
    bad = (batch_ind < 0) | (batch_ind >= batch)
    if bool(bad.any()):
        raise ValueError(f"rois[:, 0] must hold batch indices in [0, {batch}), got "
                         f"{r[bad, 0].tolist()[:5]}")

    cx = r[:, 1] * scale
    cy = r[:, 2] * scale
    roi_w = (r[:, 3] * scale).clamp_min(1.0)
    roi_h = (r[:, 4] * scale).clamp_min(1.0)
    theta = r[:, 5]
    bin_h = roi_h / out_h
    bin_w = roi_w / out_w

    # --- orientation alignment (unnegated theta) ---
    ind_float = ((theta * n_or).double() / (2 * math.pi)).to(dtype)
    ind = torch.floor(ind_float.float()).to(dtype)
    l_var = ind_float - ind
    r_var = 1.0 - l_var

    # --- sampling grid sizes per RoI ---
    nbins = out_h * out_w
    if num_samples > 0:
        grid_h = torch.full((n,), int(num_samples), dtype=torch.long, device=device)
        grid_w = grid_h
        total = n * nbins * int(num_samples) ** 2
    else:
        grid_h = torch.ceil(bin_h.float()).long()
        grid_w = torch.ceil(bin_w.float()).long()
        total = None
    per_bin = grid_h * grid_w  # samples per bin, (n,)
    bag_len = per_bin.repeat_interleave(nbins)  # (n * nbins,)
    if total is None:
        total = int(bag_len.sum())
    bag_id = torch.repeat_interleave(torch.arange(n * nbins, device=device), bag_len,
                                     output_size=total)
    bag_start = torch.cumsum(bag_len, 0) - bag_len
    s = torch.arange(total, device=device) - bag_start[bag_id]  # sample index in its bin
    roi_id = bag_id // nbins
    bin_id = bag_id % nbins
    ph = (bin_id // out_w).to(dtype)
    pw = (bin_id % out_w).to(dtype)
    gw_s = grid_w[roi_id]
    iy = (s // gw_s).to(dtype)
    ix = (s % gw_s).to(dtype)
    gh_f = grid_h[roi_id].to(dtype)
    gw_f = gw_s.to(dtype)

    # --- sample positions (same order of operations as the kernel) ---
    bh = bin_h[roi_id]
    bw = bin_w[roi_id]
    yy = (-roi_h[roi_id] / 2 + ph * bh) + (iy + 0.5) * bh / gh_f
    xx = (-roi_w[roi_id] / 2 + pw * bw) + (ix + 0.5) * bw / gw_f
    geo_theta = -theta if clockwise else theta
    cos_t = torch.cos(geo_theta)[roi_id]
    sin_t = torch.sin(geo_theta)[roi_id]
    y = yy * cos_t - xx * sin_t + cy[roi_id]
    x = yy * sin_t + xx * cos_t + cx[roi_id]

    # --- bilinear weights with mmcv's border rules ---
    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    zero = torch.zeros((), dtype=dtype, device=device)
    y = torch.where(valid, y, zero).clamp_min(0.0)
    x = torch.where(valid, x, zero).clamp_min(0.0)
    y_low = y.long()
    x_low = x.long()
    y_cap = y_low >= height - 1
    x_cap = x_low >= width - 1
    y_low = torch.where(y_cap, torch.full_like(y_low, height - 1), y_low)
    x_low = torch.where(x_cap, torch.full_like(x_low, width - 1), x_low)
    y_high = torch.where(y_cap, y_low, y_low + 1)
    x_high = torch.where(x_cap, x_low, x_low + 1)
    y = torch.where(y_cap, y_low.to(dtype), y)
    x = torch.where(x_cap, x_low.to(dtype), x)
    ly = y - y_low.to(dtype)
    lx = x - x_low.to(dtype)
    hy = 1.0 - ly
    hx = 1.0 - lx
    scale_w = valid.to(dtype) / (gh_f * gw_f)
    weights = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), dim=-1) * scale_w[:, None]
    base = batch_ind[roi_id] * (height * width)
    row_lo = base + y_low * width
    row_hi = base + y_high * width
    index = torch.stack((row_lo + x_low, row_lo + x_high, row_hi + x_low, row_hi + x_high), dim=-1)

    # --- weighted gather-sum per output bin: (n * nbins, C) ---
    table = feats.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    pooled = F.embedding_bag(index.reshape(-1), table, offsets=4 * bag_start, mode="sum",
                             per_sample_weights=weights.reshape(-1))
    pooled = pooled.view(n, out_h, out_w, channels).permute(0, 3, 1, 2)
    pooled = pooled.reshape(n, num_fields, n_or, out_h, out_w)

    # --- orientation alignment: cyclic shift + linear interpolation ---
    orient = torch.arange(n_or, device=device)
    src0 = (orient[None, :] - ind.long()[:, None]) % n_or  # (n, N), non-negative
    src1 = (src0 + 1) % n_or
    expand = (n, num_fields, n_or, out_h, out_w)
    g0 = torch.gather(pooled, 2, src0.view(n, 1, n_or, 1, 1).expand(expand))
    g1 = torch.gather(pooled, 2, src1.view(n, 1, n_or, 1, 1).expand(expand))
    out = r_var.view(n, 1, 1, 1, 1) * g0 + l_var.view(n, 1, 1, 1, 1) * g1
    return out.reshape(n, channels, out_h, out_w).to(features.dtype)


class RiRoIAlignRotated(nn.Module):
    """Rotation-invariant RoI align for rotated RoIs (ReDet), pure PyTorch.

    Drop-in for ``mmcv.ops.RiRoIAlignRotated``: same constructor arguments
    (``out_size, spatial_scale, num_samples=0, num_orientations=8,
    clockwise=False``; ``output_size=`` is accepted as an alias of ``out_size``)
    and ``forward(features, rois)``.  Exposes ``out_size`` (as given, like mmcv)
    and ``output_size`` (an ``(h, w)`` tuple, which mmrotate's
    ``RotatedSingleRoIExtractor`` reads for RoI layers that are not mmcv's
    ``RiRoIAlignRotated``).  See :func:`riroi_align_rotated` and the module
    docstring for the exact conventions.
    """

    def __init__(self,
                 out_size=None,
                 spatial_scale=None,
                 num_samples: int = 0,
                 num_orientations: int = 8,
                 clockwise: bool = False,
                 *,
                 output_size=None):
        super().__init__()
        if out_size is None and output_size is None:
            raise TypeError("RiRoIAlignRotated needs out_size (alias output_size)")
        if out_size is not None and output_size is not None and out_size != output_size:
            raise TypeError("give only one of out_size / output_size")
        if spatial_scale is None:
            raise TypeError("RiRoIAlignRotated needs spatial_scale")
        size = out_size if out_size is not None else output_size
        self.output_size = _parse_output_size(size)
        self.out_size = size
        self.spatial_scale = _check_spatial_scale(spatial_scale)
        self.num_samples = int(num_samples)
        self.num_orientations = _check_num_orientations(num_orientations)
        self.clockwise = bool(clockwise)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return riroi_align_rotated(features, rois, self.output_size, self.spatial_scale,
                                   self.num_samples, self.num_orientations, self.clockwise)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"num_samples={self.num_samples}, num_orientations={self.num_orientations}, "
                f"clockwise={self.clockwise}")
