"""Pictures of rotation-equivariant feature fields and of rotated detections (torch, numpy, matplotlib, OpenCV;
no mm* imports).

Orientation pictures
--------------------
A regular field of ``C_N`` at a pixel is ``N`` numbers ``f_0 .. f_{N-1}``, one per orientation; rotating the image
by ``360/N`` degrees moves the map and rolls the field's channels by ``+1`` (the fibre action stated in
:mod:`rotplugin.fields`). Its orientation is read off the first circular Fourier coefficient::

    z = Σ_k f_k · exp(2πi k / N)          (complex, one per field and pixel)

Rolling by ``+1`` multiplies ``z`` by ``exp(+2πi/N)``: **the phase of z turns by +θ when the image turns by +θ**
(θ a multiple of ``360/N``; positive = counter-clockwise on screen, :mod:`rotplugin.canvas`). ``|z|`` is unchanged:
it says how strongly the field prefers one orientation (0 for a field that is the same in every orientation).

The orientation channels are found from the group action itself, not from a hard-coded layout: the fibre operator
of the rotation by ``360/N`` (:func:`rotplugin.fields.fibre_operator`) is a permutation of each regular field's
channels, and ``k`` is the position along its cycle (``c_{k+1}`` is where the rotation sends channel ``c_k``,
starting at the field's lowest channel of the cycle). For ``C_N`` this is the plain channel order. A regular field
of ``D_N`` has two such cycles (rotations, and rotations after the mirror); ``z`` is the sum of their two
coefficients, so its phase turns with rotations as above (what it does under mirrors is not claimed).

Fields are combined (``combine``) into one ``z`` per pixel:

* ``"sum"`` (default): ``Σ_i z_i`` over the chosen fields, which is the coefficient of the summed field
  ``Σ_i f_i`` (itself a regular field: the equivariant sum-pooling over fields) — one dominant orientation per pixel;
* ``"max"``: the ``z_i`` of the field with the largest ``|z_i|`` at that pixel (also equivariant: ``|z_i|`` moves
  with the map and does not change).

The phase has an arbitrary offset per field (learned filters decide what "orientation 0" looks like), so hues are
meaningful relative to each other and under rotations, not as absolute compass directions.

**Picture** (:func:`orientation_rgb`): hue = ``arg z`` (a colour wheel: red 0°, yellow-green 90°, cyan 180°,
blue-violet 270°, counter-clockwise, see :func:`hue_wheel`), brightness = ``|z| / scale`` clipped to 1, full
saturation. ``scale`` is a percentile of ``|z|`` (robust to a few hot pixels); pictures shown side by side share one
scale (:func:`orientation_scale`), so equal features give equal pictures. So on the equivariant canvas the picture of
``F(rot I)`` is the picture of ``F(I)`` turned by θ about the canvas centre *with every hue advanced by θ* on the
wheel.

Everything else
---------------
:func:`channel_heatmaps_figure` draws the orientation channels of chosen fields as heat maps;
:func:`visualize_field_rotation` runs a model on an image and its rotated copy and writes, per pyramid level, the
pictures of ``F(I)``, ``F(rot I)``, ``rotate_fields(F(I))`` and ``|F(rot I) - rotate_fields(F(I))|`` as PNGs;
:func:`draw_rboxes` draws mmrotate le90 boxes (:mod:`rotplugin.boxes`) with labels and scores on a BGR image.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from escnn.nn import FieldType

from rotplugin.boxes import rbox_to_polygon
from rotplugin.equivariance import feature_pyramid, max_relative_error, pad_image
from rotplugin.fields import fibre_operator, group_of, rotate_grid, rotate_pyramid

__all__ = [
    "orientation_channels",
    "orientation_coefficients",
    "orientation_field",
    "orientation_scale",
    "orientation_rgb",
    "orientation_picture",
    "hue_wheel",
    "image_to_rgb",
    "difference_map",
    "channel_heatmaps_figure",
    "level_figure",
    "visualize_field_rotation",
    "visualize_detector_fields",
    "FieldRotationPlots",
    "draw_rboxes",
    "label_colour",
    "detection_panel",
    "class_legend",
    "detection_comparison",
]

COMBINE_MODES = ("sum", "max")


# ----------------------------------------------------------------------------------------------------------------
# orientation channels and the first Fourier coefficient
# ----------------------------------------------------------------------------------------------------------------

def _rotation_order(field_type) -> int:
    """N of the field type's group (C_N or D_N, checked by :func:`rotplugin.fields.group_of`); ValueError when it
    has no rotation of order > 1."""

    n, _ = group_of(field_type)
    if n < 2:
        raise ValueError(f"field type on {field_type.gspace.name!r} has no rotations (N = {n}): there is no "
                         f"orientation to draw")
    return n


def orientation_channels(field_type) -> List[np.ndarray]:
    """For every field of ``field_type``: the channel indices (into the whole tensor) of its orientation cycles,
    an ``(m, N)`` int array whose row ``j`` lists ``c_0 .. c_{N-1}`` of cycle ``j`` (``m = 1`` for C_N, ``2`` for D_N
    regular fields). Channel ``c_{k+1}`` is where the rotation by ``360/N`` sends channel ``c_k``.

    Raises ``ValueError`` naming the field when a field is not a regular field (its rotation is not a permutation
    made of cycles of length N), e.g. trivial or irrep fields.
    """

    n = _rotation_order(field_type)
    op = fibre_operator(field_type, 360.0 / n)
    out = []
    start = 0
    for i, (m, rep) in enumerate(zip(op.matrices, field_type.representations)):
        d = m.shape[0]
        ok = np.allclose(np.sort(m, axis=None)[-d:], 1.0) and np.allclose(np.abs(m).sum(0), 1.0) \
            and np.allclose(np.abs(m).sum(1), 1.0) and (m >= -1e-12).all()
        if not ok:
            raise ValueError(f"field {i} ({rep.name}) of the field type is not a regular field: the rotation by "
                             f"360/{n}° does not permute its channels")
        # out = m @ in: out[a] = in[b] where m[a, b] = 1, i.e. channel b is sent to a
        send = np.argmax(m, axis=0)
        seen = np.zeros(d, bool)
        cycles = []
        for c0 in range(d):
            if seen[c0]:
                continue
            cycle = [c0]
            seen[c0] = True
            c = send[c0]
            while c != c0:
                cycle.append(c)
                seen[c] = True
                c = send[c]
            if len(cycle) != n:
                raise ValueError(f"field {i} ({rep.name}) of the field type is not a regular field: the rotation by "
                                 f"360/{n}° permutes its channels in cycles of length {len(cycle)}, not {n}")
            cycles.append(cycle)
        out.append(np.asarray(cycles, dtype=np.int64) + start)
        start += d
    return out


def _check_fields(fields, num_fields: int, what: str = "fields") -> List[int]:
    if fields is None:
        return list(range(num_fields))
    if isinstance(fields, (int, np.integer)) and not isinstance(fields, bool):
        fields = [int(fields)]
    fields = [int(f) for f in fields]
    if not fields:
        raise ValueError(f"{what}: an empty selection of fields")
    bad = [f for f in fields if not 0 <= f < num_fields]
    if bad:
        raise ValueError(f"{what} {bad} out of range: the field type has {num_fields} fields (0..{num_fields - 1})")
    return fields


def _as_batch(features: torch.Tensor, field_type) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    x = features[None] if features.dim() == 3 else features
    if x.dim() != 4:
        raise ValueError(f"features must be (C, h, w) or (B, C, h, w), got shape {tuple(features.shape)}")
    if x.shape[1] != field_type.size:
        raise ValueError(f"features have {x.shape[1]} channels but the field type has size {field_type.size}")
    return x


def orientation_coefficients(features: torch.Tensor, field_type, fields: Optional[Sequence[int]] = None
                             ) -> torch.Tensor:
    """First circular Fourier coefficient ``z_i = Σ_k f_{c_k} exp(2πik/N)`` of every chosen regular field.

    ``features``: ``(B, C, h, w)`` or ``(C, h, w)`` with the channels of ``field_type`` (regular fields of C_N or
    D_N); ``fields``: indices of the fields to use (default all). Returns a complex128 tensor ``(B, F, h, w)`` (or
    ``(F, h, w)``) in the order of ``fields``. Rotating the image by ``+360/N`` on the canvas multiplies every
    ``z_i`` by ``exp(+2πi/N)`` (module docstring).
    """
    x = _as_batch(features, field_type)
    n = _rotation_order(field_type)
    cycles = orientation_channels(field_type)
    fields = _check_fields(fields, len(cycles))
    w = torch.zeros(len(fields), x.shape[1], dtype=torch.complex128)
    phases = torch.exp(2j * math.pi * torch.arange(n, dtype=torch.float64) / n)
    for row, f in enumerate(fields):
        for cycle in cycles[f]:
            w[row, torch.as_tensor(cycle)] += phases
    z = torch.einsum("fc,bchw->bfhw", w.to(x.device), x.detach().to(torch.float64).to(torch.complex128))
    return z if features.dim() == 4 else z[0]


def orientation_field(features: torch.Tensor, field_type, fields: Optional[Sequence[int]] = None,
                      combine: str = "sum") -> torch.Tensor:
    """One complex orientation ``z`` per pixel from the chosen fields (``combine``: ``"sum"`` or ``"max"``, module
    docstring): ``(B, h, w)`` or ``(h, w)`` complex128. ``arg z`` is the dominant orientation, ``|z|`` its strength."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    z = orientation_coefficients(features, field_type, fields)
    dim = z.dim() - 3
    if combine == "sum":
        return z.sum(dim)
    idx = z.abs().argmax(dim, keepdim=True)
    return z.gather(dim, idx).squeeze(dim)


