"""Convert e2cnn ReDet checkpoints (mmrotate's ``ReResNet`` / ``ReFPN``) to rotplugin's escnn modules.

ReDet's backbone and neck are e2cnn modules: every steerable convolution (``e2cnn.nn.R2Conv``) stores the coefficients
``weights`` of its filter in e2cnn's steerable basis, and every batch norm is an ``InnerBatchNorm``
(``<name>.batch_norm_[N].weight`` ...). rotplugin's :class:`~rotplugin.models.EquivariantResNet` /
:class:`~rotplugin.models.EquivariantFPN` are built from escnn ``R2Conv`` s (in :class:`~rotplugin.nn.FieldConv`) whose
coefficients live in escnn's basis, and from :class:`~rotplugin.nn.FieldBatchNorm` (the same normalisation as
``InnerBatchNorm``).

How the coefficients are mapped
-------------------------------
Both libraries lay the coefficient vector of a convolution between field types with one representation each out in
the same way: ``weights.view(out_fields, in_fields, d)``, one block of ``d`` coefficients per (output field, input
field) pair, all blocks expanded with the same block basis (``d`` basis filters of shape
``(out_size, in_size, k, k)``). The expanded filter is linear in the coefficients, so per distinct block basis
(representations, kernel size, dilation) we expand unit coefficient vectors on a one-field-to-one-field convolution of
each library, giving matrices ``B_e2cnn`` and ``B_escnn`` (``out_size * in_size * k * k`` rows), and solve the least
squares problem ``B_escnn @ T = B_e2cnn``; its relative residual (the *basis residual*) is ~1e-7 (float32 sampling)
when the two bases span the same filters, which they do for ReDet's layers. Every block of the checkpoint is then
mapped by ``T``. If the spans differ, ``T`` is the least-squares projection and the residual says how much is lost.
Biases are mapped the same way through the two libraries' bias expansions.

Every converted layer is checked: the *filter residual* is ``max|F_escnn - F_e2cnn| / max|F_e2cnn|`` between the
dense filter escnn expands from the converted coefficients (escnn's own ``basisexpansion`` of the target layer) and
the dense filter of the checkpoint (e2cnn's block basis applied to the checkpoint's coefficients). When the checkpoint
was saved in eval mode it also holds e2cnn's own expanded ``filter`` buffers; they are compared too (*checkpoint
filter check*). A checkpoint that holds only ``filter`` / ``expanded_bias`` buffers (no ``weights``) is projected
directly onto escnn's basis (least squares per block).

e2cnn is an optional extra (``pip install rotplugin[redet]``, i.e. ``e2cnn==0.2.3``): it is imported only when
coefficients in e2cnn's basis have to be converted. Converting filter-only checkpoints and everything else in this
module work without it.

What is converted
-----------------
* A bare ReResNet state dict (``conv1.weights``, ``layer1.0.bn1.batch_norm_[8].weight`` ...), or the ``backbone.`` /
  ``neck.`` parts of a detector state dict (``ReResNet`` + ``ReFPN``); ``state_dict`` / ``meta`` checkpoint wrappers
  and a ``module.`` (DataParallel) prefix are unwrapped.
* Every other key (RPN / RoI heads, an ImageNet classifier head ...) passes through unchanged.
* The converted backbone / neck keys are exactly the keys of an ``EquivariantResNet`` / ``EquivariantFPN`` of the same
  architecture (``load_state_dict(strict=True)`` works): missing, unexpected or mis-shaped ReDet keys raise a
  :class:`RedetConversionError` listing them.

The ReFPN-compatible neck is ``EquivariantFPN(..., upsample_mode='nearest')`` (ReFPN: 1x1 lateral and 3x3 output
convolutions with bias and no activation, nearest upsampling, extra levels by max pooling with kernel 1 and stride 2).

Targets and architecture
------------------------
This module depends on :mod:`rotplugin.nn` (and torch, escnn, e2cnn) only, not on :mod:`rotplugin.models`: the
caller gives the target modules, built (``EquivariantResNet.init_weights`` converts into itself) or as factories
(``backbone=EquivariantResNet``), which are called with the architecture :func:`infer_redet_architecture` reads off
the checkpoint (depth, group, widths, stages; the ReFPN's widths and levels).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from escnn import nn as enn
from torch import nn

from rotplugin.checkpoints import allow_runner_checkpoints
from rotplugin.nn.field_layers import FieldBatchNorm, FieldConv, make_gspace

__all__ = [
    "RedetConversionError",
    "ArchitectureMismatch",
    "LayerReport",
    "ConversionReport",
    "is_redet_state_dict",
    "unwrap_state_dict",
    "sub_state_dict",
    "load_checkpoint_file",
    "infer_redet_architecture",
    "convert_redet_state_dict",
    "convert_redet_checkpoint",
    "block_basis_map",
]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_LIST_LIMIT = 25


class RedetConversionError(ValueError):
    """The checkpoint does not match the ReDet architecture it is converted to (the message lists the keys)."""


class ArchitectureMismatch(RedetConversionError):
    """An architecture argument the caller insists on (:func:`infer_redet_architecture`'s ``given``) contradicts
    the checkpoint: ``argument`` (e.g. ``'depth'``), the ``given`` value and what the checkpoint has (``found``)."""

    def __init__(self, argument: str, given, found: str):
        self.argument, self.given, self.found = argument, given, found
        super().__init__(f"{argument}={given!r} contradicts the checkpoint, which has {found}")


# ---------------------------------------------------------------------------------------------------------- report
@dataclass
class LayerReport:
    """One converted layer. Residuals are relative (see the module docstring); ``None`` where not applicable."""

    name: str  # key prefix in the converted state dict (e.g. 'backbone.layer1.0.conv1')
    source: str  # key prefix in the ReDet checkpoint (e.g. 'backbone.layer1.0.conv1')
    kind: str  # 'conv' or 'bn'
    mode: str = ""  # conv: 'weights' (coefficients mapped) or 'filter' (dense filter projected)
    basis_residual: Optional[float] = None  # ||B_escnn T - B_e2cnn|| / ||B_e2cnn|| of the block basis map
    filter_residual: Optional[float] = None  # max|F_escnn - F_e2cnn| / max|F_e2cnn| of the whole expanded filter
    bias_residual: Optional[float] = None  # likewise for the expanded bias
    checkpoint_filter_check: Optional[float] = None  # escnn filter (and bias) vs the checkpoint's eval-mode buffers


@dataclass
class ConversionReport:
    layers: List[LayerReport] = field(default_factory=list)
    parts: Dict[str, str] = field(default_factory=dict)  # 'backbone' / 'neck' -> key prefix in the checkpoint
    architecture: Dict[str, dict] = field(default_factory=dict)  # constructor arguments of the target modules
    passthrough: List[str] = field(default_factory=list)  # keys copied unchanged (heads ...)
    ignored: List[str] = field(default_factory=list)  # e2cnn-only buffers not carried over (bases, indices)

    def max_residual(self, what: str = "filter_residual") -> Optional[float]:
        """Max of one residual column over the layers (``None`` when no layer has it)."""
        values = [getattr(r, what) for r in self.layers if getattr(r, what) is not None]
        return max(values) if values else None

    def summary(self) -> dict:
        convs = [r for r in self.layers if r.kind == "conv"]
        return {
            "parts": dict(self.parts),
            "conv_layers": len(convs),
            "bn_layers": len(self.layers) - len(convs),
            "modes": sorted({r.mode for r in convs}),
            "max_basis_residual": self.max_residual("basis_residual"),
            "max_filter_residual": self.max_residual("filter_residual"),
            "max_bias_residual": self.max_residual("bias_residual"),
            "max_checkpoint_filter_check": self.max_residual("checkpoint_filter_check"),
            "passthrough_keys": len(self.passthrough),
        }

    def table(self) -> str:
        def fmt(v):
            return "-" if v is None else f"{v:.2e}"

        rows = [f"{'layer':<42} {'mode':<8} {'basis':>9} {'filter':>9} {'bias':>9} {'ckpt-flt':>9}"]
        for r in self.layers:
            if r.kind != "conv":
                continue
            rows.append(f"{r.name:<42} {r.mode:<8} {fmt(r.basis_residual):>9} {fmt(r.filter_residual):>9} "
                        f"{fmt(r.bias_residual):>9} {fmt(r.checkpoint_filter_check):>9}")
        s = self.summary()
        rows.append(f"{s['conv_layers']} convolutions, {s['bn_layers']} batch norms converted; max residuals: basis "
                    f"{fmt(s['max_basis_residual'])}, filter {fmt(s['max_filter_residual'])}, bias "
                    f"{fmt(s['max_bias_residual'])}, checkpoint filter {fmt(s['max_checkpoint_filter_check'])}; "
                    f"{s['passthrough_keys']} other keys passed through")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "architecture": self.architecture,
                "layers": [asdict(r) for r in self.layers], "passthrough": list(self.passthrough)}


# ------------------------------------------------------------------------------------------------- loading helpers
def load_checkpoint_file(path: str, map_location="cpu", trusted: bool = False) -> dict:
    """Load a checkpoint file (or URL) with mmengine's loader (torch's safe ``weights_only`` unpickling).

    The message hub and numpy objects of checkpoints that mmengine's runner saved load safely
    (:func:`rotplugin.checkpoints.allow_runner_checkpoints`); any other Python object is refused, unless
    ``trusted=True``, which loads local files with ``weights_only=False`` (only for files you trust: it can run
    arbitrary code)."""
    allow_runner_checkpoints()
    if trusted and os.path.isfile(path):
        return torch.load(path, map_location=map_location, weights_only=False)
    try:  # mmengine is imported only here: the converter itself needs no mm* package
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError:  # pragma: no cover - mmengine is part of the normal install
        loader = lambda p, m: torch.load(p, map_location=m)  # noqa: E731
    else:
        loader = CheckpointLoader.load_checkpoint
    try:
        return loader(path, map_location)
    except pickle.UnpicklingError as err:
        raise RedetConversionError(
            f"{path} holds Python objects besides tensors and torch's safe (weights_only) loading refused it. If you "
            f"trust the file, load it with trusted=True (tools/convert_redet_checkpoint.py --trusted).") from err


def unwrap_state_dict(checkpoint: dict) -> dict:
    """The state dict inside a checkpoint (``state_dict`` / ``model`` wrappers, ``module.`` prefix removed)."""
    if not isinstance(checkpoint, dict):
        raise RedetConversionError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    sd = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(sd.get(wrapper), dict) and not torch.is_tensor(sd.get(wrapper)):
            sd = sd[wrapper]
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = sub_state_dict(sd, "module.")
    return sd


def sub_state_dict(state_dict: dict, prefix: str) -> "OrderedDict[str, torch.Tensor]":
    """The entries of ``state_dict`` under ``prefix`` (e.g. ``'backbone.'``), with the prefix removed."""
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))


def _looks_like_redet_backbone(sd: dict, prefix: str) -> bool:
    return (f"{prefix}conv1.weights" in sd or f"{prefix}conv1.filter" in sd
            or any(k.startswith(prefix) and ".batch_norm_[" in k for k in sd))


def _looks_like_redet_neck(sd: dict, prefix: str) -> bool:
    # ReFPN's keys have the same form as EquivariantFPN's (both wrap an R2Conv in ``.conv``): a neck counts as
    # ReDet's only next to a ReDet backbone.
    return any(re.match(re.escape(prefix) + r"(lateral|fpn)_convs\.\d+\.conv\.(weights|filter)$", k) for k in sd)


def _detect_parts(sd: dict, prefix: Optional[str]) -> Dict[str, str]:
    """{'backbone': prefix, 'neck': 'neck.'} of the ReDet parts of ``sd`` (backbone under ``prefix``, else under
    ``backbone.`` in a detector state dict, else bare)."""
    if prefix is None:
        prefix = "backbone." if any(k.startswith("backbone.") for k in sd) else ""
    if not _looks_like_redet_backbone(sd, prefix):
        return {}
    parts = {"backbone": prefix}
    if prefix and _looks_like_redet_neck(sd, "neck."):
        parts["neck"] = "neck."
    return parts


def is_redet_state_dict(state_dict: dict, prefix: Optional[str] = None) -> bool:
    """Whether ``state_dict`` (or a checkpoint dict) holds an e2cnn ReDet backbone (``conv1.weights``,
    ``batch_norm_[N]`` keys; under ``prefix`` or ``backbone.`` or bare) or ReFPN neck."""
    sd = unwrap_state_dict(state_dict)
    return bool(_detect_parts(sd, prefix))


# -------------------------------------------------------------------------------------------- block basis maps
def _group_of(gspace) -> Tuple[int, bool]:
    """``(orientation, flip)`` of an escnn gspace made by :func:`~rotplugin.nn.make_gspace`."""
    flip = gspace.flips_order > 0
    return (gspace.fibergroup.rotation_order if flip else gspace.fibergroup.order()), flip


def _field_role(gspace, rep) -> str:
    if rep == gspace.regular_repr:
        return "regular"
    if rep == gspace.trivial_repr:
        return "trivial"
    raise NotImplementedError(f"ReDet conversion handles regular and trivial fields only, got {rep.name}")


def _unit_expansions(expand, dim: int) -> torch.Tensor:
    """(numel of one block filter, dim) matrix whose column j is the filter expanded from the unit vector e_j."""
    cols = []
    for j in range(dim):
        w = torch.zeros(dim)
        w[j] = 1.0
        cols.append(expand(w).detach().double().reshape(-1))
    return torch.stack(cols, 1)


_ESCNN_BLOCKS: dict = {}
_E2CNN_BLOCKS: dict = {}


def _escnn_block(orientation: int, flip: bool, roles: Tuple[str, str], kernel_size: int, dilation: int):
    """(basis matrix, bias expansion or None) of a one-field-to-one-field FieldConv."""
    key = (orientation, flip, roles, kernel_size, dilation)
    if key not in _ESCNN_BLOCKS:
        gs = make_gspace(orientation, flip)
        reps = {"regular": gs.regular_repr, "trivial": gs.trivial_repr}
        conv = FieldConv(enn.FieldType(gs, [reps[roles[0]]]), enn.FieldType(gs, [reps[roles[1]]]), kernel_size,
                         dilation=dilation, bias=True).conv
        basis = _unit_expansions(lambda w: conv.basisexpansion(w), conv.weights.numel())
        bias = conv.bias_expansion.detach().double().clone() if conv.bias is not None else None
        _ESCNN_BLOCKS[key] = (basis, bias)
    return _ESCNN_BLOCKS[key]


def _import_e2cnn():
    try:  # e2cnn is an optional extra, needed only for coefficients in its basis
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from e2cnn import gspaces as e2_gspaces
            from e2cnn import nn as e2_nn
    except ImportError as err:
        raise ImportError(
            "converting the basis coefficients (`weights`) of an e2cnn ReDet checkpoint needs e2cnn, an optional "
            "extra of rotplugin: pip install 'rotplugin[redet]' (e2cnn==0.2.3). Checkpoints saved in eval mode can "
            "be converted without it from their expanded `filter` buffers.") from err
    return e2_gspaces, e2_nn


def _e2cnn_cutoff(r):
    return 3 * r  # ReDet's frequencies_cutoff (mmrotate/models/utils/enn.py)


def _e2cnn_block(orientation: int, flip: bool, roles: Tuple[str, str], kernel_size: int, dilation: int):
    """(basis matrix, bias expansion or None) of a one-field-to-one-field e2cnn R2Conv built like ReDet's ennConv."""
    key = (orientation, flip, roles, kernel_size, dilation)
    if key not in _E2CNN_BLOCKS:
        e2_gspaces, e2_nn = _import_e2cnn()
        gs = e2_gspaces.FlipRot2dOnR2(orientation) if flip else e2_gspaces.Rot2dOnR2(orientation)
        reps = {"regular": gs.regular_repr, "trivial": gs.trivial_repr}
        conv = e2_nn.R2Conv(e2_nn.FieldType(gs, [reps[roles[0]]]), e2_nn.FieldType(gs, [reps[roles[1]]]),
                            kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=True,
                            sigma=None, frequencies_cutoff=_e2cnn_cutoff, initialize=False)
        basis = _unit_expansions(lambda w: conv.basisexpansion(w), conv.weights.numel())
        bias = conv.bias_expansion.detach().double().clone() if conv.bias is not None else None
        _E2CNN_BLOCKS[key] = (basis, bias)
    return _E2CNN_BLOCKS[key]


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """Least-squares ``x`` with ``a @ x ≈ b`` and the relative residual ``||a x - b|| / ||b||``."""
    x = torch.linalg.lstsq(a, b, driver="gelsd").solution
    return x, float((a @ x - b).norm() / b.norm().clamp_min(1e-300))


