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

import torch
import torch.nn.functional as F
from torch import nn

try:  # escnn warns at import that py3nj (SO(3) only) is missing; we never use SO(3).
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from escnn import gspaces
        from escnn import nn as enn
except ImportError as err:  # pragma: no cover - import guard
    raise ImportError("rotplugin's equivariant layers need escnn 1.0.11: run `make install`") from err

from rotplugin.fields import fibre_operator, rotate_grid

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


def _grid_symmetries(gspace):
    """The elements ``(angle, flip)`` of the group that map the pixel grid onto itself: rotations by multiples of
    90° present in C_N (all four when 4 | N) and, for D_N, the same composed with the mirror."""
    n = gspace.fibergroup.rotation_order if hasattr(gspace.fibergroup, "rotation_order") else gspace.fibergroup.order()
    quarter = [a for a in (0, 90, 180, 270) if (a * n) % 360 == 0]
    flips = (False, True) if gspace.flips_order > 0 else (False,)
    return [(a, f) for f in flips for a in quarter]


class FieldConv(nn.Module):
    """Steerable convolution (escnn ``R2Conv``) between two field types, on plain tensors.

    Odd kernels only, with ``padding = dilation * (kernel_size // 2)``: output pixel ``i`` is centred on input pixel
    ``stride * i`` (the feature-grid convention of :mod:`rotplugin.canvas`).

    The filter expanded from escnn's basis is equivariant only up to float rounding of the sampled basis (relative
    ~2e-7 per layer, which adds up over a ResNet-50). Before use it is projected onto the filters that are *exactly*
    equivariant under the group's grid symmetries (rotations by multiples of 90° and, for D_N, mirrors): the average
    over those elements ``g`` of ``ρ_out(g) W(g⁻¹x) ρ_in(g)⁻¹``, computed with index operations in float64. The
    projection is linear (gradients flow through it) and leaves an equivariant filter unchanged up to rounding.

    It is applied wherever exactness can be observed: in eval mode (cached), under ``torch.no_grad()`` and in
    :meth:`export`. A training step (training mode with gradients) uses escnn's expansion as it is: projecting every
    filter at every step, forward and backward, costs about 25× the expansion itself (measured on the demo's
    EquivariantResNet-18 C4), and changes the filter only by escnn's rounding, so the coefficients learn the same
    function.
    """

    def __init__(self, in_type, out_type, kernel_size: int, stride: int = 1, dilation: int = 1, bias: bool = False,
                 gain: float = math.sqrt(2.0)):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"FieldConv needs an odd kernel_size to keep the feature grid centred, got {kernel_size}")
        if in_type.gspace != out_type.gspace:
            raise ValueError("FieldConv: input and output field types live on different gspaces")
        self.in_type, self.out_type = in_type, out_type
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.padding = dilation * (kernel_size // 2)
        self.conv = enn.R2Conv(in_type, out_type, kernel_size, padding=self.padding, stride=stride,
                               dilation=dilation, bias=bias, sigma=None, frequencies_cutoff=_frequency_cutoff_3r,
                               initialize=False)
        _fan_in_scale(self.conv, gain)
        # escnn's R2Conv keeps its expanded filter (and bias) as buffers for its own forward: zeros from construction
        # on, the unsymmetrised expansion after ``eval()``. FieldConv never runs that forward (it expands and caches
        # its own symmetrised filter, :meth:`expanded_filter`), so they are dropped here and never made again
        # (:meth:`train`): DDP would broadcast them at every step (the zeros of an R50-C8 + FPN are 126 MB, against
        # 15 MB of coefficients, and DDP keeps them after escnn's ``train()`` deletes them), and checkpoints saved in
        # eval mode would carry them. The state dict holds the same keys in both modes.
        for name in ("filter", "expanded_bias"):
            self.conv._buffers.pop(name, None)
        self._symmetries = [s for s in _grid_symmetries(in_type.gspace) if s != (0, False)]
        self._cache = None  # (key, filter, bias) for eval mode

    @property
    def in_channels(self) -> int:
        return self.in_type.size

    @property
    def out_channels(self) -> int:
        return self.out_type.size

    def _symmetrize(self, filt: torch.Tensor) -> torch.Tensor:
        if not self._symmetries:
            return filt
        acc = filt.double()
        for angle, flip in self._symmetries:
            w = rotate_grid(filt, angle, flip=flip)                                   # W(g⁻¹x)
            w = fibre_operator(self.in_type, angle, flip=flip).apply(w)               # · ρ_in(g)⁻¹ (orthogonal)
            w = fibre_operator(self.out_type, angle, flip=flip).apply(w.transpose(0, 1)).transpose(0, 1)
            acc = acc + w.double()
        return (acc / (len(self._symmetries) + 1)).to(filt.dtype)

    def expanded_filter(self):
        """``(filter, bias)`` of the equivalent ``torch.nn.Conv2d``: escnn's expansion in a training step with
        gradients, else symmetrised (see the class docstring) and cached in eval mode until the coefficients
        change."""
        weights = self.conv.weights
        if self.training and torch.is_grad_enabled() and weights.requires_grad:
            return self.conv.expand_parameters()  # a training step: see the class docstring
        if not self.training and not (torch.is_grad_enabled() and weights.requires_grad):
            bias = self.conv.bias
            key = (weights._version, weights.data_ptr(), weights.device, weights.dtype,
                   None if bias is None else (bias._version, bias.data_ptr()))
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1], self._cache[2]
            with torch.no_grad():
                filt, bias = self.conv.expand_parameters()
                filt = self._symmetrize(filt)
            self._cache = (key, filt, bias)
            return filt, bias
        filt, bias = self.conv.expand_parameters()
        return self._symmetrize(filt), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_type.size:
            raise ValueError(f"FieldConv expects a (B, {self.in_type.size}, H, W) tensor, got {tuple(x.shape)}")
        filt, bias = self.expanded_filter()
        return F.conv2d(x, filt.to(x.dtype), None if bias is None else bias.to(x.dtype), self.stride, self.padding,
                        self.dilation)

    def train(self, mode: bool = True):
        # the flags only: escnn's R2Conv.train(False) would expand its unsymmetrised filter into buffers (see
        # __init__); the eval-mode cache of this module is rebuilt on first use
        self._cache = None
        for module in self.modules():
            module.training = mode
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ``filter`` / ``expanded_bias``: escnn's caches of ``weights`` / ``bias`` that checkpoints of escnn models
        # (and of FieldConv before it dropped them) carry when saved in eval mode or right after construction; the
        # coefficients are the state, so the caches are ignored whatever mode the state dict was saved in.
        for name in ("filter", "expanded_bias"):
            state_dict.pop(prefix + "conv." + name, None)
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def export(self) -> nn.Conv2d:
        """A ``torch.nn.Conv2d`` with the expanded filter (and bias): equal outputs, no escnn needed."""
        with torch.no_grad():
            filt, bias = self.conv.expand_parameters()
            filt = self._symmetrize(filt)
            out = nn.Conv2d(self.in_type.size, self.out_type.size, self.kernel_size, stride=self.stride,
                            padding=self.padding, dilation=self.dilation, bias=bias is not None, dtype=filt.dtype)
            out.weight.copy_(filt)
            if bias is not None:
                out.bias.copy_(bias)
        return out.to(self.conv.weights.device)

    def extra_repr(self) -> str:
        return (f"{self.in_type.size} -> {self.out_type.size} channels ({len(self.out_type)} fields), "
                f"kernel_size={self.kernel_size}, stride={self.stride}")


