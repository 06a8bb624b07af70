"""Robustness: property tests of the passive rotation and the box mapping over random field types, angles, canvases
and strides; every config in configs/ checked for a consistent equivariant geometry; malformed inputs on a tiny
detector (NaN / Inf / zero-size / tiny images, empty or degenerate ground truth, angles outside le90, empty TTA).

The references here are written independently of rotplugin.fields: the spatial part from the conventions of
rotplugin/canvas.py in complex-number form, resampled by scipy (order 1, zeros outside), the fibre part from escnn's
``field_type.representation(g)``.
"""
from __future__ import annotations

import cmath
import math
from functools import lru_cache

import numpy as np
import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from conftest import ROOT
from rotplugin.boxes import rbox_to_polygon, rotate_rboxes, unrotate_rboxes, wrap_le90
from rotplugin.canvas import canvas_centre, equivariant_canvas_shape, feature_size, rotate_points, rotated_canvas_size
from rotplugin.fields import fibre_operator, rotate_fields, rotate_grid

# derandomize: the same examples on every run (a failure reproduces; CI never flakes on a lucky draw)
PROP = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ORDERS = [2, 3, 4, 6, 8]
STRIDES = [1, 2, 4, 8, 16]


# ================================================================================================================
# random field types
# ================================================================================================================

@lru_cache(maxsize=None)
def gspace(n: int, dihedral: bool):
    return gspaces.flipRot2dOnR2(n) if dihedral else gspaces.rot2dOnR2(n)


def _quotient_ids(n: int, dihedral: bool):
    divisors = [m for m in range(2, n + 1) if n % m == 0]
    if not dihedral:
        return divisors                                            # C_N / C_M
    # D_N / C_M (no flips in the subgroup) and D_N / D_M (flip axis 0 or 1, escnn's ids; (1, N) does not exist)
    return ([(None, m) for m in [1] + divisors] + [(0, m) for m in [1] + divisors]
            + [(1, m) for m in [1] + divisors if m < n])


@st.composite
def field_types(draw, orders=tuple(ORDERS), max_parts: int = 4):
    """A random escnn field type: a mixture of regular, trivial, irrep and quotient fields of C_N or D_N with
    random multiplicities (shuffled, so that fields of one kind are not always adjacent)."""
    n = draw(st.sampled_from(orders))
    dihedral = draw(st.booleans())
    gs = gspace(n, dihedral)
    g = gs.fibergroup
    irreps = list(g.irreps())
    quotients = _quotient_ids(n, dihedral)
    reps = []
    for _ in range(draw(st.integers(1, max_parts))):
        kind = draw(st.sampled_from(["regular", "trivial", "irrep", "quotient"]))
        if kind == "regular":
            rep = gs.regular_repr
        elif kind == "trivial":
            rep = gs.trivial_repr
        elif kind == "irrep":
            rep = draw(st.sampled_from(irreps))
        else:
            rep = gs.quotient_repr(draw(st.sampled_from(quotients)))
        reps += [rep] * draw(st.integers(1, 3 if rep.size <= 8 else 1))
    order = draw(st.permutations(range(len(reps))))
    return enn.FieldType(gs, [reps[i] for i in order])