_MAPS: dict = {}


def block_basis_map(orientation: int, flip: bool, roles: Tuple[str, str], kernel_size: int, dilation: int = 1):
    """Coefficient maps from e2cnn's to escnn's block basis: ``dict(T, basis_residual, Tb, bias_residual,
    B_e2cnn, B_escnn, E_e2cnn, E_escnn)`` with ``B_escnn @ T ≈ B_e2cnn`` and ``E_escnn @ Tb ≈ E_e2cnn``."""
    key = (orientation, flip, roles, kernel_size, dilation)
    if key not in _MAPS:
        b2, e2 = _e2cnn_block(*key)
        b3, e3 = _escnn_block(*key)
        t, res = _lstsq(b3, b2)
        tb, bres = (None, None) if e2 is None or e3 is None else _lstsq(e3, e2)
        _MAPS[key] = dict(T=t, basis_residual=res, Tb=tb, bias_residual=bres, B_e2cnn=b2, B_escnn=b3, E_e2cnn=e2,
                          E_escnn=e3)
    return _MAPS[key]


# ------------------------------------------------------------------------------------------- layer conversion
def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-300))


def _blocks_to_dense(blocks: torch.Tensor, n_out, n_in, o, i, k) -> torch.Tensor:
    """(n_out, n_in, o*i*k*k) per-block filters -> dense (n_out*o, n_in*i, k, k) filter."""
    return blocks.reshape(n_out, n_in, o, i, k, k).permute(0, 2, 1, 3, 4, 5).reshape(n_out * o, n_in * i, k, k)