class FieldBatchNorm(nn.Module):
    """Batch norm with one statistic (and one affine weight/bias) per *field*, shared by its channels.

    The same normalisation as escnn's ``InnerBatchNorm`` for fields of equal size: the tensor is viewed as
    ``(B, fields, field_size, H, W)`` and normalised by the inner ``bn``, a ``BatchNorm3d`` over fields. The inner
    module is a plain torch batch norm, so mmengine's ``norm_eval`` and frozen stages treat it as one, and
    ``SyncBatchNorm.convert_sync_batchnorm`` (mmengine's ``sync_bn='torch'``) replaces it by a ``SyncBatchNorm`` that
    still receives the 5-D field view.
    """

    def __init__(self, field_type, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        sizes = {r.size for r in field_type.representations}
        if len(sizes) != 1:
            raise ValueError(f"FieldBatchNorm needs fields of one size, got sizes {sorted(sizes)}")
        for r in field_type.representations:
            if not _is_permutation_representation(r):
                raise ValueError(f"FieldBatchNorm only normalises permutation fields (regular, trivial, quotient), "
                                 f"got {r.name}")
        self.field_type = field_type
        self.field_size = sizes.pop()
        self.bn = nn.BatchNorm3d(len(field_type), eps=eps, momentum=momentum, affine=affine)

    @property
    def num_features(self) -> int:
        return self.bn.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c != self.field_type.size:
            raise ValueError(f"FieldBatchNorm expects {self.field_type.size} channels, got {c}")
        return self.bn(x.reshape(b, self.bn.num_features, self.field_size, h, w)).reshape(b, c, h, w)

    def export(self) -> nn.BatchNorm2d:
        """A ``torch.nn.BatchNorm2d`` over channels with the per-field statistics repeated (equal in eval mode)."""
        n, bn = self.field_size, self.bn
        out = nn.BatchNorm2d(bn.num_features * n, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                             dtype=bn.running_mean.dtype)
        with torch.no_grad():
            out.running_mean.copy_(bn.running_mean.repeat_interleave(n))
            out.running_var.copy_(bn.running_var.repeat_interleave(n))
            out.num_batches_tracked.copy_(bn.num_batches_tracked)
            if bn.affine:
                out.weight.copy_(bn.weight.repeat_interleave(n))
                out.bias.copy_(bn.bias.repeat_interleave(n))
        out.train(bn.training)
        return out.to(bn.running_mean.device)


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