def group_order(ft) -> tuple:
    """(N, dihedral) of a field type drawn by :func:`field_types`."""
    g = ft.gspace.fibergroup
    dihedral = "Dihedral" in type(g).__name__
    return (g.order() // 2 if dihedral else g.order()), dihedral


def element(ft, k: int, flip: bool):
    """escnn's group element r^k (m first when ``flip``), see rotplugin/fields.py."""
    n, dihedral = group_order(ft)
    g = ft.gspace.fibergroup
    return g.element((int(flip), k % n)) if dihedral else g.element(k % n)


# ================================================================================================================
# an independent spatial reference
# ================================================================================================================

def _unit(angle: float) -> complex:
    """e^{i angle} with exact values at quarter turns."""
    q = angle / 90.0
    if abs(q - round(q)) < 1e-12:
        return (1, 1j, -1, -1j)[round(q) % 4]
    return cmath.exp(1j * math.radians(angle))


def reference_resample(img: np.ndarray, angle: float, canvas, stride: int, flip: bool = False) -> np.ndarray:
    """``img`` (C, h, w): the stride-``stride`` map of ``canvas`` = (H, W). Written in complex numbers z = x + i y
    relative to the canvas centre (rows downwards): canvas.py's +90° sends (y, x) to (-x, y), i.e. z to -i z, so a
    rotation by +a multiplies z by e^{-ia}; the mirror x -> -x is z -> -conj(z) and acts first. Output pixel q samples
    the input at the preimage of q (order 1, zeros outside, scipy)."""
    h_c, w_c = canvas
    quarter = abs(angle / 90.0 - round(angle / 90.0)) < 1e-12
    out_canvas = (w_c, h_c) if quarter and round(angle / 90.0) % 2 else (h_c, w_c)
    out_hw = ((out_canvas[0] - 1) // stride + 1, (out_canvas[1] - 1) // stride + 1)
    qy, qx = np.mgrid[0:out_hw[0], 0:out_hw[1]].astype(np.float64)
    z_out = (qx - (out_canvas[1] - 1) / (2 * stride)) + 1j * (qy - (out_canvas[0] - 1) / (2 * stride))
    z = z_out * _unit(angle)                       # undo the rotation: multiply by e^{+ia}
    if flip:
        z = -np.conj(z)                            # undo the mirror (its own inverse)
    py = z.imag + (h_c - 1) / (2 * stride)
    px = z.real + (w_c - 1) / (2 * stride)
    return np.stack([ndimage.map_coordinates(c, np.stack([py, px]), order=1, mode="grid-constant", cval=0.0)
                     for c in img])


def tent(d):
    return np.clip(1.0 - np.abs(d), 0.0, None)


@st.composite
def canvases(draw, max_cells: int = 12):
    """(canvas (H, W), stride): sides ``stride * k + 1 + r``; r = 0 often (equivariant canvas, the centre is a feature
    pixel), else the centre sits between pixels."""
    stride = draw(st.sampled_from(STRIDES))
    sides = []
    for _ in range(2):
        k = draw(st.integers(0, max_cells))
        r = draw(st.one_of(st.just(0), st.integers(0, stride - 1)))
        sides.append(stride * k + 1 + r)
    return tuple(sides), stride


# ================================================================================================================
# passive rotation: properties
# ================================================================================================================

@PROP
@given(ft=field_types(), data=st.data(), h=st.integers(1, 9), w=st.integers(1, 9), turns=st.integers(-2, 2))
def test_random_field_types_quarter_turns_equal_escnn(ft, data, h, w, turns):
    """Group elements at multiples of 90° (every N: only 0° for C3, 0°/180° for C2 and C6) on a centred map:
    equal to escnn's ``GeometricTensor.transform`` (float64, up to escnn's rounding of its matrices)."""
    n, dihedral = group_order(ft)
    quarter_ks = [k for k in range(n) if (360 * k) % (90 * n) == 0]
    k = data.draw(st.sampled_from(quarter_ks[1:] or quarter_ks), "k")      # not the identity, where N allows
    flip = dihedral and data.draw(st.booleans(), "flip")
    angle = 360.0 * k / n + 360.0 * turns
    x = torch.randn(2, ft.size, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * 10 + w))
    out = rotate_fields(x, ft, angle, flip=flip)
    ref = enn.GeometricTensor(x, ft).transform(element(ft, k, flip)).tensor
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@PROP
@given(ft=field_types(orders=(2, 3, 4, 6, 8), max_parts=3), geometry=canvases(), data=st.data(),
       turns=st.integers(-2, 2))
def test_random_field_types_orientation_steps_match_reference(ft, geometry, data, turns):
    """Any group element (multiple of 360/N, also negative / beyond 360°) on any canvas and stride (centre on a
    pixel or between pixels): scipy's order-1 resampling about the canvas centre, then escnn's ρ(g) per pixel."""
    canvas, stride = geometry
    n, dihedral = group_order(ft)
    k = data.draw(st.integers(1, n - 1), "k")                              # the identity is the group laws' job
    flip = dihedral and data.draw(st.booleans(), "flip")
    angle = 360.0 * k / n + 360.0 * turns
    hw = (feature_size(canvas[0], stride), feature_size(canvas[1], stride))
    x = np.random.default_rng(sum(canvas) + k).standard_normal((ft.size,) + hw)
    out = rotate_fields(torch.tensor(x)[None], ft, angle, stride=stride, canvas_size=canvas, flip=flip)[0].numpy()
    rho = np.asarray(ft.representation(element(ft, k, flip)), dtype=np.float64)
    ref = np.einsum("ij,jyx->iyx", rho, reference_resample(x, angle, canvas, stride, flip))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)