def _dense_to_blocks(dense: torch.Tensor, n_out, n_in, o, i, k) -> torch.Tensor:
    return dense.reshape(n_out, o, n_in, i, k, k).permute(0, 2, 1, 3, 4, 5).reshape(n_out, n_in, o * i * k * k)


class _Problems:
    def __init__(self):
        self.missing: List[str] = []
        self.unexpected: List[str] = []
        self.shape: List[str] = []

    def __bool__(self):
        return bool(self.missing or self.unexpected or self.shape)

    def message(self, what: str, hint: str = "") -> str:
        def listing(title, items):
            if not items:
                return ""
            more = f"\n    ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:_LIST_LIMIT]) + more

        return (f"the ReDet checkpoint does not match {what}:"
                + listing("missing keys", self.missing) + listing("unexpected keys", self.unexpected)
                + listing("shape mismatches", self.shape) + (f"\n  {hint}" if hint else ""))


def _convert_conv(fc, src: dict, q: str, used: set, problems: _Problems, rep: LayerReport) -> Optional[dict]:
    """Convert the e2cnn R2Conv with keys ``q*`` of ``src`` to the coefficients of FieldConv ``fc`` (the group is
    the one of ``fc``'s field types)."""
    gs = fc.in_type.gspace
    orientation, flip = _group_of(gs)
    in_reps, out_reps = set(fc.in_type.representations), set(fc.out_type.representations)
    if len(in_reps) != 1 or len(out_reps) != 1:
        raise NotImplementedError("ReDet conversion handles convolutions between single-representation field types")
    roles = (_field_role(gs, fc.in_type.representations[0]), _field_role(gs, fc.out_type.representations[0]))
    n_in, n_out = len(fc.in_type), len(fc.out_type)
    i_size, o_size = fc.in_type.representations[0].size, fc.out_type.representations[0].size
    k = fc.kernel_size
    conv = fc.conv
    has_bias = conv.bias is not None
    w2, f2 = src.get(q + "weights"), src.get(q + "filter")
    b2, eb2 = src.get(q + "bias"), src.get(q + "expanded_bias")
    for name in ("weights", "filter", "bias", "expanded_bias", "bias_expansion"):
        if q + name in src:
            used.add(q + name)
    used.update(key for key in src if key.startswith(q + "_basisexpansion."))
    if not has_bias:  # a bias in the checkpoint but not in the target is an architecture mismatch
        for name in ("bias", "expanded_bias", "bias_expansion"):
            used.discard(q + name)
    if f2 is not None and not f2.abs().any() and w2 is not None:
        f2 = None  # the zero buffer e2cnn registers at construction: not an expansion of the weights
    filter_shape = (n_out * o_size, n_in * i_size, k, k)
    if f2 is not None and tuple(f2.shape) != filter_shape:
        problems.shape.append(f"{q}filter: {tuple(f2.shape)} in the checkpoint, expected {filter_shape}")
        return None
    if w2 is None and f2 is None:
        problems.missing.append(q + "weights")
        return None
    if has_bias and b2 is None and eb2 is None:
        problems.missing.append(q + "bias")
        return None
    out = {}
    if w2 is not None:  # coefficients in e2cnn's basis -> escnn's basis
        m = block_basis_map(orientation, flip, roles, k, fc.dilation)
        d2 = m["T"].shape[1]
        if w2.dim() != 1 or w2.numel() != n_out * n_in * d2:
            problems.shape.append(f"{q}weights: {tuple(w2.shape)} in the checkpoint, expected ({n_out * n_in * d2},) "
                                  f"= {n_out} x {n_in} fields x {d2} basis filters")
            return None
        rep.mode, rep.basis_residual = "weights", m["basis_residual"]
        w2b = w2.double().reshape(n_out, n_in, d2)
        w3 = (w2b @ m["T"].T).reshape(-1)
        reference = _blocks_to_dense(w2b @ m["B_e2cnn"].T, n_out, n_in, o_size, i_size, k)
    else:  # only the dense filter (eval-mode buffer): project it onto escnn's basis
        b3_basis = _escnn_block(orientation, flip, roles, k, fc.dilation)[0]
        blocks = _dense_to_blocks(f2.double(), n_out, n_in, o_size, i_size, k)
        coef, _ = _lstsq(b3_basis, blocks.reshape(n_out * n_in, -1).T)
        rep.mode = "filter"
        w3 = coef.T.reshape(-1)
        reference = f2.double()
    out["weights"] = w3.to(conv.weights.dtype)
    with torch.no_grad():
        f3 = conv.basisexpansion(out["weights"]).reshape(filter_shape)
    out["filter"] = f3
    rep.filter_residual = _rel(f3, reference)
    if f2 is not None and w2 is not None:
        rep.checkpoint_filter_check = _rel(f3, f2)
    if has_bias:
        t = conv.bias.numel() // n_out
        if b2 is not None:
            m = block_basis_map(orientation, flip, roles, k, fc.dilation)
            if b2.dim() != 1 or b2.numel() != conv.bias.numel() or m["Tb"] is None:
                problems.shape.append(f"{q}bias: {tuple(b2.shape)} in the checkpoint, expected "
                                      f"{tuple(conv.bias.shape)}")
                return None
            b2b = b2.double().reshape(n_out, t)
            b3 = (b2b @ m["Tb"].T).reshape(-1)
            ref_bias = (b2b @ m["E_e2cnn"].T).reshape(-1)
        else:
            if eb2.numel() != n_out * o_size:
                problems.shape.append(f"{q}expanded_bias: {tuple(eb2.shape)} in the checkpoint, expected "
                                      f"({n_out * o_size},)")
                return None
            e3 = _escnn_block(orientation, flip, roles, k, fc.dilation)[1]
            coef, _ = _lstsq(e3, eb2.double().reshape(n_out, o_size).T)
            b3 = coef.T.reshape(-1)
            ref_bias = eb2.double()
        out["bias"] = b3.to(conv.bias.dtype)
        out["expanded_bias"] = (conv.bias_expansion @ out["bias"]).detach()
        rep.bias_residual = _rel(out["expanded_bias"], ref_bias)
        if eb2 is not None and b2 is not None and rep.checkpoint_filter_check is not None:
            rep.checkpoint_filter_check = max(rep.checkpoint_filter_check, _rel(out["expanded_bias"], eb2))
    return out


