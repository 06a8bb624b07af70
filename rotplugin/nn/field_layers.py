"""Equivariant layers that take and return plain tensors (escnn + torch, no mm* imports).

Every layer here works on ``torch.Tensor`` s whose channels are the consecutive fields of an escnn ``FieldType``
(see :mod:`rotplugin.fields` for the channel order of a field). Only the convolution needs escnn (its filters are
expanded from escnn's steerable basis); batch norm, ReLU, max-pooling and interpolation act on each channel of a
permutation-representation field (regular, trivial, quotient) independently or on whole fields, so they are plain
torch layers and commute with the fibre action.

Every layer can ``export()`` itself to plain PyTorch (no escnn at inference): :func:`export_module` does it for a
whole model.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

try:  # escnn warns at import that py3nj (SO(3) only) is missing; we never use SO(3).
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from escnn import gspaces
        from escnn import nn as enn
except ImportError as err:  # pragma: no cover - import guard
    raise ImportError("rotplugin's equivariant layers need escnn 1.0.11: run `make install`") from err

__all__ = [
    "make_gspace",
    "regular_field_type",
    "trivial_field_type",
    "FieldConv",
    "FieldBatchNorm",
    "export_module",
]


def make_gspace(orientation: int, flip: bool = False):
    """The escnn gspace of rotations C_N (``flip=False``) or rotations and mirrors D_N (``flip=True``) on the plane."""
    if not isinstance(orientation, int) or isinstance(orientation, bool) or orientation < 1:
        raise ValueError(f"orientation must be a positive integer N (group C_N / D_N), got {orientation!r}")
    return gspaces.flipRot2dOnR2(orientation) if flip else gspaces.rot2dOnR2(orientation)


def regular_field_type(gspace, channels: int, what: str = "layer") -> "enn.FieldType":
    """``channels`` channels as ``channels / |G|`` regular fields; error naming ``what`` when not divisible."""
    size = gspace.regular_repr.size
    if not isinstance(channels, int) or channels <= 0 or channels % size:
        raise ValueError(
            f"{what}: {channels!r} channels is not a whole number of regular fields of {gspace.fibergroup.name} "
            f"(each regular field has {size} channels); use a multiple of {size}")
    return enn.FieldType(gspace, [gspace.regular_repr] * (channels // size))


def trivial_field_type(gspace, channels: int) -> "enn.FieldType":
    return enn.FieldType(gspace, [gspace.trivial_repr] * channels)


def _frequency_cutoff_3r(radius: float) -> float:
    # The cut-off ReDet/mmrotate's e2cnn convolutions use (a module-level function so that models pickle).
    return 3 * radius


def _fan_in_scale(conv: "enn.R2Conv", gain: float) -> None:
    """He-like init without escnn's slow generalized He init: draw the basis coefficients, expand the filter once
    and rescale the coefficients so that the expanded filter has std ``gain / sqrt(fan_in)``."""
    with torch.no_grad():
        conv.weights.normal_()
        filt, _ = conv.expand_parameters()
        fan_in = filt.shape[1] * filt.shape[2] * filt.shape[3]
        std = filt.std().clamp_min(1e-12)
        conv.weights.mul_(gain / math.sqrt(fan_in) / std)
        if conv.bias is not None:
            conv.bias.zero_()


class FieldConv(nn.Module):
    """Steerable convolution (escnn ``R2Conv``) between two field types, on plain tensors.

    Odd kernels only, with ``padding = dilation * (kernel_size // 2)``: output pixel ``i`` is centred on input pixel
    ``stride * i`` (the feature-grid convention of :mod:`rotplugin.canvas`).
    """

    def __init__(self, in_type, out_type, kernel_size: int, stride: int = 1, dilation: int = 1, bias: bool = False,
                 gain: float = math.sqrt(2.0)):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"FieldConv needs an odd kernel_size to keep the feature grid centred, got {kernel_size}")
        self.in_type, self.out_type = in_type, out_type
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.conv = enn.R2Conv(in_type, out_type, kernel_size, padding=dilation * (kernel_size // 2), stride=stride,
                               dilation=dilation, bias=bias, sigma=None, frequencies_cutoff=_frequency_cutoff_3r,
                               initialize=False)
        _fan_in_scale(self.conv, gain)

    @property
    def in_channels(self) -> int:
        return self.in_type.size

    @property
    def out_channels(self) -> int:
        return self.out_type.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_type.size:
            raise ValueError(f"FieldConv expects a (B, {self.in_type.size}, H, W) tensor, got {tuple(x.shape)}")
        return self.conv(enn.GeometricTensor(x, self.in_type)).tensor

    def export(self) -> nn.Conv2d:
        """A ``torch.nn.Conv2d`` with the expanded filter (and bias): equal outputs, no escnn needed."""
        with torch.no_grad():
            filt, bias = self.conv.expand_parameters()
            out = nn.Conv2d(self.in_type.size, self.out_type.size, self.kernel_size, stride=self.stride,
                            padding=self.dilation * (self.kernel_size // 2), dilation=self.dilation,
                            bias=bias is not None)
            out.weight.copy_(filt)
            if bias is not None:
                out.bias.copy_(bias)
        return out.to(self.conv.weights.device)

    def extra_repr(self) -> str:
        return (f"{self.in_type.size} -> {self.out_type.size} channels ({len(self.out_type)} fields), "
                f"kernel_size={self.kernel_size}, stride={self.stride}")


class FieldBatchNorm(nn.BatchNorm3d):
    """Batch norm with one statistic (and one affine weight/bias) per *field*, shared by its channels.

    The same normalisation as escnn's ``InnerBatchNorm`` for fields of equal size: the tensor is viewed as
    ``(B, fields, field_size, H, W)`` and normalised by a ``BatchNorm3d`` over fields, so mmengine's ``norm_eval``
    and frozen-stage logic treat it as the batch norm it is.
    """

    def __init__(self, field_type, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        sizes = {r.size for r in field_type.representations}
        if len(sizes) != 1:
            raise ValueError(f"FieldBatchNorm needs fields of one size, got sizes {sorted(sizes)}")
        for r in field_type.representations:
            if not _is_permutation_representation(r):
                raise ValueError(f"FieldBatchNorm only normalises permutation fields (regular, trivial, quotient), "
                                 f"got {r.name}")
        self.field_type = field_type
        self.field_size = sizes.pop()
        super().__init__(len(field_type), eps=eps, momentum=momentum, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c != self.field_type.size:
            raise ValueError(f"FieldBatchNorm expects {self.field_type.size} channels, got {c}")
        return super().forward(x.reshape(b, self.num_features, self.field_size, h, w)).reshape(b, c, h, w)

    def export(self) -> nn.BatchNorm2d:
        """A ``torch.nn.BatchNorm2d`` over channels with the per-field statistics repeated (equal in eval mode)."""
        n = self.field_size
        out = nn.BatchNorm2d(self.num_features * n, eps=self.eps, momentum=self.momentum, affine=self.affine)
        with torch.no_grad():
            out.running_mean.copy_(self.running_mean.repeat_interleave(n))
            out.running_var.copy_(self.running_var.repeat_interleave(n))
            out.num_batches_tracked.copy_(self.num_batches_tracked)
            if self.affine:
                out.weight.copy_(self.weight.repeat_interleave(n))
                out.bias.copy_(self.bias.repeat_interleave(n))
        out.train(self.training)
        return out.to(self.running_mean.device)


def _is_permutation_representation(rep) -> bool:
    return "pointwise" in rep.supported_nonlinearities


def export_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every ``FieldConv`` / ``FieldBatchNorm`` is replaced by its plain PyTorch
    equivalent (``export()``) and attributes holding escnn objects (field types, gspaces) are set to ``None``: the
    copy needs no escnn to run or to unpickle."""
    if isinstance(module, (FieldConv, FieldBatchNorm)):
        return module.export()
    # deepcopy consults ``memo`` by object id first: pre-seed it with the replacements.
    memo = {}
    for m in module.modules():
        if isinstance(m, (FieldConv, FieldBatchNorm)):
            memo[id(m)] = m.export()
        elif not type(m).__module__.startswith("escnn"):
            for value in vars(m).values():
                for obj in (value if isinstance(value, (list, tuple)) else (value,)):
                    if type(obj).__module__.startswith("escnn"):
                        memo[id(obj)] = None
    return copy.deepcopy(module, memo)