@PROP
@given(geometry=canvases(max_cells=10), data=st.data(), n=st.sampled_from([4, 8]), quarter=st.integers(-6, 6))
def test_delta_lands_where_rotate_points_says_and_rolls_orientations(geometry, data, n, quarter):
    """A one-hot feature (pixel p, orientation channel j of a regular C_N field) rotated by 90°·q: the output is
    the bilinear tent centred on ``rotate_points(p)`` — one pixel when the canvas centre is a feature pixel, split
    between 2 or 4 pixels when it is not — and sits in orientation channel ``j + k`` (k = q N / 4: ``roll(+k)``)."""
    canvas, stride = geometry
    hw = (feature_size(canvas[0], stride), feature_size(canvas[1], stride))
    p = (data.draw(st.integers(0, hw[0] - 1), "py"), data.draw(st.integers(0, hw[1] - 1), "px"))
    j = data.draw(st.integers(0, n - 1), "j")
    gs = gspace(n, False)
    ft = enn.FieldType(gs, [gs.trivial_repr, gs.regular_repr])
    x = torch.zeros(1, ft.size, *hw, dtype=torch.float64)
    x[0, 1 + j, p[0], p[1]] = 1.0
    angle = 90.0 * quarter
    out = rotate_fields(x, ft, angle, stride=stride, canvas_size=canvas)[0].numpy()
    target = rotate_points(np.array(p, dtype=np.float64), angle, canvas, stride=stride)
    qy, qx = np.mgrid[0:out.shape[1], 0:out.shape[2]]
    expected = tent(qy - target[0]) * tent(qx - target[1])
    k = (quarter * n // 4) % n
    np.testing.assert_allclose(out[1 + (j + k) % n], expected, rtol=0, atol=1e-12)
    others = np.delete(out, 1 + (j + k) % n, axis=0)
    assert not others.any()
    on_grid = all(abs(v - round(v)) < 1e-12 for v in target)
    centred = all((c - 1) % stride == 0 for c in canvas)
    if centred:
        assert on_grid, "an equivariant canvas maps feature pixels onto feature pixels"


@PROP
@given(geometry=canvases(max_cells=10), data=st.data(), angle=st.floats(-1000, 1000, allow_nan=False),
       flip=st.booleans())
def test_any_angle_samples_the_preimage_from_rotate_points(geometry, data, angle, flip):
    """Any angle: a one-hot map rotated by ``rotate_grid`` equals the bilinear tent of p evaluated at the preimage
    of every output pixel, the preimage taken with ``rotate_points`` itself (a rotation's inverse is the rotation
    by -a on the rotated canvas; a mirrored rotation is its own inverse). The canvas centre is the fixed point."""
    canvas, stride = geometry
    hw = (feature_size(canvas[0], stride), feature_size(canvas[1], stride))
    p = (data.draw(st.integers(0, hw[0] - 1), "py"), data.draw(st.integers(0, hw[1] - 1), "px"))
    x = torch.zeros(1, 1, *hw, dtype=torch.float64)
    x[0, 0, p[0], p[1]] = 1.0
    out = rotate_grid(x, angle, stride=stride, canvas_size=canvas, flip=flip)[0, 0].numpy()
    view = rotated_canvas_size(canvas, angle)
    assert out.shape == (feature_size(view[0], stride), feature_size(view[1], stride))
    q = np.stack(np.mgrid[0:out.shape[0], 0:out.shape[1]], -1).astype(np.float64)
    pre = rotate_points(q, angle, view, stride=stride, flip=True) if flip else \
        rotate_points(q, -angle, view, stride=stride)
    expected = tent(pre[..., 0] - p[0]) * tent(pre[..., 1] - p[1])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)
    centre = rotate_points(np.array(canvas_centre(canvas, stride)), angle, canvas, stride=stride, flip=flip)
    np.testing.assert_allclose(centre, canvas_centre(view, stride), atol=1e-9)


def test_empty_batch_and_zero_size_maps():
    """An empty batch (B = 0) rotates to an empty batch; a map with a zero side is a clear error."""
    gs = gspace(4, False)
    ft = enn.FieldType(gs, [gs.regular_repr, gs.fibergroup.irrep(1), gs.fibergroup.irrep(2)])
    for angle in (90, 180, 30):
        out = rotate_fields(torch.zeros(0, ft.size, 5, 7), ft, angle, fibre_interp="linear")
        assert out.shape == (0, ft.size) + tuple(rotate_grid(torch.zeros(1, 1, 5, 7), angle).shape[-2:])
    with pytest.raises(ValueError, match=r"at least 1x1 pixels, got shape \(1, 7, 0, 5\)"):
        rotate_fields(torch.zeros(1, ft.size, 0, 5), ft, 90)
    # the fibre operator on (B, C) and (B, C, L) tensors (signs of the 180° irreps included)
    op = fibre_operator(ft, 180)
    m = torch.tensor(op.matrix())
    v = torch.randn(3, ft.size, dtype=torch.float64)
    torch.testing.assert_close(op.apply(v), v @ m.T)
    v3 = torch.randn(3, ft.size, 7, dtype=torch.float64)
    torch.testing.assert_close(op.apply(v3), torch.einsum("ij,bjl->bil", m, v3))