def _convert_bn(bn, src: dict, q: str, used: set, problems: _Problems) -> Optional[dict]:
    out = {}
    for name in _BN_KEYS:
        key = q + name
        if key not in src:
            problems.missing.append(key)
            continue
        used.add(key)
        value = src[key]
        own = getattr(bn, name)
        if tuple(value.shape) != tuple(own.shape):
            problems.shape.append(f"{key}: {tuple(value.shape)} in the checkpoint, expected {tuple(own.shape)}")
            continue
        out[name] = value.detach().clone().to(own.dtype)
    return out if len(out) == len(_BN_KEYS) else None


def _source_name(kind: str, path: str, module) -> str:
    """ReDet key prefix of the layer at ``path`` of our module (``kind`` 'backbone' or 'neck')."""
    if isinstance(module, FieldConv):
        return f"{path}.conv." if kind == "neck" else f"{path}."
    parts = path.split(".")
    parts[-1] = re.sub(r"^norm(\d*)$", r"bn\1", parts[-1])
    return ".".join(parts) + f".batch_norm_[{module.field_size}]."


def _convert_part(kind: str, src: dict, target: nn.Module, report: ConversionReport, prefix: str,
                  arch_hint: Optional[Callable[[], str]] = None) -> Dict[str, torch.Tensor]:
    """Convert the ReDet ``kind`` ('backbone' / 'neck') keys ``src`` (found under ``prefix``) into ``target``."""
    template = target.state_dict()
    converted: Dict[str, torch.Tensor] = {}
    used: set = set()
    problems = _Problems()
    layers = []
    for path, module in target.named_modules():
        if isinstance(module, FieldConv):
            q = _source_name(kind, path, module)
            rep = LayerReport(prefix + path, prefix + q[:-1], "conv")
            out = _convert_conv(module, src, q, used, problems, rep)
            if out is not None:
                for name, value in out.items():
                    converted[f"{path}.conv.{name}"] = value
                layers.append(rep)
        elif isinstance(module, FieldBatchNorm):
            q = _source_name(kind, path, module)
            used.update(key for key in src if key.startswith(q.split(".batch_norm_[")[0] + ".indices_"))
            out = _convert_bn(module.bn, src, q, used, problems)
            if out is not None:
                for name, value in out.items():
                    converted[f"{path}.bn.{name}"] = value
                layers.append(LayerReport(prefix + path, prefix + q[:-1], "bn"))
    problems.unexpected.extend(sorted(k for k in src if k not in used))
    if problems:
        problems.missing = [prefix + k for k in problems.missing]
        problems.unexpected = [prefix + k for k in problems.unexpected]
        problems.shape = [prefix + k for k in problems.shape]
        arch = report.architecture.get(kind, {})
        what = f"{type(target).__name__}({', '.join(f'{k}={v!r}' for k, v in arch.items())})"
        raise RedetConversionError(problems.message(what, arch_hint() if arch_hint else ""))
    report.layers.extend(layers)
    report.ignored.extend(prefix + k for k in src if k.endswith(("bias_expansion",)) or "._basisexpansion." in k
                          or ".indices_" in k)
    result = OrderedDict()
    for key, value in template.items():
        # escnn's own buffers (sampled bases, bias expansion) come from the target; the rest was converted
        result[key] = converted.get(key, value)
    for key in converted:  # the eval-mode caches (filter, expanded_bias) of a target in train mode
        if key not in template:
            result[key] = converted[key]
    return result