def orientation_scale(zs: Sequence[torch.Tensor], percentile: float = 99.0) -> float:
    """Shared brightness scale of several orientation fields: the ``percentile`` of ``|z|`` over all their pixels
    (1.0 when they are all zero)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    mags = np.concatenate([torch.as_tensor(z).abs().detach().cpu().numpy().ravel() for z in zs])
    if mags.size == 0:
        return 1.0
    s = float(np.percentile(mags, percentile))
    if s <= 0:
        s = float(mags.max())
    return s if s > 0 else 1.0


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] → RGB in [0, 1] (the standard hexcone formula), arrays of equal shape → (..., 3)."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(h.shape + (3,), dtype=np.float64)
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        rgb[m, 0], rgb[m, 1], rgb[m, 2] = r[m], g[m], b[m]
    return rgb


def orientation_rgb(z: torch.Tensor, scale: Optional[float] = None, percentile: float = 99.0,
                    gamma: float = 1.0) -> np.ndarray:
    """Picture of an ``(h, w)`` orientation field: hue = ``arg z`` (radians / 2π, counter-clockwise colour wheel),
    value = ``clip(|z| / scale, 0, 1) ** gamma``, saturation 1. ``scale`` defaults to
    :func:`orientation_scale` of this field alone; pass a shared one to compare pictures. Returns float64
    ``(h, w, 3)`` RGB in ``[0, 1]``."""
    z = torch.as_tensor(z)
    if z.dim() != 2:
        raise ValueError(f"expected one (h, w) orientation field, got shape {tuple(z.shape)}")
    if scale is None:
        scale = orientation_scale([z], percentile)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    zc = z.detach().cpu().to(torch.complex128).numpy()
    hue = np.angle(zc) / (2 * math.pi)
    val = np.clip(np.abs(zc) / scale, 0.0, 1.0) ** gamma
    return _hsv_to_rgb(hue, np.ones_like(val), val)


def orientation_picture(features: torch.Tensor, field_type, fields: Optional[Sequence[int]] = None,
                        combine: str = "sum", scale: Optional[float] = None, percentile: float = 99.0,
                        gamma: float = 1.0) -> np.ndarray:
    """:func:`orientation_rgb` of :func:`orientation_field` for one ``(C, h, w)`` map (or the first of a batch)."""
    z = orientation_field(features, field_type, fields, combine)
    if z.dim() == 3:
        z = z[0]
    return orientation_rgb(z, scale, percentile, gamma)


def hue_wheel(size: int = 129, inner: float = 0.35) -> np.ndarray:
    """The legend of :func:`orientation_rgb`: an RGBA ring whose colour at screen angle φ (counter-clockwise from
    +x, rows downwards) is the hue of ``arg z = φ``; brightness grows outwards like ``|z|``. Transparent outside."""
    r = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = (xx - r) / r, (r - yy) / r          # dy up
    rad = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    val = np.clip(rad, 0.0, 1.0)
    rgb = _hsv_to_rgb(phi / (2 * math.pi), np.ones_like(rad), val)
    alpha = ((rad <= 1.0) & (rad >= inner)).astype(np.float64)
    return np.concatenate([rgb, alpha[..., None]], -1)


def image_to_rgb(image: torch.Tensor, bgr: bool = False, limits: Optional[Tuple[float, float]] = None
                 ) -> Tuple[np.ndarray, Tuple[float, float]]:
    """A normalised ``(C, H, W)`` / ``(1, C, H, W)`` image tensor as a displayable float ``(H, W, 3)`` in [0, 1]:
    linear stretch between the 0.5 and 99.5 percentiles of all its values (or ``limits``, to show several images
    alike). 3 channels are taken as RGB (``bgr=True``: BGR); other counts show the first channel in grey.
    Returns ``(picture, limits)``."""
    x = image.detach().cpu().double()
    if x.dim() == 4:
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    a = x.numpy().transpose(1, 2, 0)
    if a.shape[-1] == 3:
        if bgr:
            a = a[..., ::-1]
    else:
        a = np.repeat(a[..., :1], 3, axis=-1)
    if limits is None:
        lo, hi = np.percentile(a, [0.5, 99.5])
        limits = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    lo, hi = limits
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0), limits


def difference_map(actual: torch.Tensor, expected: torch.Tensor) -> np.ndarray:
    """Per pixel ``max_c |actual - expected|`` of two ``(C, h, w)`` / ``(1, C, h, w)`` maps, divided by
    ``max|expected|`` (so its maximum is :func:`rotplugin.equivariance.max_relative_error`). float64 ``(h, w)``."""
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if a.dim() == 4:
        a, e = a[0], e[0]
    scale = e.abs().max().item()
    d = (a - e).abs().amax(0).numpy()
    return d / scale if scale > 0 else d


# ----------------------------------------------------------------------------------------------------------------
# figures (matplotlib's object API with the Agg canvas: no pyplot, no global state)
# ----------------------------------------------------------------------------------------------------------------

def _new_figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib (~0.5 s) only when a figure is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def _panel(ax, picture, title, **kw):
    im = ax.imshow(picture, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def level_figure(path: str, pictures: Dict[str, np.ndarray], title: str, diff_max: float, diff_shared: float,
                 scale: float, dpi: int = 100, equivariant_canvas: bool = True) -> str:
    """Write the 2×4 figure of one level: ``pictures`` holds ``image``, ``rotated_image`` ((H, W, 3) in [0, 1]),
    ``F(I)``, ``F(rot I)``, ``rotate(F(I))`` (orientation pictures) and ``diff`` (:func:`difference_map`).
    The difference is drawn twice: on its own range (``[0, diff_max]``) and on the range of the features
    (``[0, diff_shared]``, the features' typical relative size: a picture that stays black means no difference).
    """
    fig = _new_figure(15.0, 7.6, dpi)
    axes = fig.subplots(2, 4)
    _panel(axes[0, 0], pictures["image"], "image I (equivariant canvas)" if equivariant_canvas
           else "image I (padded, NOT an equivariant canvas)")
    _panel(axes[1, 0], pictures["rotated_image"], "rot I")
    _panel(axes[0, 1], pictures["F(I)"], "F(I)")
    _panel(axes[1, 1], pictures["F(rot I)"], "F(rot I): features of the rotated image")
    _panel(axes[1, 2], pictures["rotate(F(I))"], "rotate_fields(F(I)): passive rotation")
    im = _panel(axes[0, 3], pictures["diff"], f"|F(rot I) - rotate(F(I))|, own range\n(max {diff_max:.2e})",
                cmap="magma", vmin=0.0, vmax=diff_max if diff_max > 0 else 1.0)
    fig.colorbar(im, ax=axes[0, 3], fraction=0.046, pad=0.04)
    im = _panel(axes[1, 3], pictures["diff"], "|F(rot I) - rotate(F(I))|,\non the features' range",
                cmap="magma", vmin=0.0, vmax=diff_shared if diff_shared > 0 else 1.0)
    fig.colorbar(im, ax=axes[1, 3], fraction=0.046, pad=0.04)
    ax = axes[0, 2]
    ax.imshow(hue_wheel(), interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(f"hue = arg z (counter-clockwise), brightness = |z|\n(full at |z| = {scale:.3g}, shared); "
                 f"rotating the\nimage by +θ turns the hue by +θ on this wheel", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def channel_heatmaps_figure(path: str, maps: Dict[str, torch.Tensor], field_type, fields: Sequence[int] = (0, 1, 2),
                            title: str = "", dpi: int = 80, panel_inches: float = 1.35) -> str:
    """Heat maps of the orientation channels of chosen fields: for each field, one row per entry of ``maps``
    (``name -> (C, h, w)`` or ``(1, C, h, w)`` tensor of ``field_type``), columns = the field's channels in
    orientation order ``k = 0..N-1`` (:func:`orientation_channels`; D_N: both cycles, ``2N`` columns). Each field
    has one colour range shared by its rows (symmetric diverging colours when it has negative values). Writes
    ``path`` and returns it."""
    cycles = orientation_channels(field_type)
    fields = _check_fields(fields, len(cycles))
    n = cycles[0].shape[1]
    cols = max(c.size for c in cycles)
    rows = [(f, name) for f in fields for name in maps]
    arrays = {}
    for name, t in maps.items():
        a = _as_batch(t, field_type)[0].detach().cpu().double().numpy()
        arrays[name] = a
    fig = _new_figure(panel_inches * cols + 1.6, panel_inches * len(rows) + 0.9, dpi)
    axes = np.atleast_2d(fig.subplots(len(rows), cols, squeeze=False))
    for f in fields:
        chans = cycles[f].ravel()
        vals = np.concatenate([arrays[name][chans].ravel() for name in maps])
        hi = float(np.percentile(np.abs(vals), 99.5)) or 1.0
        signed = bool((vals < 0).any())
        kw = dict(cmap="RdBu_r", vmin=-hi, vmax=hi) if signed else dict(cmap="inferno", vmin=0.0, vmax=hi)
        for name in maps:
            r = rows.index((f, name))
            for j, c in enumerate(chans):
                cyc, k = divmod(j, n)
                label = f"k={k}" if cycles[f].shape[0] == 1 else f"{'rot' if cyc == 0 else 'mir'} k={k}"
                im = _panel(axes[r, j], arrays[name][c], f"ch {c}: {label}" if r == rows.index((f, list(maps)[0]))
                            else "", **kw)
            axes[r, 0].set_ylabel(f"field {f}\n{name}", fontsize=8)
        fig.colorbar(im, ax=[axes[rows.index((f, name)), j] for name in maps for j in range(cols)],
                     fraction=0.02, pad=0.01, aspect=12 * len(maps))
    fig.suptitle(title or f"orientation channels (N = {n}) of fields {fields}", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# the whole picture: a model, an image and its rotated copy
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class FieldRotationPlots:
    """What :func:`visualize_field_rotation` wrote and measured."""

    paths: List[str]                                   # every PNG written, in order
    errors: Dict[int, float]                           # level -> max relative error of rotate_fields(F(I))
    strides: Dict[int, int]                            # level -> stride
    angle: float
    canvas_shape: Tuple[int, int]
    pictures: Dict[int, Dict[str, np.ndarray]] = field(default_factory=dict)  # level -> the panels drawn
    orientation: Dict[int, Dict[str, torch.Tensor]] = field(default_factory=dict)  # level -> z of each picture

    def summary(self, out_dir: str, **extra) -> dict:
        """What ``fields.json`` holds: angle, canvas, the error per level, the pictures relative to ``out_dir``,
        and ``extra`` (e.g. the model and image descriptions)."""
        return dict(extra, angle=self.angle, canvas_shape=list(self.canvas_shape),
                    levels=[{"level": lvl, "stride": self.strides[lvl], "max_relative_error": self.errors[lvl]}
                            for lvl in sorted(self.errors)],
                    files=[os.path.relpath(p, out_dir) for p in self.paths])


def visualize_detector_fields(model, image: torch.Tensor, out_dir: str, angle: float = 90.0,
                              **kwargs) -> FieldRotationPlots:
    """:func:`visualize_field_rotation` of a detector (or backbone / neck module), with the extractor, field types,
    strides and largest stride of :func:`rotplugin.equivariance.feature_pyramid`. ``model`` must be in eval mode;
    ``kwargs`` go to :func:`visualize_field_rotation` (``levels``, ``fields``, ``prefix``, ...)."""
    pyramid = feature_pyramid(model, "drawing its fields")
    kwargs.setdefault("max_stride", pyramid.max_stride)
    return visualize_field_rotation(pyramid.extract, image, pyramid.field_types, pyramid.strides, out_dir, angle,
                                    **kwargs)


@torch.no_grad()
def visualize_field_rotation(model: Optional[Callable[[torch.Tensor], Sequence[torch.Tensor]]],
                             image: torch.Tensor, field_types, strides: Sequence[int], out_dir: str,
                             angle: float = 90.0, *, levels: Optional[Sequence[int]] = None,
                             fields: Sequence[int] = (0, 1, 2), orientation_fields: Optional[Sequence[int]] = None,
                             combine: str = "sum", max_stride: Optional[int] = None, canvas: bool = True,
                             fibre_interp: Optional[str] = None, percentile: float = 99.0, gamma: float = 1.0,
                             features: Optional[Tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]] = None,
                             bgr: bool = False, prefix: str = "", channel_maps: bool = True, dpi: int = 100,
                             verbose: bool = False) -> FieldRotationPlots:
    """Draw, per pyramid level, the fields of an image and of its rotated copy and the passive rotation.

    Args:
        model: ``image batch -> sequence of level tensors`` (e.g. ``detector.extract_feat``, in eval mode); may be
            ``None`` when ``features`` is given.
        image: ``(1, C, H, W)`` or ``(C, H, W)`` normalised image. It is padded at the bottom/right to the
            equivariant canvas of ``max_stride`` (:func:`rotplugin.equivariance.pad_image`; ``canvas=False``: to
            multiples of ``max_stride``, where equivariance is only approximate — useful to show the difference).
        field_types, strides: per level (``neck.out_field_types``, ``neck.out_strides``; one field type for all is
            accepted). ``max_stride`` defaults to ``max(strides)``.
        out_dir: where the PNGs go (created).
        angle: degrees, counter-clockwise (:mod:`rotplugin.canvas`). Multiples of 90° are exact on the canvas;
            other multiples of ``360/N`` resample the image and the maps bilinearly; angles between orientation steps
            need ``fibre_interp`` (``'linear'`` / ``'fourier'``, :func:`rotplugin.fields.fibre_operator`), else the
            ``ValueError`` of :func:`rotplugin.fields.rotate_fields`.
        levels: levels to draw (default all); ``fields``: fields whose channels are drawn as heat maps;
        orientation_fields / combine / percentile / gamma: the orientation pictures (:func:`orientation_field`,
            :func:`orientation_rgb`; one shared brightness scale per level).
        features: ``(F(I), F(rot I))`` already computed on the padded canvas and its rotation, instead of running
            ``model``.
        bgr: the image's 3 channels are BGR (for display only).
        prefix: file name prefix; channel_maps: also write the channel heat maps.

    Writes ``{prefix}level{l}_s{stride}_orientation.png`` (2×4 panels: image, rotated image, orientation pictures
    of F(I), F(rot I), rotate_fields(F(I)), the colour wheel, and the difference map on its own range and on the
    features' range, the max relative error in the title) and, with ``channel_maps``,
    ``{prefix}level{l}_s{stride}_channels.png`` (rows F(I), F(rot I), rotate(F(I)) of every field in ``fields``).
    Returns a :class:`FieldRotationPlots`.
    """


    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point (normalised) tensor, got dtype {image.dtype}")
    strides = [int(s) for s in strides]
    if not strides:
        raise ValueError("strides is empty: no levels to draw")
    if isinstance(field_types, FieldType):
        field_types = [field_types] * len(strides)
    field_types = list(field_types)
    if len(field_types) != len(strides):
        raise ValueError(f"got {len(field_types)} field types for {len(strides)} strides")
    num_levels = len(strides)
    levels = list(range(num_levels)) if levels is None else [int(v) for v in levels]
    bad = [v for v in levels if not 0 <= v < num_levels]
    if bad or not levels:
        raise ValueError(f"levels {bad or levels} out of range: the pyramid has {num_levels} levels "
                         f"(0..{num_levels - 1}, strides {strides})")
    for lvl in levels:  # validate the fields early, with the level named
        cycles = orientation_channels(field_types[lvl])
        _check_fields(fields, len(cycles), f"fields (level {lvl})")
        if orientation_fields is not None:
            _check_fields(orientation_fields, len(cycles), f"orientation_fields (level {lvl})")
    max_stride = int(max_stride or max(strides))

    x = pad_image(image, max_stride, canvas=canvas)
    canvas_shape = tuple(int(v) for v in x.shape[-2:])
    rot_x = rotate_grid(x, angle)  # the image's channels are scalars: spatial part only
    if features is None:
        if model is None:
            raise ValueError("give a model or features=(F(I), F(rot I))")
        feats, feats_rot = list(model(x)), list(model(rot_x))
    else:
        feats, feats_rot = (list(v) for v in features)
    for name, fs in (("F(I)", feats), ("F(rot I)", feats_rot)):
        if len(fs) != num_levels:
            raise ValueError(f"{name} has {len(fs)} levels but {num_levels} field types / strides were given")
    rotated = rotate_pyramid([feats[i] for i in levels], [field_types[i] for i in levels],
                             [strides[i] for i in levels], angle, canvas_size=canvas_shape,
                             fibre_interp=fibre_interp)

    img_pic, limits = image_to_rgb(x, bgr)
    rot_pic, _ = image_to_rgb(rot_x, bgr, limits)
    out = FieldRotationPlots(paths=[], errors={}, strides={}, angle=float(angle), canvas_shape=canvas_shape)
    os.makedirs(out_dir, exist_ok=True)
    for lvl, passive in zip(levels, rotated):
        ft, s = field_types[lvl], strides[lvl]
        f0, f1 = feats[lvl], feats_rot[lvl]
        if passive.shape != f1.shape:
            raise ValueError(f"level {lvl}: rotate_fields(F(I)) has shape {tuple(passive.shape)} but F(rot I) "
                             f"{tuple(f1.shape)} (is the image on an equivariant canvas of stride {max_stride}?)")
        err = max_relative_error(passive, f1)
        zs = {name: orientation_field(t[:1], ft, orientation_fields, combine)[0]
              for name, t in (("F(I)", f0), ("F(rot I)", f1), ("rotate(F(I))", passive))}
        scale = orientation_scale(list(zs.values()), percentile)
        pics = {name: orientation_rgb(z, scale, gamma=gamma) for name, z in zs.items()}
        diff = difference_map(f1[:1], passive[:1])
        ref = difference_map(torch.zeros_like(f1[:1]), f1[:1])  # |F(rot I)| per pixel, relative to its max
        diff_shared = float(np.percentile(ref, percentile)) if ref.size else 1.0
        pics.update(image=img_pic, rotated_image=rot_pic, diff=diff)
        group = ft.gspace.fibergroup.name
        title = (f"level {lvl} (stride {s}, {tuple(f0.shape[-2:])} px, {len(ft.representations)} fields of "
                 f"{group}), rotation {angle:g}°, canvas {canvas_shape[0]}x{canvas_shape[1]}"
                 f"{'' if canvas else ' (NOT equivariant)'}: max relative error {err:.2e}")
        stem = os.path.join(out_dir, f"{prefix}level{lvl}_s{s}")
        out.paths.append(level_figure(stem + "_orientation.png", pics, title, float(diff.max(initial=0.0)),
                                      diff_shared, scale, dpi, canvas))
        if channel_maps:
            out.paths.append(channel_heatmaps_figure(
                stem + "_channels.png", {"F(I)": f0, "F(rot I)": f1, "rotate(F(I))": passive}, ft, fields,
                f"level {lvl} (stride {s}): orientation channels; rotation by {angle:g}° moves the maps and "
                f"shifts k by {angle * _rotation_order(ft) / 360:g}", dpi=max(60, dpi - 20)))
        out.errors[lvl], out.strides[lvl] = err, s
        out.pictures[lvl] = pics
        out.orientation[lvl] = zs
        if verbose:
            print(f"level {lvl} (stride {s}): max relative error {err:.2e} -> {stem}_*.png")
    return out


# ----------------------------------------------------------------------------------------------------------------
# detections
# ----------------------------------------------------------------------------------------------------------------

_PALETTE = [  # BGR, distinct on aerial images
    (0, 200, 255), (255, 80, 80), (80, 255, 80), (255, 0, 255), (0, 255, 255), (255, 255, 0), (40, 120, 255),
    (200, 120, 255), (120, 255, 200), (255, 160, 0), (0, 80, 255), (180, 255, 0), (255, 0, 120), (160, 160, 255),
    (0, 160, 120),
]


def label_colour(label: int) -> Tuple[int, int, int]:
    """A fixed BGR colour per class index."""
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_rboxes(image: np.ndarray, boxes, labels=None, scores=None, class_names: Optional[Sequence[str]] = None,
                score_thr: float = 0.0, colour: Optional[Tuple[int, int, int]] = None, thickness: int = 2,
                font_scale: float = 0.45, show_text: bool = True) -> np.ndarray:
    """Draw rotated boxes on a copy of a BGR ``uint8`` image ``(H, W, 3)`` and return it.

    ``boxes``: ``(n, 5)`` mmrotate rbox, le90 (``cx, cy, w, h, t`` with ``t`` in radians, :mod:`rotplugin.boxes`),
    tensor or array; ``labels`` ``(n,)`` class indices (colour per class, :func:`label_colour`, unless ``colour``);
    ``scores`` ``(n,)``: boxes below ``score_thr`` are skipped. The text (``class_names[label]`` and/or score) sits
    above the box's top corner.
    """

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be a BGR uint8 (H, W, 3) array, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    b = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes).detach().cpu()
    if b.numel() == 0:
        b = b.reshape(0, 5)
    elif b.dim() == 1 and b.numel() == 5:
        b = b[None]
    if b.dim() != 2 or b.shape[1] != 5:
        raise ValueError(f"rotated boxes must be an (n, 5) array (cx, cy, w, h, t[rad], le90), got shape "
                         f"{tuple(b.shape)}")
    b = b.double()
    n = b.shape[0]

    def vec(v, what):
        if v is None:
            return None
        v = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"{what} has {v.shape[0]} entries for {n} boxes")
        return v

    labels, scores = vec(labels, "labels"), vec(scores, "scores")
    out = np.ascontiguousarray(image.copy())
    if n == 0:
        return out
    polys = rbox_to_polygon(b).numpy()
    h, w = out.shape[:2]
    for i in range(n):
        if scores is not None and scores[i] < score_thr:
            continue
        c = colour or (label_colour(labels[i]) if labels is not None else _PALETTE[0])
        c = tuple(int(v) for v in c)
        pts = np.round(polys[i] * 16).astype(np.int32)      # 4 fractional bits
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], True, c, thickness, cv2.LINE_AA, shift=4)
        if not show_text:
            continue
        parts = []
        if labels is not None:
            lab = int(labels[i])
            parts.append(class_names[lab] if class_names is not None and 0 <= lab < len(class_names) else str(lab))
        if scores is not None:
            parts.append(f"{float(scores[i]):.2f}")
        if not parts:
            continue
        text = " ".join(parts)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = polys[i][np.argmin(polys[i][:, 1])]
        x0 = int(np.clip(round(top[0]) - tw // 2, 0, max(0, w - tw - 1)))
        y0 = int(np.clip(round(top[1]) - 4, th + base, h - 1))
        cv2.rectangle(out, (x0, y0 - th - base), (x0 + tw, y0), c, -1)
        cv2.putText(out, text, (x0, y0 - base // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def detection_panel(image: np.ndarray, gt_boxes, pred_boxes, labels, scores, class_names: Sequence[str],
                    title: str, score_thr: float = 0.3) -> np.ndarray:
    """One panel: ground truth in white, the detections with ``score >= score_thr`` in their class colours (no
    text), and a white title bar with ``title`` and the number of boxes drawn."""
    keep = torch.as_tensor(scores).detach().cpu() >= score_thr
    pred_boxes, labels = torch.as_tensor(pred_boxes).cpu()[keep], torch.as_tensor(labels).cpu()[keep]
    pic = draw_rboxes(image, gt_boxes, colour=(255, 255, 255), thickness=1, show_text=False)
    pic = draw_rboxes(pic, pred_boxes, labels, None, class_names, thickness=1, show_text=False)
    pic = cv2.copyMakeBorder(pic, 22, 0, 0, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    cv2.putText(pic, f"{title}: {int(keep.sum())} boxes", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return pic


def class_legend(class_names: Sequence[str], width: int, height: int = 20) -> np.ndarray:
    """A white strip ``(height, width, 3)`` with a colour swatch (:func:`label_colour`) and the name of each class."""
    legend = np.full((height, width, 3), 255, np.uint8)
    x = 4
    for label, name in enumerate(class_names):
        cv2.rectangle(legend, (x, 5), (x + 10, 15), label_colour(label), -1)
        cv2.putText(legend, name, (x + 14, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x += 22 + 8 * len(name)
    return legend


def detection_comparison(panels: Sequence[np.ndarray], class_names: Sequence[str]) -> np.ndarray:
    """Panels of equal height side by side, with the class legend below."""
    picture = np.concatenate(list(panels), axis=1)
    return np.concatenate([picture, class_legend(class_names, picture.shape[1])], axis=0)