def test_canvas_accepts_numpy_integers():
    assert equivariant_canvas_shape((np.int64(1024), np.int32(20)), np.int64(128)) == (1025, 129)
    assert feature_size(np.int64(1025), np.int64(8)) == 129
    with pytest.raises(ValueError, match="image size must be a positive integer, got 0"):
        equivariant_canvas_shape((0, 20), 128)


# ================================================================================================================
# box mapping: properties
# ================================================================================================================

def _le90_valid(t: torch.Tensor) -> bool:
    """le90's angle range, compared in the tensor's dtype (float32(-pi/2) < -pi/2 in float64)."""
    return bool(((t >= -math.pi / 2) & (t < math.pi / 2)).all())


def _max(t: torch.Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0


def _angle_diff(a, b):
    """Distance of two box angles modulo pi (a box is symmetric under half turns)."""
    d = torch.remainder(a - b, math.pi)
    return torch.minimum(d, math.pi - d)


def _same_corner_sets(p: torch.Tensor, q: torch.Tensor, tol: float) -> None:
    """(n, 4, 2) polygons equal as sets of corners (the wrap into le90 may start the corner list elsewhere)."""
    d = (p[:, :, None, :] - q[:, None, :, :]).norm(dim=-1)         # (n, 4, 4)
    assert _max(d.min(2).values) <= tol
    assert _max(d.min(1).values) <= tol


@st.composite
def rboxes(draw, canvas, angle_range=(-math.pi / 2, math.pi / 2), max_n: int = 6):
    h, w = canvas
    n = draw(st.integers(0, max_n))
    rows = []
    for _ in range(n):
        t = draw(st.floats(*angle_range, exclude_max=True, allow_nan=False))
        rows.append([draw(st.floats(-50, w + 50)), draw(st.floats(-50, h + 50)),
                     draw(st.one_of(st.just(0.0), st.floats(0, 300))),
                     draw(st.one_of(st.just(0.0), st.floats(0, 300))), t])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)


ANGLES = st.one_of(st.integers(-12, 12).map(lambda k: 90.0 * k), st.integers(-16, 16).map(lambda k: 45.0 * k),
                   st.floats(-1000, 1000, allow_nan=False))
CANVAS = st.tuples(st.integers(1, 3000), st.integers(1, 3000))


@PROP
@given(canvas=CANVAS, data=st.data(), angle=ANGLES, flip=st.booleans())
def test_box_mapping_properties(canvas, data, angle, flip):
    """Random le90 boxes (w, h >= 0, zero included), canvases and angles (negative, beyond 360°, 45° and 90°
    multiples): the round trip is the identity, the result is le90 (angle range, w and h kept), and the mapped box
    is the rotated box: its corners are the rotated corners."""
    boxes = data.draw(rboxes(canvas), "boxes")
    there = rotate_rboxes(boxes, angle, canvas, flip=flip)
    assert there.shape == boxes.shape and there.dtype == boxes.dtype
    assert _le90_valid(there[:, 4])
    assert torch.equal(there[:, 2:4], boxes[:, 2:4])
    tol = 1e-9 * (1 + max(canvas))
    corners = rotate_points(rbox_to_polygon(boxes), angle, canvas, flip=flip, order="xy")
    _same_corner_sets(rbox_to_polygon(there), corners, tol)
    back = unrotate_rboxes(there, angle, canvas, flip=flip)
    assert _le90_valid(back[:, 4])
    torch.testing.assert_close(back[:, :4], boxes[:, :4], rtol=0, atol=tol)
    assert _max(_angle_diff(back[:, 4], boxes[:, 4])) <= 1e-9
    # mmrotate's le90 also wants w >= h: the mapping keeps it, and mmrotate's regulariser leaves the box alone
    from mmrotate.structures.bbox import RotatedBoxes

    long = there[there[:, 2] > there[:, 3]]
    reg = RotatedBoxes(long.clone()).regularize_boxes("le90")
    torch.testing.assert_close(reg[:, :4], long[:, :4], rtol=0, atol=0)
    assert _max(_angle_diff(reg[:, 4], long[:, 4])) <= 1e-12