# ------------------------------------------------------------------------------------------ architecture inference
# mmrotate's ReResNet: depth -> (bottleneck blocks, blocks per stage)
_RERESNET_STAGES = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
                    101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
_BACKBONE_REQUIRED = ("depth", "orientation", "stem_channels", "base_channels", "num_stages")
# attributes of a given target module recorded in the report's architecture
_MODULE_ARCH = {"backbone": ("depth", "in_channels", "out_channels"),
                "neck": ("in_channels", "out_channels", "num_outs", "start_level", "add_extra_convs", "upsample_mode")}


def _width(src: dict, conv: str, bn: str, field_size: int) -> Optional[int]:
    """Output channels of the ReDet convolution ``conv``: from its InnerBatchNorm ``bn`` (one statistic per field of
    ``field_size`` channels), else from the shape of its eval-mode ``filter`` buffer."""
    for name in ("running_mean", "weight"):
        value = src.get(f"{bn}.batch_norm_[{field_size}].{name}")
        if torch.is_tensor(value):
            return value.numel() * field_size
    filt = src.get(f"{conv}.filter")
    return int(filt.shape[0]) if torch.is_tensor(filt) and filt.dim() == 4 else None


def _stem_in_channels(src: dict, field_size: int, stem_channels: Optional[int]) -> Optional[int]:
    """Input channels of the 7x7 stem convolution (trivial -> regular fields of C_N, N = ``field_size``): from the
    shape of its ``filter`` buffer, else from its number of coefficients."""
    filt, weights = src.get("conv1.filter"), src.get("conv1.weights")
    if torch.is_tensor(filt) and filt.dim() == 4:
        return int(filt.shape[1])
    if torch.is_tensor(weights) and stem_channels:
        dim = _escnn_block(field_size, False, ("trivial", "regular"), 7, 1)[0].shape[1]
        n_in, rest = divmod(weights.numel(), stem_channels // field_size * dim)
        return n_in if n_in and not rest else None
    return None


def _backbone_facts(src: dict) -> Dict[str, Tuple[list, str]]:
    """What a ReResNet state dict (keys relative to the backbone) tells of each EquivariantResNet argument:
    ``{argument: (the values it allows, what the checkpoint has)}``. Several depths are allowed only when there are
    fewer than 4 stages (e.g. 50 and 101 with 2: they build the same modules); none when the blocks per stage are
    no ReResNet's. Arguments the keys do not tell are left out."""
    blocks = [0] * 4
    for key in src:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            blocks[int(m.group(1)) - 1] = max(blocks[int(m.group(1)) - 1], int(m.group(2)) + 1)
    num_stages = blocks.index(0) if 0 in blocks else 4
    blocks = blocks[:num_stages]
    bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in src)
    depths = [d for d, (bn, stages) in _RERESNET_STAGES.items()
              if bn == bottleneck and stages[:num_stages] == tuple(blocks)]
    facts = {}
    if num_stages:
        facts["depth"] = (depths, f"{blocks} {'bottleneck' if bottleneck else 'basic'} blocks per stage"
                                  + (f" (ReResNet depth {' or '.join(map(str, depths))})" if depths else
                                     ", which no ReResNet depth has"))
        facts["num_stages"] = ([num_stages], f"{num_stages} stages (layer1..layer{num_stages})")
    sizes = {int(m.group(1)) for k in src for m in [re.search(r"\.batch_norm_\[(\d+)\]\.", k)] if m}
    stem = [int(m.group(1)) for k in src for m in [re.match(r"bn1\.batch_norm_\[(\d+)\]\.", k)] if m]
    size = stem[0] if stem else min(sizes) if len(sizes) == 1 else None
    if size is None:
        return facts
    stem_channels = _width(src, "conv1", "bn1", size)
    base_channels = _width(src, "layer1.0.conv1", "layer1.0.bn1", size)
    in_channels = _stem_in_channels(src, size, stem_channels)
    # mmrotate's ReResNet is built on C_N only (its enn.py): fields of N channels
    facts["orientation"] = ([size], f"regular fields of {size} channels (C{size})")
    if stem_channels:
        facts["stem_channels"] = ([stem_channels], f"{stem_channels} stem channels (conv1 / bn1)")
    if base_channels:
        facts["base_channels"] = ([base_channels], f"{base_channels} base channels (layer1.0.conv1 / bn1)")
    if in_channels:
        facts["in_channels"] = ([in_channels], f"{in_channels} input channels (conv1)")
    return facts


