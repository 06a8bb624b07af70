"""Passive rotation of escnn feature fields held in plain torch tensors (imports only torch, numpy, escnn).

Given the features ``F`` of an image ``I`` on a canvas, :func:`rotate_fields` returns the features of the image rotated
by an angle about the canvas centre, *without* running the network again: the map is resampled about the canvas
centre (spatial part) and every field's channels are mixed by its representation (fibre part).

Conventions
-----------
Pixel / feature coordinates ``(y, x)``, the feature grid of a stride, the canvas and its centre, the sign of angles,
the mirror and the point map of a rotation are those of :mod:`rotplugin.canvas` (positive = the direction of
``torch.rot90(x, 1, dims=(-2, -1))``, ``(y, x) -> (-x, y)`` relative to the centre for +90°). What this module
adds:

* **Channels.** The channels of a ``(B, C, h, w)`` tensor are the fields of an escnn ``FieldType`` in escnn's layout:
  field ``i`` occupies the ``field_type.representations[i].size`` consecutive channels after those of fields
  ``0..i-1`` and transforms by that representation.
* **Group elements.** An angle ``θ`` that is a multiple of ``360/N`` is the rotation ``r^k``, ``k = θN/360 mod N``:
  escnn's ``G.element(k)`` for ``C_N`` (``rot2dOnR2(N)``) and ``G.element((0, k))`` for ``D_N``
  (``flipRot2dOnR2(N)``). ``flip=True`` is ``G.element((1, k))``, which is ``r^k · m`` as an escnn product: the mirror
  ``m`` acts first, then the rotation. ``m`` is escnn's default reflection (axis ``π/2``, the vertical axis), which
  on the grid is ``x -> -x`` about the canvas centre, i.e. ``tensor.flip(-1)`` for a centred map.
* **Fibre action.** ``out[:, field i] = ρ_i(g) @ in[:, field i]`` at every pixel (escnn's
  ``f'(p) = ρ(g) f(g⁻¹p)``). On a map whose middle is the canvas centre, :func:`rotate_fields` at multiples of
  ``360/N`` that are multiples of 90° equals ``GeometricTensor(x, field_type).transform(element).tensor``
  (tests/test_fields.py checks this for every element of C4, C8, D4, D8 and field kind). For a regular field of
  ``C_N`` (channels ``f_0 .. f_{N-1}``, one per orientation) the rotation ``r^k`` is a cyclic shift of the channels by
  ``+k``: ``f'_j = f_{j-k mod N}`` (``torch.roll(f, k, dim=1)`` within the field).
* **Rotated canvas.** :func:`rotplugin.canvas.rotated_canvas_size` (odd quarter turns swap the map's ``h, w``); for
  other angles what leaves the canvas is lost (zeros come in).
* **Memory.** Exact quarter turns are index operations; odd ones return a transposed, non-contiguous tensor (as
  ``torch.rot90`` does) to save a copy. Results never alias the input. On CPU, without autograd, they are one pass
  of a small C row copier (``rotplugin._plane_copy``, built by setup.py; torch operations where it is absent).
* Also accepted: ``flip2dOnR2()`` (escnn's C2 acting by the mirror ``m``: N = 1, ``flip=True`` is its element 1) and
  ``trivialOnR2()`` (C1).
* **Edge cases.** Any finite angle (negative, several turns) is reduced modulo 360°; NaN / Inf angles raise
  ``ValueError``. An empty batch (``B = 0``) gives an empty batch of the rotated size; a map with a zero side raises
  ``ValueError``; a canvas need not be ``≡ 1 (mod stride)`` (the centre then lies between feature pixels and the
  map is interpolated, see :func:`rotate_grid`). NaN / Inf feature values are not checked: they propagate (to the
  interpolation neighbourhood, and across a field's channels for non-permutation fields).

Between two orientation steps ``ρ(θ)`` is not defined by the group; ``fibre_interp`` picks a rule (see
:func:`fibre_operator`). Public pieces: :func:`rotate_fields` (spatial + fibre), :func:`rotate_grid` (spatial only),
:func:`fibre_operator` (fibre only), :func:`rotate_pyramid` and :class:`FieldRotation`.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from escnn import gspaces
from escnn.group import CyclicGroup, DihedralGroup
from escnn.nn import FieldType

from .canvas import (_ANGLE_TOL, AngleLike, _batch_angles, _check_canvas, _check_stride, _feature_side, _quarter_turns,
                     _scalar_angle, rotated_canvas_size, rotation_matrix_and_offset)

try:        # optional (setup.py builds it): without it, exact quarter turns take torch's flip and index_select
    from . import _plane_copy
except ImportError:     # pragma: no cover - exercised by tests that hide it
    _plane_copy = None

__all__ = [
    "rotate_fields",
    "rotate_grid",
    "rotate_pyramid",
    "fibre_operator",
    "FibreOperator",
    "FieldRotation",
    "group_of",
    "FIBRE_INTERP_RULES",
]

FIBRE_INTERP_RULES = (None, "linear", "fourier")

_INT_TOL = 1e-9        # feature pixels: an offset this close to an integer counts as integral
_MAT_TOL = 1e-9        # matrix entries this close to 0 / ±1 are snapped
_CACHE_SIZE = 512
# Exact quarter turns of CPU tensors are one pass of the C row copier (rotplugin/csrc/plane_copy.c, built by
# setup.py) when it is built; it runs on up to torch.get_num_threads() threads, one per this many bytes of map.
_COPY_BYTES_PER_THREAD = 1 << 20


class _LRU(OrderedDict):
    """A tiny bounded dict (least recently used entries are dropped)."""

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def get_or(self, key, make):
        try:
            value = self[key]
            self.move_to_end(key)
            return value
        except KeyError:
            value = make()
            self[key] = value
            if len(self) > self.maxsize:
                self.popitem(last=False)
            return value


# ----------------------------------------------------------------------------------------------------------------
# field types: the group, and per-representation tables
# ----------------------------------------------------------------------------------------------------------------

def group_of(field_type) -> Tuple[int, bool]:
    """``(N, has_flips)`` of a field type on ``rot2dOnR2(N)``, ``flipRot2dOnR2(N)`` (finite N, default axis) or
    ``flip2dOnR2()`` / ``trivialOnR2()`` (N = 1)."""
    if not isinstance(field_type, FieldType):
        raise TypeError(f"field_type must be an escnn.nn.FieldType, got {type(field_type).__name__}")
    gs = field_type.gspace
    if not isinstance(gs, gspaces.GSpace2D):
        raise ValueError(f"field_type lives on gspace {gs.name!r}: only 2D gspaces (rot2dOnR2 / flipRot2dOnR2 "
                         f"with finite N) are supported")
    flip_id, n = gs._sg_id
    if not isinstance(gs.fibergroup, (CyclicGroup, DihedralGroup)) or n is None or int(n) < 1:
        raise ValueError(f"field_type lives on gspace {gs.name!r} with fibre group {gs.fibergroup.name!r}: only "
                         f"finite rotation groups (rot2dOnR2(N), flipRot2dOnR2(N), N >= 1) are supported, not "
                         f"continuous ones")
    if flip_id is not None and not math.isclose(float(flip_id) % (2 * math.pi), math.pi, abs_tol=1e-9):
        raise ValueError(f"field_type's gspace {gs.name!r} mirrors about a non-default axis "
                         f"(sg_id {gs._sg_id!r}); only escnn's default axis π/2 is supported")
    return int(n), flip_id is not None


def _group_element(group, n: int, flips: bool, f: int, k: int):
    """escnn's element ``r^k m^f`` (mirror first); for flip2dOnR2 (C2 acting by the mirror) it is ``m^f``."""
    if isinstance(group, DihedralGroup):
        return group.element((f, k))
    if flips:                       # flip-only gspace: the cyclic group C2 = {e, m}, n == 1
        return group.element(f)
    return group.element(k)