@PROP
@given(canvas=CANVAS, data=st.data(), angle=ANGLES, flip=st.booleans(), turns=st.integers(-5, 5))
def test_box_angles_outside_le90_are_normalised(canvas, data, angle, flip, turns):
    """Input angles anywhere (outside [-pi/2, pi/2), plus whole half turns): the same box, so the same result;
    a rotation by 0° only normalises the angle."""
    boxes = data.draw(rboxes(canvas, angle_range=(-20.0, 20.0)), "boxes")
    shifted = boxes.clone()
    shifted[:, 4] += turns * math.pi
    a, b = rotate_rboxes(boxes, angle, canvas, flip=flip), rotate_rboxes(shifted, angle, canvas, flip=flip)
    assert _le90_valid(a[:, 4]) and _le90_valid(b[:, 4])
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    assert _max(_angle_diff(a[:, 4], b[:, 4])) <= 1e-9
    same = rotate_rboxes(boxes, 0.0, canvas)
    torch.testing.assert_close(same[:, :4], boxes[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(same[:, 4], wrap_le90(boxes[:, 4]), rtol=0, atol=0)


@PROP
@given(t=st.floats(-100, 100, allow_nan=False), ulps=st.integers(-3, 3), k=st.integers(-20, 20),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_wrap_le90_stays_in_range_at_the_boundary(t, ulps, k, dtype):
    """Angles at (and a few ulps around) -pi/2 + k pi, the cut of le90, and anywhere else."""
    edge = torch.tensor(-math.pi / 2 + k * math.pi, dtype=dtype)
    step = torch.tensor(math.inf if ulps > 0 else -math.inf, dtype=dtype)
    for _ in range(abs(ulps)):
        edge = torch.nextafter(edge, step)
    for v in (edge, torch.tensor(t, dtype=dtype)):
        w = wrap_le90(v)
        assert _le90_valid(w)
        eps = 1e-15 if dtype == torch.float64 else 1e-7
        assert float(_angle_diff(w.double(), v.double())) <= 4 * eps * (2 + abs(float(v)))
    # the case that wrapped to +pi/2 before the fix
    below = torch.nextafter(torch.tensor(-math.pi / 2, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64))
    assert _le90_valid(wrap_le90(below))


def test_bad_boxes_are_named():
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        rotate_rboxes(torch.zeros(2, 5, dtype=torch.long), 90, (11, 11))
    with pytest.raises(ValueError, match=r"\(n, 5\) tensor .* got \(2, 4\)"):
        rotate_rboxes(torch.zeros(2, 4), 90, (11, 11))
    assert rotate_rboxes(torch.zeros(0, 5), 30, (11, 11)).shape == (0, 5)
    nan = rotate_rboxes(torch.tensor([[1.0, float("nan"), 2.0, 1.0, 0.0]]), 90, (11, 11))
    assert nan[0, 2:4].tolist() == [2.0, 1.0] and torch.isnan(nan[0, :2]).any()     # NaN propagates, documented


# ================================================================================================================
# every config: a consistent equivariant geometry
# ================================================================================================================

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py"))


def _values_of(cfg, key):
    """Every value of ``key`` anywhere in a nested config."""
    out = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k == key:
                out.append(v)
            out += _values_of(v, key)
    elif isinstance(cfg, (list, tuple)):
        for v in cfg:
            out += _values_of(v, key)
    return out


def _prior_strides(head):
    gen = getattr(head, "prior_generator", None) or getattr(head, "anchor_generator", None)
    return [int(s[0]) if isinstance(s, (tuple, list)) else int(s) for s in gen.strides]


def _unscoped(pipeline):
    """A pipeline without the ``_scope_`` tags mmengine adds to some of a base config's steps."""
    return [{k: v for k, v in step.items() if k != "_scope_"} for step in pipeline]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_has_a_consistent_equivariant_geometry(config):
    """Beyond "it builds" (tests/test_detectors.py): the canvas stride covers, and is a multiple of, every stride a
    head or RoI extractor uses; the heads read exactly the neck's levels; the neck declares its fields (feature
    TTA works); the boxes are le90 everywhere (the box mapping's convention). Built shrunk (the geometry is the
    config's; only channel counts change)."""
    from mmrotate.registry import MODELS
    from rotplugin.models import EquivariantDetDataPreprocessor, EquivariantFPN, EquivariantResNet
    from rotplugin.equivariance import feature_pyramid
    from rotplugin.presets import load_config, shrink_detector_config

    full = load_config(str(ROOT / config))
    assert full.custom_imports.imports == ["rotplugin.mm"]
    # rotation TTA (tools/test.py --tta): feature TTA merged with the detector's own test thresholds, on the test
    # pipeline (views are made on the canvas, not by a TestTimeAug pipeline)
    test_cfg = full.model.test_cfg.get("rcnn", full.model.test_cfg)
    assert full.tta_model.type == "FeatureRotationTTAModel"
    assert (full.tta_model.score_thr, full.tta_model.iou_thr, full.tta_model.max_per_img) == \
        (test_cfg.score_thr, test_cfg.nms.iou_threshold, test_cfg.max_per_img)
    assert _unscoped(full.tta_pipeline) == _unscoped(full.test_dataloader.dataset.pipeline)
    cfg = shrink_detector_config(full)
    model = MODELS.build(cfg.model)
    pre, backbone, neck = model.data_preprocessor, model.backbone, model.neck
    assert isinstance(pre, EquivariantDetDataPreprocessor)
    assert isinstance(backbone, EquivariantResNet) and isinstance(neck, EquivariantFPN)
    pyramid = feature_pyramid(model)
    field_types, strides = pyramid.field_types, pyramid.strides
    assert strides == neck.out_strides and len(field_types) == len(strides) == full.model.neck.num_outs
    for ft in field_types:
        assert ft.gspace.fibergroup == backbone.gspace.fibergroup
        assert ft.size == cfg.model.neck.out_channels
    used = set(strides)
    for name in ("bbox_head", "rpn_head"):
        head = getattr(model, name, None)
        if head is not None and hasattr(head, "prior_generator"):
            assert _prior_strides(head) == strides, f"{name} reads other levels than the neck gives"
    if getattr(model, "roi_head", None) is not None:
        extractors = model.roi_head.bbox_roi_extractor
        for extractor in extractors if isinstance(extractors, torch.nn.ModuleList) else [extractors]:
            assert set(extractor.featmap_strides) <= set(strides)
            used |= set(extractor.featmap_strides)
    for s in used:
        assert pre.max_stride % s == 0, f"canvas ≡ 1 (mod {pre.max_stride}) is not ≡ 1 (mod {s})"
    assert pre.max_stride >= max(used)
    img = (1024, 1024)
    assert equivariant_canvas_shape(img, pre.max_stride) == (1025, 1025)
    assert set(_values_of(full.model.to_dict(), "angle_version")) <= {"le90"}
    assert _values_of(full.model.to_dict(), "angle_version"), "no angle_version in the model"


# ================================================================================================================
# malformed inputs on a tiny Rotated RetinaNet (CPU)
# ================================================================================================================

RETINA = "configs/rotated_retinanet/rotated-retinanet-rbox-le90_er50-c8_efpn_1x_dota.py"
GOOD_BOXES = [[40.0, 50.0, 30.0, 12.0, 0.3], [90.0, 80.0, 24.0, 20.0, -0.7]]


@pytest.fixture(scope="module")
def detector():
    from mmrotate.registry import MODELS
    from rotplugin.presets import load_config, shrink_detector_config

    torch.manual_seed(0)
    cfg = shrink_detector_config(load_config(str(ROOT / RETINA)))
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def make_batch(boxes_per_image=(GOOD_BOXES,), sizes=None, images=None):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from mmrotate.structures.bbox import RotatedBoxes

    n = len(boxes_per_image)
    sizes = sizes or [(129, 129)] * n
    inputs, samples = [], []
    for i, (boxes, (h, w)) in enumerate(zip(boxes_per_image, sizes)):
        img = images[i] if images is not None else torch.from_numpy(
            np.random.default_rng(i).integers(0, 255, (3, h, w), dtype=np.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                             img_id=f"img{i}", img_path=f"images/img{i}.png"))
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
        sample.gt_instances = InstanceData(bboxes=RotatedBoxes(b), labels=torch.zeros(len(b), dtype=torch.long))
        sample.ignored_instances = InstanceData(bboxes=RotatedBoxes(torch.zeros(0, 5)),
                                                labels=torch.zeros(0, dtype=torch.long))
        inputs.append(img)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def train_losses(model, batch, backward=False):
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode="loss")
    loss, _ = model.parse_losses(losses)
    if backward:
        model.zero_grad()
        loss.backward()
    return loss, losses, data


def _box_tensor(boxes) -> torch.Tensor:
    return boxes.tensor if hasattr(boxes, "tensor") else boxes


def _float_image(h=129, w=129):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("training", [True, False])
def test_nan_inf_images_raise_naming_the_sample(detector, bad, training):
    good, broken = _float_image(), _float_image()
    broken[1, 7, 9] = bad
    batch = make_batch([GOOD_BOXES, GOOD_BOXES], images=[good, broken])
    with pytest.raises(ValueError, match=r"NaN or Inf pixel values .* in sample 1 \(img_path='images/img1.png', "
                                         r"img_id='img1'\)"):
        detector.data_preprocessor(batch, training)
    # documented opt-out: the values go through unchanged
    from rotplugin.models import EquivariantDetDataPreprocessor

    pre = EquivariantDetDataPreprocessor(max_stride=128, check_finite=False, boxtype2tensor=False)
    out = pre(make_batch([GOOD_BOXES], images=[broken]), training)
    assert not torch.isfinite(out["inputs"]).all()


@pytest.mark.parametrize("shape", [(3, 0, 20), (3, 20, 0), (3, 0, 0)])
def test_zero_size_images_raise_naming_the_sample(detector, shape):
    batch = make_batch([GOOD_BOXES, []], images=[_float_image(), torch.zeros(shape, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"sample 1 \(img_path='images/img1.png', img_id='img1'\) is an empty "
                                         rf"image of shape \({shape[0]}, {shape[1]}, {shape[2]}\)"):
        detector.data_preprocessor(batch, True)
    single = make_batch([[]], images=[torch.zeros(shape, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="empty image"):
        detector.test_step(single)


def test_image_smaller_than_the_largest_stride_pads_trains_and_predicts(detector):
    """20x30 px with strides up to 128: padded to the canvas 129x129 (documented), finite loss, gradients reach
    the backbone, predictions come back in the image's coordinates."""
    batch = make_batch([[[12.0, 9.0, 14.0, 6.0, 0.4]]], sizes=[(20, 30)])
    loss, losses, data = train_losses(detector, batch, backward=True)
    assert tuple(data["inputs"].shape[-2:]) == (129, 129)
    assert data["data_samples"][0].batch_input_shape == (129, 129)
    assert torch.isfinite(loss) and sum(v.item() for v in losses["loss_bbox"]) > 0
    grad = detector.backbone.layer2[0].conv1.conv.weights.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    detector.eval()
    with torch.no_grad():
        pred = detector.test_step(make_batch([[[12.0, 9.0, 14.0, 6.0, 0.4]]], sizes=[(20, 30)]))[0].pred_instances
    boxes = _box_tensor(pred.bboxes)
    assert boxes.shape[-1] == 5 and torch.isfinite(boxes).all()


def test_empty_ground_truth_trains(detector):
    """An image without objects (alone, or beside one with objects): finite loss, no box loss from it, and an
    optimiser step on it leaves the weights finite so training continues."""
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    try:
        loss, losses, _ = train_losses(detector, make_batch([[]]), backward=True)
        assert torch.isfinite(loss) and sum(v.item() for v in losses["loss_bbox"]) == 0
        opt = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01)
        opt.step()
        assert all(torch.isfinite(p).all() for p in detector.parameters())
        loss, losses, _ = train_losses(detector, make_batch([[], GOOD_BOXES]))
        assert torch.isfinite(loss) and sum(v.item() for v in losses["loss_bbox"]) > 0
    finally:
        detector.load_state_dict(state)


DEGENERATE = [[60.0, 60.0, 0.0, 12.0, 0.3], [60.0, 60.0, 20.0, 0.0, -1.0], [60.0, 60.0, 0.0, 0.0, 0.0],
              [60.0, 60.0, -5.0, 10.0, 0.2]]


def test_degenerate_boxes_are_dropped_with_a_warning(detector):
    """w or h = 0 (or negative): without the filter the regression target log(w / anchor w) is -inf and the loss
    infinite; the preprocessor drops such boxes with a warning naming the sample, and the other boxes train as if
    the degenerate ones were not there. An image left without boxes trains as an empty image."""
    from rotplugin.models.data_preprocessor import DegenerateBoxWarning

    with pytest.warns(DegenerateBoxWarning, match=r"dropped 4 ground-truth box.*sample 0 \(img_path="):
        loss, losses, data = train_losses(detector, make_batch([DEGENERATE[:2] + GOOD_BOXES + DEGENERATE[2:]]))
    assert torch.isfinite(loss) and sum(v.item() for v in losses["loss_bbox"]) > 0
    kept = data["data_samples"][0].gt_instances
    assert len(kept) == 2 and torch.equal(_box_tensor(kept.bboxes), torch.tensor(GOOD_BOXES))
    reference, _, _ = train_losses(detector, make_batch([GOOD_BOXES]))
    torch.testing.assert_close(loss, reference, rtol=0, atol=0)
    with pytest.warns(DegenerateBoxWarning, match=r"dropped 1 ground-truth box.*sample 1 "):
        loss, losses, _ = train_losses(detector, make_batch([[], [DEGENERATE[0]]]))
    assert torch.isfinite(loss) and sum(v.item() for v in losses["loss_bbox"]) == 0


def test_boxes_outside_the_image_are_dropped_with_a_warning(detector):
    """A box that overlaps no anchor would make every anchor its positive (mmrotate's assigner with
    min_pos_iou=0): boxes lying entirely outside the image are dropped with a warning; boxes that only cross the
    border are kept."""
    from rotplugin.models.data_preprocessor import DegenerateBoxWarning

    outside = [[-500.0, -500.0, 30.0, 12.0, 0.3], [129.0 + 20, 50.0, 30.0, 10.0, 0.0], [50.0, -8.0, 40.0, 10.0, 0.0]]
    crossing = [[-5.0, 60.0, 30.0, 12.0, 0.0], [60.0, 135.0, 30.0, 12.0, 1.2], [50.0, -12.0, 40.0, 10.0, 1.5]]
    batch = make_batch([GOOD_BOXES + outside + crossing])
    with pytest.warns(DegenerateBoxWarning, match=r"dropped 3 ground-truth box.*no overlap with the image"):
        _, losses, data = train_losses(detector, batch)
    kept = _box_tensor(data["data_samples"][0].gt_instances.bboxes)
    assert torch.equal(kept, torch.tensor(GOOD_BOXES + crossing))
    assert torch.isfinite(sum(v.sum() for v in losses["loss_bbox"]))


def test_non_finite_ground_truth_raises(detector):
    with pytest.raises(ValueError, match=r"sample 0 .* ground-truth boxes with NaN or Inf"):
        train_losses(detector, make_batch([GOOD_BOXES + [[60.0, float("nan"), 10.0, 10.0, 0.0]]]))


def test_ground_truth_angles_outside_le90_give_the_same_loss(detector):
    """The same boxes written with angles outside [-pi/2, pi/2) (half turns added, or w/h swapped with a quarter
    turn): mmrotate's coder regularises them, the loss is the one of the le90 boxes."""
    reference, _, _ = train_losses(detector, make_batch([GOOD_BOXES]))
    (x1, y1, w1, h1, t1), (x2, y2, w2, h2, t2) = GOOD_BOXES
    for boxes in ([[x1, y1, w1, h1, t1 + math.pi], [x2, y2, w2, h2, t2 - 3 * math.pi]],
                  [[x1, y1, h1, w1, t1 + math.pi / 2], [x2, y2, h2, w2, t2 - math.pi / 2 + 4 * math.pi]]):
        loss, _, _ = train_losses(detector, make_batch([boxes]))
        torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def test_tta_with_no_detections_returns_empty_results(detector):
    """No box above the heads' score threshold in any view (and, separately, none above the TTA's): the merged
    result is empty (0 boxes of 5 values), not an error."""
    from rotplugin.models import FeatureRotationTTAModel

    detector.eval()
    head_cfg = detector.bbox_head.test_cfg
    old = head_cfg.score_thr
    try:
        head_cfg.score_thr = 1.01                      # sigmoid scores never reach it: every view is empty
        tta = FeatureRotationTTAModel(detector, angles=[0, 90, 180, 270], score_thr=0.0)
        pred = tta.test_step(make_batch([GOOD_BOXES], sizes=[(20, 30)]))[0].pred_instances
        assert _box_tensor(pred.bboxes).shape == (0, 5) and len(pred.scores) == len(pred.labels) == 0
        head_cfg.score_thr = 0.0                       # the views have boxes, the merge keeps none
        with torch.no_grad():
            assert len(detector.test_step(make_batch([GOOD_BOXES]))[0].pred_instances) > 0
        tta = FeatureRotationTTAModel(detector, angles=[0, 90], score_thr=2.0)
        pred = tta.test_step(make_batch([GOOD_BOXES]))[0].pred_instances
        assert _box_tensor(pred.bboxes).shape == (0, 5) and len(pred.scores) == len(pred.labels) == 0
    finally:
        head_cfg.score_thr = old