def _describe_backbone(src: dict) -> str:
    facts = _backbone_facts(src)
    has = [facts[name][1] for name in ("depth", "orientation") if name in facts]
    return f"the checkpoint's backbone has {', '.join(has) or 'no ReResNet stages'}"


def _backbone_arguments(src: dict, given: dict, check: bool) -> dict:
    """EquivariantResNet arguments of a ReResNet state dict: read off its keys, ``given`` on top (``None`` values
    ignored); with ``check``, a given value the checkpoint contradicts raises :class:`ArchitectureMismatch`."""
    facts = _backbone_facts(src)
    cfg = {name: values[0] for name, (values, _) in facts.items() if values}
    for name, value in given.items():
        if value is None:
            continue
        if check and name in facts and value not in facts[name][0]:
            raise ArchitectureMismatch(name, value, facts[name][1])
        cfg[name] = value
    missing = [name for name in _BACKBONE_REQUIRED if name not in cfg]
    if missing:
        raise RedetConversionError(f"cannot infer {', '.join(missing)} of the backbone from the checkpoint "
                                   f"({_describe_backbone(src)}); give them (backbone_cfg=dict(...))")
    cfg.setdefault("flip", False)
    cfg.setdefault("out_indices", tuple(range(cfg["num_stages"])))
    return cfg


def _backbone_out_channels(cfg: dict) -> List[int]:
    expansion = 1 if cfg["depth"] in (18, 34) else 4
    return [cfg["base_channels"] * 2 ** i * expansion for i in range(cfg["num_stages"])]