def _snap(m: np.ndarray) -> np.ndarray:
    """Entries within tolerance of 0 / ±1 set exactly (escnn's cos(π/2) is 6e-17, not 0)."""
    m = np.array(m, dtype=np.float64)
    for v in (0.0, 1.0, -1.0):
        m[np.abs(m - v) < _MAT_TOL] = v
    return m


def _signed_permutation(m: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``(index, sign)`` with ``m @ v == sign * v[index]`` when ``m`` is a signed permutation matrix, else None."""
    nz = m != 0
    if not (nz.sum(axis=1) == 1).all() or not (nz.sum(axis=0) == 1).all():
        return None
    idx = nz.argmax(axis=1)
    sign = m[np.arange(m.shape[0]), idx]
    if not np.isin(sign, (1.0, -1.0)).all():
        return None
    return idx, sign


class _RepTable:
    """Everything about one representation that the operators need, computed once from escnn.

    ``rho[f, k]``: ρ((f, k)) (flip f, rotation r^k), snapped. ``mirror``: ρ(m). ``rotation_perm``: every ρ(r^k) is a
    0/1 permutation (regular / quotient fields). ``Q, Qinv, irreps``: change of basis and the irreps as
    ``(dim, signed frequency)``: ψ(θ) = cos(kθ) (dim 1) or R(kθ) (dim 2) on rotations.
    ``needs_rule``: evaluating it between orientation steps is a choice (a non-trivial permutation representation,
    or a 1-D irrep of frequency N/2).
    """

    def __init__(self, rep, n: int, dihedral: bool):
        group = rep.group
        self.name = rep.name
        self.size = rep.size
        self.n = n
        flips = (0, 1) if dihedral else (0,)

        def element(f, k):
            return _group_element(group, n, dihedral, f, k)

        self.rho = np.stack([np.stack([_snap(rep(element(f, k))) for k in range(n)]) for f in flips])
        self.mirror = self.rho[1, 0] if dihedral else None
        eye = np.eye(self.size)
        self.rotation_perm = all(
            (p := _signed_permutation(r)) is not None and (p[1] > 0).all() for r in self.rho[0])
        rotation_trivial = all(np.array_equal(r, eye) for r in self.rho[0])

        self.Q = np.asarray(rep.change_of_basis, dtype=np.float64)
        self.Qinv = np.asarray(rep.change_of_basis_inv, dtype=np.float64)
        self.irreps: List[Tuple[int, float]] = []
        r1 = element(0, 1 % n) if n > 1 else None
        half = False
        for irrep_id in rep.irreps:
            psi = group.irrep(*irrep_id)
            if n == 1:
                # C1 / D1: rotations are trivial
                self.irreps.append((psi.size, 0.0))
                continue
            m = np.asarray(psi(r1), dtype=np.float64)
            if psi.size == 1:
                if abs(m[0, 0] - 1.0) < 1e-6:
                    self.irreps.append((1, 0.0))
                elif abs(m[0, 0] + 1.0) < 1e-6:
                    self.irreps.append((1, n / 2.0))
                    half = True
                else:
                    raise ValueError(f"irrep {psi.name!r} of {group.name} is 1-D with ψ(r) = {m[0, 0]}")
            elif psi.size == 2:
                alpha = math.atan2(m[1, 0], m[0, 0])
                self.irreps.append((2, float(round(alpha * n / (2 * math.pi)))))
            else:
                raise ValueError(f"irrep {psi.name!r} of {group.name} has size {psi.size}")
        # the continuous extension must reproduce escnn at every multiple of 360/N
        for k in range(n):
            ext = self.fourier(2 * math.pi * k / n)
            if not np.allclose(ext, self.rho[0, k], atol=1e-8):
                raise AssertionError(f"internal: Fourier extension of {self.name!r} disagrees with escnn at r^{k}")
        self.needs_rule = half or (self.rotation_perm and not rotation_trivial)

    def fourier(self, theta: float) -> np.ndarray:
        """Band-limited ρ(rotation by ``theta`` radians) = Q (⊕ ψ_i(θ)) Q⁻¹."""
        blocks = np.zeros((self.size, self.size))
        i = 0
        for dim, k in self.irreps:
            if dim == 1:
                blocks[i, i] = math.cos(k * theta)
            else:
                c, s = math.cos(k * theta), math.sin(k * theta)
                blocks[i:i + 2, i:i + 2] = [[c, -s], [s, c]]
            i += dim
        return self.Q @ blocks @ self.Qinv

    def linear(self, k0: int, frac: float) -> np.ndarray:
        """(1-f) ρ(r^k0) + f ρ(r^(k0+1)) (permutation representations)."""
        return (1.0 - frac) * self.rho[0, k0 % self.n] + frac * self.rho[0, (k0 + 1) % self.n]


_REP_TABLES: Dict[tuple, _RepTable] = {}


def _field_type_key(field_type: FieldType) -> tuple:
    gs = field_type.gspace
    return (gs.fibergroup.name, tuple(gs._sg_id), tuple(r.name for r in field_type.representations))


def _rep_table(rep, n: int, dihedral: bool) -> _RepTable:
    key = (rep.group.name, rep.name, n, dihedral)
    table = _REP_TABLES.get(key)
    if table is None:
        table = _REP_TABLES[key] = _RepTable(rep, n, dihedral)
    return table


# ----------------------------------------------------------------------------------------------------------------
# the fibre operator
# ----------------------------------------------------------------------------------------------------------------

class FibreOperator:
    """The channel part of a rotation: ``ρ(g)`` of every field of a field type, ready to apply to ``(B, C, ...)``.

    ``matrices``: one float64 ``(d, d)`` matrix per field (``ρ_i(g)``, snapped to exact 0/±1 where escnn has
    rounding noise). ``kind`` is ``"identity"``, ``"permutation"`` (the whole operator is a signed permutation of
    channels: one ``index_select`` and, if some sign is -1, one multiply; ``index``/``sign`` hold it) or ``"blocks"``
    (runs of consecutive fields with the same matrix: gathers for signed permutations, a ``d×d`` matmul otherwise).
    Device tensors are cached per ``(device, dtype)``.
    """

    def __init__(self, matrices: Sequence[np.ndarray], names: Sequence[str]):
        self.matrices = [np.asarray(m, dtype=np.float64) for m in matrices]
        self.names = list(names)
        self.size = int(sum(m.shape[0] for m in self.matrices))
        self._device_cache: Dict[tuple, object] = {}
        self._planes = _LRU(64)
        perms = [_signed_permutation(m) for m in self.matrices]
        if all(p is not None for p in perms):
            offsets = np.cumsum([0] + [m.shape[0] for m in self.matrices[:-1]])
            self.index = np.concatenate([p[0] + o for p, o in zip(perms, offsets)]) if perms else np.zeros(0, int)
            self.sign = np.concatenate([p[1] for p in perms]) if perms else np.zeros(0)
            if np.array_equal(self.index, np.arange(self.size)) and (self.sign > 0).all():
                self.kind = "identity"
            else:
                self.kind = "permutation"
        else:
            self.kind = "blocks"
            self.index = self.sign = None
            # runs: (start channel, n fields, d, matrix or None for identity, signed permutation or None)
            self.runs = []
            start = 0
            for m, p in zip(self.matrices, perms):
                d = m.shape[0]
                last = self.runs[-1] if self.runs else None
                if last is not None and last[2] == d and np.array_equal(last[3], m):
                    self.runs[-1] = (last[0], last[1] + 1, d, last[3], last[4])
                else:
                    self.runs.append((start, 1, d, m, p))
                start += d

    def matrix(self) -> np.ndarray:
        """The dense ``(C, C)`` block-diagonal operator (for inspection and tests)."""
        out = np.zeros((self.size, self.size))
        i = 0
        for m in self.matrices:
            d = m.shape[0]
            out[i:i + d, i:i + d] = m
            i += d
        return out

    def _tensors(self, device, dtype):
        key = (device, dtype)
        cached = self._device_cache.get(key)
        if cached is not None:
            return cached
        if self.kind == "permutation":
            idx = torch.as_tensor(self.index, dtype=torch.long, device=device)
            sign = None
            if (self.sign < 0).any():
                sign = torch.as_tensor(self.sign, dtype=dtype, device=device).view(1, -1, 1, 1)
            cached = (idx, sign)
        elif self.kind == "blocks":
            cached = []
            for start, nf, d, m, p in self.runs:
                if p is not None:
                    pidx = torch.as_tensor(p[0], dtype=torch.long, device=device)
                    psign = None
                    if (p[1] < 0).any():
                        psign = torch.as_tensor(p[1], dtype=dtype, device=device).view(1, 1, d, 1)
                    cached.append(("perm", pidx, psign))
                else:
                    cached.append(("dense", torch.as_tensor(m, dtype=dtype, device=device), None))
        else:
            cached = ()
        self._device_cache[key] = cached
        return cached

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to a ``(B, C, *spatial)`` tensor (channels = the fields, in order). Differentiable."""
        if x.dim() < 2 or x.shape[1] != self.size:
            raise ValueError(f"tensor has {x.shape[1] if x.dim() > 1 else '?'} channels, the fibre operator "
                             f"acts on {self.size}")
        if self.kind == "identity":
            return x
        compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        shape = x.shape
        rest = math.prod(shape[2:])     # explicit sizes, not -1: an empty batch (B = 0) must reshape too
        if self.kind == "permutation":
            idx, sign = self._tensors(x.device, compute)
            # on a (B, C, rest) view, index_select copies whole channel planes; on the 4-D tensor it gathers
            # element by element (measured ~3.5x slower for 256 x 129²)
            y = x.reshape(shape[0], shape[1], rest).index_select(1, idx).reshape(shape) \
                if x.is_contiguous() else x.index_select(1, idx)
            if sign is not None:        # cached as (1, C, 1, 1): shaped for any number of spatial dims
                y = (y.to(compute) * sign.reshape((1, -1) + (1,) * (x.dim() - 2))).to(x.dtype)
            return y
        parts = []
        flat = x.reshape(shape[0], shape[1], rest)
        for (start, nf, d, m, p), (what, op, sign) in zip(self.runs, self._tensors(x.device, compute)):
            seg = flat[:, start:start + nf * d].reshape(shape[0], nf, d, rest)
            if what == "perm":
                y = seg.index_select(2, op)
                if sign is not None:
                    y = (y.to(compute) * sign).to(x.dtype)
            else:
                y = torch.matmul(op, seg.to(compute)).to(x.dtype)
            parts.append(y.reshape(shape[0], nf * d, rest))
        return torch.cat(parts, dim=1).reshape(shape)

    __call__ = apply

    def plane_sources(self, batch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """For an ``"identity"`` or ``"permutation"`` operator on a contiguous ``(batch, C, ...)`` tensor: the input
        plane (``b·C + channel``) of every output plane as int64, and a uint8 flag per output plane whose sign
        flips (None when no sign does). CPU tensors for the C row copier, cached per batch size."""
        def make():
            index = np.arange(self.size) if self.kind == "identity" else self.index
            planes = (np.arange(batch)[:, None] * self.size + index[None, :]).reshape(-1)
            neg = None
            if self.kind == "permutation" and (self.sign < 0).any():
                neg = torch.from_numpy(np.tile(self.sign < 0, batch).astype(np.uint8))
            return torch.from_numpy(planes.astype(np.int64)), neg

        return self._planes.get_or(batch, make)

    def __repr__(self):
        return f"FibreOperator(kind={self.kind!r}, channels={self.size}, fields={len(self.matrices)})"


_OPERATORS = _LRU(_CACHE_SIZE)


def _element_spec(angle: float, n: int) -> Tuple[int, float]:
    """``(k0, frac)`` with ``angle = (k0 + frac) 360/N``, ``0 <= frac < 1``; frac is 0 within tolerance."""
    q = angle * n / 360.0
    k = round(q)
    if abs(angle - k * 360.0 / n) <= _ANGLE_TOL:
        return int(k) % n, 0.0
    k0 = math.floor(q)
    return int(k0) % n, q - k0


def fibre_operator(field_type: FieldType, angle: float, fibre_interp: Optional[str] = None, *,
                   flip: bool = False) -> FibreOperator:
    """The channel part ``ρ(g)`` of the rotation by ``angle`` degrees (after the mirror when ``flip``).

    At multiples of ``360/N`` it is escnn's ``field_type.representation(element)`` exactly (module docstring for the
    element). Between orientation steps, ``fibre_interp`` decides:

    * ``None``: allowed only when no field needs a rule: fields whose irreps are all of rotation frequency 0 or 2-D
      of frequency ``0 < k < N/2`` (trivial fields, irreps, their direct sums) are evaluated exactly as rotations by
      ``kθ`` (with their change of basis); non-trivial permutation fields (regular, quotient) and fields with a
      frequency-``N/2`` irrep raise ``ValueError`` naming them.
    * ``"linear"``: permutation fields get ``(1-f) ρ(r^k) + f ρ(r^(k+1))`` (linear between neighbouring
      orientation channels, as RiRoIAlign does); all other fields the ``"fourier"`` evaluation.
    * ``"fourier"``: band-limited, every field: ``ρ(θ) = Q (⊕ ψ_i(θ)) Q⁻¹`` with escnn's change of basis ``Q``
      and irreps ``ψ_i`` extended continuously (frequency ``k``: ``cos(kθ)`` if 1-D, a rotation by ``kθ`` if
      2-D, sign taken from escnn's ``ψ(r)``; for ``D_N`` irreps their rotation frequency).

    With ``flip``, the operator is ``ρ(θ) ρ(m)`` (``ρ(m)`` exact). All rules equal escnn at multiples of ``360/N``.
    Operators are cached per (field type, angle, flip, rule).
    """
    n, dihedral = group_of(field_type)
    if fibre_interp not in FIBRE_INTERP_RULES:
        raise ValueError(f"unknown fibre_interp {fibre_interp!r}; expected one of {FIBRE_INTERP_RULES}")
    if flip and not dihedral:
        raise ValueError(f"flip=True needs a flipRot2dOnR2 field type, got one on {field_type.gspace.name!r}")
    angle = _scalar_angle(angle)
    k0, frac = _element_spec(angle, n)
    rule = fibre_interp if frac else None
    key = (_field_type_key(field_type), bool(flip), k0, round(frac, 12), rule)

    def make():
        reps = field_type.representations
        tables = [_rep_table(r, n, dihedral) for r in reps]
        if not frac:
            mats = [t.rho[int(bool(flip)), k0] for t in tables]
            return FibreOperator(mats, [t.name for t in tables])
        if rule is None:
            bad = [f"field {i} ({t.name})" for i, t in enumerate(tables) if t.needs_rule]
            if bad:
                shown = ", ".join(bad[:6]) + (f", ... ({len(bad)} fields)" if len(bad) > 6 else "")
                raise ValueError(
                    f"angle {angle}° is not a multiple of 360/{n} = {360.0 / n:g}°, and the representation of "
                    f"{shown} cannot be evaluated there without a rule: pass fibre_interp='linear' or 'fourier'")
        theta = 2 * math.pi * (k0 + frac) / n
        mats = []
        for t in tables:
            if rule == "linear" and t.rotation_perm:
                m = t.linear(k0, frac)
            else:
                m = t.fourier(theta)
            if flip:
                m = m @ t.mirror
            mats.append(_snap(m))
        return FibreOperator(mats, [t.name for t in tables])

    return _OPERATORS.get_or(key, make)


# ----------------------------------------------------------------------------------------------------------------
# the spatial part
# ----------------------------------------------------------------------------------------------------------------

class _SpatialPlan:
    """How to resample one map: exact index ops (``transpose``, ``flips``, ``pads``) or a bilinear sampling grid."""

    def __init__(self, angle: float, flip: bool, in_hw: Tuple[int, int], stride: int,
                 canvas: Tuple[int, int], out_hw: Tuple[int, int]):
        self.out_hw = out_hw
        a, t = rotation_matrix_and_offset(angle, canvas, stride=stride, flip=flip)
        b = a.T                   # A is orthogonal: p_in = B (q - t) = B q + u
        u = -b @ t
        self.exact = _quarter_turns(angle) is not None and bool((np.abs(u - np.round(u)) <= _INT_TOL).all())
        self._grids: Dict[tuple, torch.Tensor] = {}
        self.row_copy = None
        if self.exact:
            b = np.round(b).astype(int)
            u = np.round(u).astype(int)
            self.transpose = b[0, 0] == 0
            if self.transpose:      # in[B01 qx + uy, B10 qy + ux] = in^T[B10 qy + ux, B01 qx + uy]
                signs, offs, src = (b[1, 0], b[0, 1]), [u[1], u[0]], (in_hw[1], in_hw[0])
            else:
                signs, offs, src = (b[0, 0], b[1, 1]), [u[0], u[1]], in_hw
            self.flips = []
            for d in range(2):
                if signs[d] < 0:    # in[-q + o] = flipped[q + (n - 1 - o)]
                    self.flips.append(d - 2)
                    offs[d] = src[d] - 1 - offs[d]
            # out[q] = src[q + o]: pad left -o, right m - n + o (negative pads crop)
            (top, left), (m_h, m_w) = offs, out_hw
            self.pads = (-left, m_w - src[1] + left, -top, m_h - src[0] + top)
            self.row_copy = self._row_copy_spec(b, u, in_hw, out_hw)
        else:
            ho, wo = out_hw
            hi, wi = in_hw
            qy, qx = np.meshgrid(np.arange(ho, dtype=np.float64), np.arange(wo, dtype=np.float64), indexing="ij")
            py = b[0, 0] * qy + b[0, 1] * qx + u[0]
            px = b[1, 0] * qy + b[1, 1] * qx + u[1]
            # grid_sample, align_corners=False: normalised g <-> pixel index (g + 1) n / 2 - 1/2
            gx = (2.0 * px + 1.0) / wi - 1.0
            gy = (2.0 * py + 1.0) / hi - 1.0
            self.grid = torch.from_numpy(np.stack([gx, gy], axis=-1)[None])

    def _row_copy_spec(self, b, u, in_hw, out_hw):
        """The exact map in the input's memory order as a copy of whole rows: ``buf[c, r, :] = x[c', rows[r], :]``,
        read backwards if ``reverse``, returned as is or transposed (odd quarter turns). ``(rows, reverse)``; None
        when the output does not cover exactly the input's rows and columns (pads and crops of other canvases)."""
        h, w = in_hw
        if self.transpose:      # buf[c, r, s] = out[c, s, r]: r runs along the output's columns
            sign_r, off_r, sign_s, off_s, n_r, n_s = b[0, 1], u[0], b[1, 0], u[1], out_hw[1], out_hw[0]
        else:
            sign_r, off_r, sign_s, off_s, n_r, n_s = b[0, 0], u[0], b[1, 1], u[1], out_hw[0], out_hw[1]
        rows = sign_r * np.arange(n_r) + off_r
        if n_s != w or off_s != (w - 1 if sign_s < 0 else 0) or n_r != h or rows.min() < 0 or rows.max() >= h:
            return None
        return torch.from_numpy(rows.astype(np.int64)), bool(sign_s < 0)

    def copy(self, x: torch.Tensor, op: "FibreOperator") -> Optional[torch.Tensor]:
        """The exact map and the signed channel permutation of ``op`` in one pass of the C row copier (every
        output element written once, straight from the input, in the output's memory order). ``None`` where it
        does not apply: the copier is not built, inputs that are not contiguous CPU tensors of 2-, 4- or 8-byte
        elements, autograd (the differentiable torch path runs), operators that mix channels, pads. Same strides
        as :meth:`apply` (a transposed view for odd quarter turns)."""
        if _plane_copy is None or self.row_copy is None or op.kind == "blocks" or x.device.type != "cpu" \
                or not x.is_contiguous() or x.element_size() not in (2, 4, 8) \
                or (x.requires_grad and torch.is_grad_enabled()):
            return None
        rows, reverse = self.row_copy       # covers exactly the input's rows and columns: out has x's shape
        b, c, h, w = x.shape
        planes, neg = op.plane_sources(b)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        size = x.numel() * x.element_size()
        if size:
            threads = max(1, min(torch.get_num_threads(), size // _COPY_BYTES_PER_THREAD))
            _plane_copy.copy_planes(x.data_ptr(), out.data_ptr(), planes.data_ptr(), rows.data_ptr(),
                                    0 if neg is None else neg.data_ptr(), b * c, h, w, x.element_size(),
                                    reverse, threads)
        return out.transpose(-2, -1) if self.transpose else out

    def grid_on(self, device, dtype) -> torch.Tensor:
        key = (device, dtype)
        g = self._grids.get(key)
        if g is None:
            g = self._grids[key] = self.grid.to(device=device, dtype=dtype)
        return g

    def apply(self, x: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """Resample ``x``. Exact plans return a transposed *view* for odd quarter turns (like ``torch.rot90``);
        the result never aliases ``x`` unless ``fresh`` says ``x`` is already a private copy."""
        if self.exact:
            y = x.transpose(-2, -1) if self.transpose else x
            if self.flips:
                y = torch.flip(y, self.flips)       # keeps y's memory order: a plain reversed copy
            if any(self.pads):
                y = F.pad(y, self.pads)
            elif not self.flips and not fresh:
                y = y.clone()
            return y
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        grid = self.grid_on(x.device, dtype).expand(x.shape[0], -1, -1, -1)
        y = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return y.to(x.dtype)


_PLANS = _LRU(_CACHE_SIZE)


def _check_tensor(tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(f"expected a 4-D (B, C, h, w) tensor, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.shape[-2] < 1 or tensor.shape[-1] < 1:
        raise ValueError(f"expected a map of at least 1x1 pixels, got shape {tuple(tensor.shape)} (a zero-size "
                         f"map has no canvas to rotate about)")
    return tensor


def _resolve_geometry(in_hw, angle, stride, canvas_size, out_size):
    stride = _check_stride(stride)
    h, w = in_hw
    canvas = ((h - 1) * stride + 1, (w - 1) * stride + 1) if canvas_size is None else _check_canvas(canvas_size)
    if out_size is None:
        rh, rw = rotated_canvas_size(canvas, angle)
        out_hw = (_feature_side(rh, stride), _feature_side(rw, stride))
    else:
        out_hw = _check_canvas(out_size)
    return stride, canvas, out_hw


def _plan(in_hw, angle, stride, canvas_size, out_size, flip) -> _SpatialPlan:
    stride, canvas, out_hw = _resolve_geometry(in_hw, angle, stride, canvas_size, out_size)
    angle = math.fmod(angle, 360.0)
    key = (round(angle, 10), bool(flip), tuple(in_hw), stride, canvas, out_hw)
    return _PLANS.get_or(key, lambda: _SpatialPlan(angle, bool(flip), tuple(in_hw), stride, canvas, out_hw))


_PAIRS = _LRU(_CACHE_SIZE)     # plain arguments of rotate_fields -> (operator, plan), skipping their checks


def _plain_key(field_type, angle, stride, canvas_size, out_size, flip, fibre_interp, hw) -> Optional[tuple]:
    """A cache key for arguments of the plain types that a first call has validated (ints, not 8.0 or True, whose
    hashes and equality would mix them up), else None."""
    if type(stride) is not int or type(flip) is not bool or not (fibre_interp is None or type(fibre_interp) is str):
        return None
    sizes = []
    for v in (canvas_size, out_size):
        if v is None:
            sizes.append(None)
        elif type(v) in (tuple, list) and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
            sizes.append((v[0], v[1]))
        else:
            return None
    return (field_type, angle, stride, sizes[0], sizes[1], flip, fibre_interp, hw)


def _per_sample(fn, tensor, angles):
    outs = [fn(tensor[i:i + 1], a) for i, a in enumerate(angles)]
    shapes = {tuple(o.shape[-2:]) for o in outs}
    if len(shapes) > 1:
        raise ValueError(f"batched angles {angles} give maps of different sizes {sorted(shapes)} (90° and 0° on a "
                         f"non-square canvas): use one angle per call, a square canvas, or out_size")
    return torch.cat(outs, dim=0)


def rotate_grid(tensor: torch.Tensor, angle: AngleLike, *, stride: int = 1,
                canvas_size: Optional[Sequence[int]] = None, out_size: Optional[Sequence[int]] = None,
                flip: bool = False) -> torch.Tensor:
    """The spatial part only: resample a ``(B, C, h, w)`` map (any channels) as the image turns by ``angle``.

    The map is the stride-``stride`` map of the canvas ``canvas_size`` (default ``((h-1)s+1, (w-1)s+1)``, whose
    centre is the map's middle). Output pixel ``q`` takes the input at ``p = A⁻¹(q - t)`` from
    :func:`rotation_matrix_and_offset`; the output size is that of the rotated canvas at this stride (``out_size``
    overrides). When ``angle`` is a multiple of 90° and the offset is integral (always for the default canvas or a
    canvas ``≡ 1 mod stride``) this is exact: ``transpose``/``flip``/``pad`` only. Otherwise bilinear interpolation
    (``grid_sample``, zeros outside; float16/bfloat16 computed in float32). ``angle`` may be a 1-D tensor of B
    angles. Differentiable w.r.t. ``tensor``.
    """
    _check_tensor(tensor)
    angles = _batch_angles(angle, tensor.shape[0])
    if isinstance(angles, list):
        if len(set(angles)) == 1:
            angles = angles[0]
        else:
            return _per_sample(lambda x, a: rotate_grid(x, a, stride=stride, canvas_size=canvas_size,
                                                        out_size=out_size, flip=flip), tensor, angles)
    return _plan(tuple(tensor.shape[-2:]), angles, stride, canvas_size, out_size, flip).apply(tensor)


def rotate_fields(tensor: torch.Tensor, field_type: FieldType, angle: AngleLike, *, stride: int = 1,
                  canvas_size: Optional[Sequence[int]] = None, flip: bool = False,
                  fibre_interp: Optional[str] = None, out_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Features of the rotated image from the features ``tensor`` of the image (passive rotation).

    ``tensor``: ``(B, C, h, w)``, ``C = field_type.size``, channels = the fields of ``field_type`` (a field type on
    ``rot2dOnR2(N)`` or ``flipRot2dOnR2(N)``, finite N). ``angle``: degrees (module docstring for the sign), or a 1-D
    tensor / sequence of B angles (one per sample). Returns :func:`rotate_grid` of the tensor followed by
    :func:`fibre_operator` on its channels (see both for ``stride``, ``canvas_size``, ``out_size``, ``flip``,
    ``fibre_interp``). Multiples of 90° on a centred canvas are pure index ops equal to escnn's
    ``GeometricTensor(tensor, field_type).transform(element)``.
    """
    _check_tensor(tensor)
    group_of(field_type)
    if tensor.shape[1] != field_type.size:
        raise ValueError(f"tensor has {tensor.shape[1]} channels but field_type has size {field_type.size}")
    angles = _batch_angles(angle, tensor.shape[0])
    if isinstance(angles, list):
        if len(set(angles)) == 1:
            angles = angles[0]
        else:
            return _per_sample(lambda x, a: rotate_fields(x, field_type, a, stride=stride, canvas_size=canvas_size,
                                                          flip=flip, fibre_interp=fibre_interp, out_size=out_size),
                               tensor, angles)
    hw = tuple(tensor.shape[-2:])
    key = _plain_key(field_type, angles, stride, canvas_size, out_size, flip, fibre_interp, hw)
    def make():
        return (fibre_operator(field_type, angles, fibre_interp, flip=flip),
                _plan(hw, angles, stride, canvas_size, out_size, flip))

    op, plan = _PAIRS.get_or(key, make) if key is not None else make()
    if plan.exact:
        # one pass of the C row copier where it applies (spatial map, channel permutation and signs together);
        # otherwise the channel part first, then one flip that keeps the memory order. The transposition of odd
        # quarter turns stays a view. (tools/benchmark_rotation.py measures this against a clone.)
        out = plan.copy(tensor, op)
        if out is not None:
            return out
        if op.kind == "identity":
            return plan.apply(tensor)
        return plan.apply(op.apply(tensor), fresh=True)
    return op.apply(plan.apply(tensor))


def rotate_pyramid(feats: Sequence[torch.Tensor], field_types, strides: Sequence[int], angle: AngleLike,
                   canvas_size: Optional[Sequence[int]] = None, *, contiguous: bool = False,
                   **kw) -> List[torch.Tensor]:
    """:func:`rotate_fields` of every level of a pyramid (``field_types``: one field type or one per level).

    A single angle that is a whole turn (without ``flip``) gives the levels back as they are. ``contiguous``: every
    level in its own row-major memory, which compiled ops that read raw memory need (mmcv's ``RoIAlignRotated`` on
    CPU pools the wrong pixels of a transposed view, silently; odd quarter turns are such views under autograd).
    """
    feats = list(feats)
    if isinstance(field_types, FieldType):
        field_types = [field_types] * len(feats)
    field_types = list(field_types)
    strides = list(strides)
    if not (len(feats) == len(field_types) == len(strides)):
        raise ValueError(f"got {len(feats)} maps, {len(field_types)} field types and {len(strides)} strides")
    if isinstance(angle, numbers.Real) and float(angle) % 360 == 0 and not kw.get("flip"):
        out = feats
    else:
        out = [rotate_fields(x, ft, angle, stride=s, canvas_size=canvas_size, **kw)
               for x, ft, s in zip(feats, field_types, strides)]
    return [x.contiguous() for x in out] if contiguous else out


class FieldRotation:
    """A rotation bound to a field type and geometry: ``FieldRotation(ft, stride=8, canvas_size=(1025, 1025))(x, 90)``.

    Holds nothing but the arguments of :func:`rotate_fields` (the operators and plans are cached module-wide).
    """

    def __init__(self, field_type: FieldType, *, stride: int = 1, canvas_size: Optional[Sequence[int]] = None,
                 flip: bool = False, fibre_interp: Optional[str] = None,
                 out_size: Optional[Sequence[int]] = None):
        group_of(field_type)
        if fibre_interp not in FIBRE_INTERP_RULES:
            raise ValueError(f"unknown fibre_interp {fibre_interp!r}; expected one of {FIBRE_INTERP_RULES}")
        self.field_type = field_type
        self.kw = dict(stride=stride, canvas_size=canvas_size, flip=flip, fibre_interp=fibre_interp,
                       out_size=out_size)

    def __call__(self, tensor: torch.Tensor, angle: AngleLike) -> torch.Tensor:
        return rotate_fields(tensor, self.field_type, angle, **self.kw)

    def operator(self, angle: float) -> FibreOperator:
        return fibre_operator(self.field_type, angle, self.kw["fibre_interp"], flip=self.kw["flip"])

    def __repr__(self):
        return f"FieldRotation({self.field_type!r}, {self.kw})"