def _infer_neck_cfg(src: dict, in_channels: Sequence[int], orientation: int, flip: bool) -> dict:
    """EquivariantFPN arguments of a ReFPN state dict (keys relative to the neck)."""
    group = orientation * (2 if flip else 1)
    lat = sorted({int(m.group(1)) for k in src for m in [re.match(r"lateral_convs\.(\d+)\.", k)] if m})
    fpn = sorted({int(m.group(1)) for k in src for m in [re.match(r"fpn_convs\.(\d+)\.", k)] if m})
    if not lat:
        raise RedetConversionError("the ReFPN part has no lateral_convs.* keys")
    n_lat, n_fpn = len(lat), len(fpn)

    def out_channels_of(i):
        p = f"lateral_convs.{i}.conv."
        if p + "bias" in src:
            return src[p + "bias"].numel() * group
        if p + "filter" in src:
            return src[p + "filter"].shape[0]
        if p + "expanded_bias" in src:
            return src[p + "expanded_bias"].numel()
        raise RedetConversionError(f"cannot infer the ReFPN width: no {p}bias / filter / expanded_bias")

    out_channels = out_channels_of(lat[0])
    start_level = len(in_channels) - n_lat
    if start_level < 0:
        raise RedetConversionError(f"the ReFPN part has {n_lat} lateral convolutions but the backbone only "
                                   f"{len(in_channels)} outputs")
    cfg = dict(in_channels=list(in_channels), out_channels=out_channels, start_level=start_level,
               num_outs=max(n_lat, 5), upsample_mode="nearest")
    extra = n_fpn - n_lat
    if extra > 0:
        first = f"fpn_convs.{n_lat}.conv."
        n_in_fields = None
        if first + "filter" in src:
            n_in_fields = src[first + "filter"].shape[1] // group
        elif first + "weights" in src:
            n_in_fields = src[first + "weights"].numel() // (out_channels // group) // _reg_reg_3x3_dim(orientation,
                                                                                                    flip)
        on_input = n_in_fields is not None and n_in_fields * group == in_channels[-1] != out_channels
        cfg.update(add_extra_convs="on_input" if on_input else "on_output", num_outs=n_fpn)
    return cfg


def _reg_reg_3x3_dim(orientation: int, flip: bool) -> int:
    return _escnn_block(orientation, flip, ("regular", "regular"), 3, 1)[0].shape[1]


def _find_parts(sd: dict, prefix: Optional[str], parts: Sequence[str]) -> Dict[str, str]:
    """All ReDet parts of ``sd`` (see :func:`_detect_parts`); raises unless one of ``parts`` is among them."""
    detected = _detect_parts(sd, prefix)
    if not any(k in parts for k in detected):
        first = ", ".join(list(sd)[:8])
        ours = any(k.endswith("conv1.conv.weights") for k in sd)
        hint = (" It looks like a rotplugin (escnn) checkpoint already." if ours else
                " A ReDet backbone has e2cnn keys like 'conv1.weights' and 'bn1.batch_norm_[8].weight'.")
        raise RedetConversionError(f"not an e2cnn ReDet checkpoint (no ReResNet / ReFPN keys"
                                   f"{' under ' + repr(prefix) if prefix else ''}); first keys: {first}.{hint}")
    return detected


def _module_group(module: nn.Module) -> Tuple[int, bool]:
    """``(orientation, flip)`` of the group of a module's first FieldConv."""
    fc = next((m for m in module.modules() if isinstance(m, FieldConv)), None)
    if fc is None:
        raise RedetConversionError(f"the target {type(module).__name__} has no FieldConv")
    return _group_of(fc.in_type.gspace)


Target = Union[nn.Module, Callable[..., nn.Module]]


def _target(kind: str, given: Optional[Target], arguments: Callable[[], dict]) -> Tuple[nn.Module, dict]:
    """The target module of part ``kind`` and its architecture: ``given`` itself when it is a module, else
    ``given(**arguments())``."""
    if isinstance(given, nn.Module):
        orientation, flip = _module_group(given)
        arch = {name: getattr(given, name) for name in _MODULE_ARCH[kind] if hasattr(given, name)}
        return given, dict(arch, orientation=orientation, flip=flip)
    if given is None or isinstance(given, dict) or not callable(given):
        example = "EquivariantResNet" if kind == "backbone" else "EquivariantFPN"
        raise TypeError(f"the checkpoint holds a ReDet {kind}: pass {kind}= the target module, or a factory that "
                        f"builds it from its architecture (e.g. rotplugin.models.{example}), or leave {kind!r} out "
                        f"of parts" + (f"; {kind} arguments go in {kind}_cfg" if isinstance(given, dict) else ""))
    arch = arguments()
    return given(**arch), arch


# ------------------------------------------------------------------------------------------------ public API
def infer_redet_architecture(state_dict: dict, prefix: Optional[str] = None,
                             parts: Sequence[str] = ("backbone", "neck"), **given) -> Dict[str, dict]:
    """The architecture of the ReDet parts of a checkpoint, read off its keys and shapes.

    Returns ``{'backbone': EquivariantResNet arguments, 'neck': EquivariantFPN arguments}`` for the parts found among
    ``parts``: the backbone's ``depth`` (blocks per stage, basic or bottleneck), ``orientation`` (the field size of
    the batch norms; ``flip=False``: mmrotate's ReResNet is built on C_N only), ``in_channels``, ``stem_channels``,
    ``base_channels``, ``num_stages`` and ``out_indices`` (all stages); the neck's as :func:`convert_redet_state_dict`
    builds it (widths, levels, extra convolutions, ``upsample_mode='nearest'``).

    ``given``: backbone arguments the caller insists on (e.g. command-line flags; ``None`` values are ignored). Each
    must agree with the checkpoint, else :class:`ArchitectureMismatch` names it and says what the checkpoint has; a
    value the checkpoint does not tell is taken as given, and ``depth`` chooses among the depths a checkpoint with
    fewer than 4 stages leaves open.

    Raises:
        RedetConversionError: not a ReDet checkpoint, or an argument can be neither inferred nor is given.
    """
    sd = unwrap_state_dict(state_dict)
    detected = _find_parts(sd, prefix, parts)
    backbone = _backbone_arguments(sub_state_dict(sd, detected["backbone"]), given, check=True)
    out = {"backbone": backbone} if "backbone" in parts else {}
    if "neck" in detected and "neck" in parts:
        out["neck"] = dict(_infer_neck_cfg(sub_state_dict(sd, detected["neck"]), _backbone_out_channels(backbone),
                                           backbone["orientation"], backbone["flip"]),
                           orientation=backbone["orientation"], flip=backbone["flip"])
    return out


def convert_redet_state_dict(state_dict: dict, backbone: Optional[Target] = None, neck: Optional[Target] = None, *,
                             backbone_cfg: Optional[dict] = None, neck_cfg: Optional[dict] = None,
                             prefix: Optional[str] = None, parts: Sequence[str] = ("backbone", "neck")
                             ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Convert a ReDet (e2cnn ``ReResNet`` / ``ReFPN``) state dict to rotplugin's escnn modules.

    The converter needs only the target modules' layers (:class:`~rotplugin.nn.FieldConv`,
    :class:`~rotplugin.nn.FieldBatchNorm`): the caller gives each target, built or as a factory.

    Args:
        state_dict: a state dict or a checkpoint dict (``state_dict`` / ``meta`` wrapper): a bare ReResNet state dict,
            or a detector's with ``backbone.`` / ``neck.`` keys. Other keys pass through unchanged.
        backbone, neck: the target of each part: a built module (e.g. an ``EquivariantResNet`` /
            ``EquivariantFPN``; the conversion follows its architecture and group), or a factory (e.g. the class
            ``rotplugin.models.EquivariantResNet`` / ``EquivariantFPN``) called with the architecture's keyword
            arguments (:func:`infer_redet_architecture`, ``backbone_cfg`` / ``neck_cfg`` on top). Needed for each
            part found among ``parts``.
        backbone_cfg: ``EquivariantResNet`` arguments that replace the inferred ones (not checked against the
            checkpoint: a wrong architecture is reported key by key, see Raises).
        neck_cfg: ``EquivariantFPN`` arguments that replace the inferred ones (the group is always the backbone's).
        prefix: key prefix of the backbone (e.g. ``'backbone.'``); auto-detected when ``None`` (``'backbone.'`` when
            such keys exist, else a bare ReResNet state dict). Next to a prefixed backbone a ReFPN under ``neck.`` is
            converted too.
        parts: which parts to convert (``'backbone'``, ``'neck'``); keys of the other parts pass through.

    Returns:
        ``(new_state_dict, report)``: the converted state dict (same key layout as the input, the backbone / neck keys
        replaced by those of the targets) and a :class:`ConversionReport`.

    Raises:
        RedetConversionError: not a ReDet checkpoint, or missing / unexpected / mis-shaped keys (listed).
        TypeError: a part to convert has no target.
        ImportError: ``weights`` have to be converted and e2cnn is not installed.
    """
    sd = unwrap_state_dict(state_dict)
    detected = _find_parts(sd, prefix, parts)
    found = {k: v for k, v in detected.items() if k in parts}
    report = ConversionReport(parts=dict(found))
    backbone_src = sub_state_dict(sd, detected["backbone"])
    inferred: dict = {}

    def backbone_arguments() -> dict:
        if not inferred:
            inferred.update(_backbone_arguments(backbone_src, backbone_cfg or {}, check=False))
        return inferred

    converted_parts = {}
    if "backbone" in found:
        module, report.architecture["backbone"] = _target("backbone", backbone, backbone_arguments)
        converted_parts["backbone"] = _convert_part("backbone", backbone_src, module, report, found["backbone"],
                                                    lambda: _describe_backbone(backbone_src))
    if "neck" in found:
        neck_src = sub_state_dict(sd, found["neck"])

        def neck_arguments() -> dict:
            in_channels = (neck_cfg or {}).get("in_channels")
            if isinstance(backbone, nn.Module):
                orientation, flip = _module_group(backbone)
                outs = list(getattr(backbone, "out_channels", []))
                if in_channels is None and len(outs) == len(getattr(backbone, "res_layers", ())):
                    in_channels = outs
            else:
                orientation, flip = backbone_arguments()["orientation"], backbone_arguments()["flip"]
            if in_channels is None:
                in_channels = _backbone_out_channels(backbone_arguments())
            cfg = _infer_neck_cfg(neck_src, in_channels, orientation, flip)
            cfg.update(neck_cfg or {})
            cfg.update(orientation=orientation, flip=flip)
            return cfg

        module, report.architecture["neck"] = _target("neck", neck, neck_arguments)
        converted_parts["neck"] = _convert_part("neck", neck_src, module, report, found["neck"])

    out = OrderedDict()
    for key, value in sd.items():
        if any(key.startswith(found[part]) for part in converted_parts):
            continue
        out[key] = value
        report.passthrough.append(key)
    for part, converted in converted_parts.items():
        for key, value in converted.items():
            out[found[part] + key] = value
    return out, report


def convert_redet_checkpoint(src: str, dst: Optional[str] = None, trusted: bool = False, *,
                             checkpoint: Optional[dict] = None, **kwargs) -> Tuple[dict, ConversionReport]:
    """Convert the checkpoint file ``src`` (see :func:`convert_redet_state_dict` for ``kwargs``, and
    :func:`load_checkpoint_file` for ``trusted``; ``checkpoint``: ``src`` already loaded) and save it to ``dst``
    when given. The ``meta`` of the checkpoint is kept (with the conversion summary under
    ``meta['rotplugin_redet_conversion']``); optimizer state, message hub and the like are dropped (an optimizer's
    moments would be in e2cnn's basis)."""
    if checkpoint is None:
        checkpoint = load_checkpoint_file(src, trusted=trusted)
    new_sd, report = convert_redet_state_dict(checkpoint, **kwargs)
    out = {"state_dict": new_sd}
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) and "state_dict" in checkpoint else None
    out["meta"] = dict(meta) if isinstance(meta, dict) else {}
    out["meta"]["rotplugin_redet_conversion"] = dict(report.summary(), source=str(src),
                                                     architecture=report.architecture)
    if dst is not None:
        torch.save(out, dst)
    return out, report
