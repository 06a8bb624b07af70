"""Tests of rotplugin.fields: escnn agreement, group laws, off-centre canvases, fibre rules, autograd, dtypes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from escnn import gspaces
from escnn import group as egroup
from escnn import nn as enn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from rotplugin import fields
from rotplugin.canvas import canvas_centre
from rotplugin.canvas import rotate_points, rotated_canvas_size, rotation_matrix_and_offset
from rotplugin.fields import FieldRotation, fibre_operator, rotate_fields, rotate_grid, rotate_pyramid

# derandomize: CI sees the same examples every run (a failure is reproducible, never a fluke of the draw)
HYP = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

GSPACES = {
    "C4": gspaces.rot2dOnR2(4),
    "C8": gspaces.rot2dOnR2(8),
    "D4": gspaces.flipRot2dOnR2(4),
    "D8": gspaces.flipRot2dOnR2(8),
}


def _order(gs) -> tuple[int, bool]:
    """(N, dihedral) read from the group itself."""
    g = gs.fibergroup
    if isinstance(g, egroup.DihedralGroup):
        return g.order() // 2, True
    return g.order(), False


def _dense_rep(name: str):
    """A representation with a non-trivial change of basis (dense, non-permutation ρ(g))."""
    gs = GSPACES[name]
    g = gs.fibergroup
    rep_name = f"rotplugin_test_dense_{name}"
    if rep_name in g.representations:
        return g.representations[rep_name]
    _, dihedral = _order(gs)
    irreps = [g.irrep(1, 1), g.irrep(1, 0), g.irrep(0, 0)] if dihedral else [g.irrep(1), g.irrep(0)]
    size = sum(r.size for r in irreps)
    q, _ = np.linalg.qr(np.random.default_rng(size).standard_normal((size, size)))
    return egroup.directsum(irreps, change_of_basis=q, name=rep_name)


def _quotient(name: str):
    gs = GSPACES[name]
    return gs.quotient_repr((None, 2)) if _order(gs)[1] else gs.quotient_repr(2)


def field_type(name: str, kind: str) -> enn.FieldType:
    gs = GSPACES[name]
    g = gs.fibergroup
    irreps = list(g.irreps())
    reps = {
        "trivial": [gs.trivial_repr] * 3,
        "regular": [gs.regular_repr] * 2,
        "irreps": irreps,                                   # includes the 1-D frequency-N/2 ones
        "quotient": [_quotient(name)] * 2 + ([gs.quotient_repr((0, 1))] if _order(gs)[1] else []),
        "dense": [_dense_rep(name)] * 2,
        "mixed": [gs.trivial_repr, gs.regular_repr, irreps[-1], _quotient(name), irreps[2], _dense_rep(name),
                  gs.regular_repr],
    }[kind]
    return enn.FieldType(gs, reps)


KINDS = ["trivial", "regular", "irreps", "quotient", "dense", "mixed"]


def _angle_flip(element, n: int) -> tuple[float, bool]:
    v = element.to("int")
    f, k = v if isinstance(v, tuple) else (0, v)
    return 360.0 * k / n, bool(f)


def _exact_channels(ft) -> torch.Tensor:
    """Channels of the fields whose ρ(g) at quarter turns is a signed permutation (not the dense test field, whose
    matrix products round differently from escnn's single matrix)."""
    return torch.cat([torch.full((r.size,), not r.name.startswith("rotplugin_test_dense"))
                      for r in ft.representations])


def _escnn(x, ft, element):
    return enn.GeometricTensor(x, ft).transform(element).tensor


def _rel_err(a, b, mask=None):
    d, r = a - b, b
    if mask is not None:
        d, r = d[..., mask], r[..., mask]
    return (d.norm() / r.norm()).item()


def reference_rotate(img: np.ndarray, angle: float, stride: int, canvas, out_hw=None, flip=False) -> np.ndarray:
    """Independent resampling (scipy, order 1, zeros outside) written from canvas.py's conventions:
    +θ maps (y, x) about the centre to (y cos θ - x sin θ, y sin θ + x cos θ); output pixel q samples the input at
    the preimage of q. ``img``: (C, h, w)."""
    h_c, w_c = canvas
    quarter = abs(angle / 90.0 - round(angle / 90.0)) < 1e-12
    odd = quarter and round(angle / 90.0) % 2 == 1
    rot_canvas = (w_c, h_c) if odd else (h_c, w_c)
    if out_hw is None:
        out_hw = ((rot_canvas[0] - 1) // stride + 1, (rot_canvas[1] - 1) // stride + 1)
    cy, cx = (h_c - 1) / (2 * stride), (w_c - 1) / (2 * stride)
    oy, ox = (rot_canvas[0] - 1) / (2 * stride), (rot_canvas[1] - 1) / (2 * stride)
    t = math.radians(angle)
    c, s = (round(math.cos(t)), round(math.sin(t))) if quarter else (math.cos(t), math.sin(t))
    i, j = np.mgrid[0:out_hw[0], 0:out_hw[1]].astype(np.float64)
    dy, dx = i - oy, j - ox
    ry, rx = c * dy + s * dx, -s * dy + c * dx          # R(-θ) (dy, dx)
    if flip:
        rx = -rx                                         # the mirror x -> -x is its own inverse
    coords = np.stack([cy + ry, cx + rx])
    return np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="grid-constant", cval=0.0) for ch in img])


# ----------------------------------------------------------------------------------------------------------------
# escnn agreement
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group_name", list(GSPACES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hw", [(9, 9), (7, 11)])
def test_quarter_turns_equal_escnn_transform(group_name, kind, hw):
    ft = field_type(group_name, kind)
    n, _ = _order(ft.gspace)
    x = torch.randn(2, ft.size, *hw, generator=torch.Generator().manual_seed(1))
    checked = 0
    for element in ft.gspace.fibergroup.elements:
        angle, flip = _angle_flip(element, n)
        ref = _escnn(x, ft, element)
        if angle % 90 == 0:
            out = rotate_fields(x, ft, angle, flip=flip)
            assert out.shape == ref.shape
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
            if kind in ("trivial", "regular", "quotient"):
                assert torch.equal(out, ref), (element, "permutation fields must be bitwise equal")
            checked += 1
        # the fibre part on its own, for every element (45° ones included)
        fib = fibre_operator(ft, angle, flip=flip).apply(x)
        torch.testing.assert_close(fib, enn.GeometricTensor(x, ft).transform_fibers(element).tensor,
                                   rtol=0, atol=1e-6)
    assert checked == (8 if _order(ft.gspace)[1] else 4)


@pytest.mark.parametrize("group_name", ["C8", "D8"])
def test_eighth_turns_match_escnn_on_smooth_fields(group_name):
    """45° elements: escnn interpolates with order-2 splines, we bilinearly; on a smooth field both agree inside a
    disc, and the opposite spatial direction does not."""
    ft = field_type(group_name, "mixed")
    s = 33
    yy, xx = np.mgrid[0:s, 0:s] - (s - 1) / 2
    blob = np.exp(-((yy - 3) ** 2 + (xx + 5) ** 2) / 50.0) + 0.5 * np.exp(-((yy + 4) ** 2 + (xx - 2) ** 2) / 32.0)
    x = torch.tensor(blob, dtype=torch.float32)[None, None] * torch.randn(1, ft.size, 1, 1)
    disc = torch.tensor(yy ** 2 + xx ** 2 <= 144)
    n, _ = _order(ft.gspace)
    for element in ft.gspace.fibergroup.elements:
        angle, flip = _angle_flip(element, n)
        if angle % 90 == 0:
            continue
        ref = _escnn(x, ft, element)
        assert _rel_err(rotate_fields(x, ft, angle, flip=flip), ref, disc) < 0.01
        wrong = fibre_operator(ft, angle, flip=flip).apply(rotate_grid(x, -angle, flip=flip))
        assert _rel_err(wrong, ref, disc) > 0.3


def test_direction_and_mirror_conventions():
    """+90° is torch.rot90(k=1, dims=(-2, -1)) and escnn's r; flip is x -> -x first, then the rotation."""
    x = torch.randn(1, 1, 5, 7)
    c4, d4 = GSPACES["C4"], GSPACES["D4"]
    ft_c = enn.FieldType(c4, [c4.trivial_repr])
    ft_d = enn.FieldType(d4, [d4.trivial_repr])
    rot = torch.rot90(x, 1, dims=(-2, -1))
    assert torch.equal(rotate_fields(x, ft_c, 90), rot)
    assert torch.equal(_escnn(x, ft_c, c4.fibergroup.element(1)), rot)
    assert torch.equal(rotate_fields(x, ft_d, 0, flip=True), x.flip(-1))
    assert torch.equal(_escnn(x, ft_d, d4.fibergroup.element((1, 0))), x.flip(-1))
    assert torch.equal(rotate_fields(x, ft_d, 90, flip=True), torch.rot90(x.flip(-1), 1, dims=(-2, -1)))
    g = d4.fibergroup
    assert g.element((0, 1)) @ g.element((1, 0)) == g.element((1, 1))   # (1, k) = r^k m
    # the point map agrees: +90° sends (y, x) relative to the centre to (-x, y); the mirror (y, x) to (y, -x)
    a, t = rotation_matrix_and_offset(90, (5, 7))
    assert np.array_equal(a, [[0, -1], [1, 0]])
    p = np.array([1.0, 2.0])
    centre_in, centre_out = np.array(canvas_centre((5, 7))), np.array(canvas_centre((7, 5)))
    np.testing.assert_allclose(rotate_points(centre_in + p, 90, (5, 7)), centre_out + [-2.0, 1.0])
    np.testing.assert_allclose(rotate_points(centre_in + p, 0, (5, 7), flip=True), centre_in + [1.0, -2.0])
    # onto a larger canvas (out_size): centre onto centre, the same rotation; (x, y) order mirrors the matrix
    q = rotate_points(centre_in + p, 30, (5, 7), out_size=(11, 13))
    c30, s30 = math.cos(math.radians(30)), math.sin(math.radians(30))
    np.testing.assert_allclose(q, np.array(canvas_centre((11, 13))) + [c30 * 1 - s30 * 2, s30 * 1 + c30 * 2])
    np.testing.assert_allclose(rotate_points((centre_in + p)[::-1], 30, (5, 7), out_size=(11, 13), order="xy"),
                               q[::-1])
    with pytest.raises(ValueError, match="canvas_size"):
        rotate_points(p, 30, (5, 7), out_size=(0, 13))
    # and the reference resampler used below has the same direction
    np.testing.assert_allclose(reference_rotate(x[0].double().numpy(), 90, 1, (5, 7)), rot[0].double().numpy())


# ----------------------------------------------------------------------------------------------------------------
# group laws
# ----------------------------------------------------------------------------------------------------------------

LAW_TYPES = {name: field_type(name, "mixed") for name in ("C4", "D4", "C8")}


@HYP
@given(name=st.sampled_from(sorted(LAW_TYPES)), a=st.integers(-6, 6), b=st.integers(-6, 6),
       fa=st.booleans(), fb=st.booleans(), h=st.integers(1, 8), w=st.integers(1, 8))
def test_quarter_turn_composition_is_exact(name, a, b, fa, fb, h, w):
    ft = LAW_TYPES[name]
    dihedral = _order(ft.gspace)[1]
    fa, fb = fa and dihedral, fb and dihedral
    x = torch.randn(2, ft.size, h, w, dtype=torch.float64)
    once = rotate_fields(rotate_fields(x, ft, 90 * a, flip=fa), ft, 90 * b, flip=fb)
    # (r^b m^fb)(r^a m^fa) = r^(b + (-1)^fb a) m^(fa + fb)
    both = rotate_fields(x, ft, 90 * (b + (-a if fb else a)), flip=fa != fb)
    exact = _exact_channels(ft)
    assert torch.equal(once[:, exact], both[:, exact])
    torch.testing.assert_close(once, both, rtol=0, atol=1e-12)
    if a + b == 0 and not fa and not fb:
        assert torch.equal(once[:, exact], x[:, exact])
        torch.testing.assert_close(once, x, rtol=0, atol=1e-12)


@HYP
@given(m=st.integers(-3, 3), angle=st.floats(-720, 720, allow_nan=False))
def test_full_turns_are_identity(m, angle):
    ft = LAW_TYPES["C8"]
    x = torch.randn(1, ft.size, 6, 9, dtype=torch.float64)
    assert torch.equal(rotate_fields(x, ft, 360 * m), x)
    a = rotate_fields(x, ft, angle, fibre_interp="linear")
    b = rotate_fields(x, ft, angle + 360 * m, fibre_interp="linear")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def _smooth_field(ft, size=41, sigma=4.0):
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    blob = np.exp(-((yy - 4) ** 2 + (xx + 3) ** 2) / (2 * sigma ** 2))
    blob += 0.7 * np.exp(-((yy + 5) ** 2 + (xx - 4) ** 2) / (2 * (sigma * 0.8) ** 2))
    coef = torch.randn(1, ft.size, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return torch.tensor(blob)[None, None] * coef, torch.tensor(yy ** 2 + xx ** 2 <= 14 ** 2)


@HYP
@given(a=st.integers(-8, 8), b=st.integers(-8, 8))
def test_orientation_step_composition_is_close(a, b):
    """Multiples of 45° for C8 fields: the fibre part composes exactly, the bilinear spatial part closely."""
    ft = LAW_TYPES["C8"]
    x, disc = _smooth_field(ft)
    once = rotate_fields(rotate_fields(x, ft, 45 * a), ft, 45 * b)
    both = rotate_fields(x, ft, 45 * (a + b))
    assert _rel_err(once, both, disc) < 0.02
    if a % 2 == 0 and b % 2 == 0:
        exact = _exact_channels(ft)
        assert torch.equal(once[:, exact], both[:, exact])


# ----------------------------------------------------------------------------------------------------------------
# canvases whose centre is not a feature pixel, padding / cropping, points
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("canvas", [(1024, 1024), (1024, 768)])
@pytest.mark.parametrize("angle", [90, 180, 30, -135])
def test_fractional_centre_matches_reference(canvas, angle):
    stride = 8
    h, w = [(n - 1) // stride + 1 for n in canvas]     # 1024 -> 128 pixels, centre 63.9375
    assert canvas_centre(canvas, stride)[0] == 63.9375
    img = np.random.default_rng(angle % 360).standard_normal((3, h, w))
    out = rotate_grid(torch.tensor(img)[None], angle, stride=stride, canvas_size=canvas)[0].numpy()
    ref = reference_rotate(img, angle, stride, canvas)
    assert out.shape == ref.shape == (3,) + tuple((n - 1) // stride + 1 for n in rotated_canvas_size(canvas, angle))
    np.testing.assert_allclose(out, ref, atol=1e-9)
    # and the naive exact rotation is *not* the answer here: the centre moved by a fraction of a pixel
    if angle % 90 == 0:
        naive = np.rot90(img, angle // 90, axes=(-2, -1))
        assert np.abs(out - naive).max() > 0.1


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_fractional_centre_rotates_fibres(angle):
    ft = field_type("C4", "mixed")
    x = torch.randn(1, ft.size, 128, 128, dtype=torch.float64)
    out = rotate_fields(x, ft, angle, stride=8, canvas_size=(1024, 1024))
    spatial = torch.tensor(reference_rotate(x[0].numpy(), angle, 8, (1024, 1024)))[None]
    ref = torch.tensor(fibre_operator(ft, angle).matrix()) @ spatial.flatten(2)
    torch.testing.assert_close(out, ref.view_as(out), rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", [
    dict(hw=(7, 9), canvas=(17, 25), stride=4, out=None),        # map larger than the canvas' grid: crop
    dict(hw=(3, 4), canvas=(17, 25), stride=4, out=None),        # smaller: zeros come in
    dict(hw=(5, 7), canvas=(17, 25), stride=4, out=(9, 6)),      # explicit out_size
    dict(hw=(6, 6), canvas=(11, 11), stride=2, out=(6, 6)),      # even map of an odd-grid canvas
])
@pytest.mark.parametrize("angle", [0, 90, 180, 270])
@pytest.mark.parametrize("flip", [False, True])
def test_integral_offsets_are_exact_with_pad_and_crop(case, angle, flip):
    img = np.random.default_rng(0).standard_normal((2,) + case["hw"])
    plan = fields._plan(case["hw"], float(angle), case["stride"], case["canvas"], case["out"], flip)
    assert plan.exact
    out = rotate_grid(torch.tensor(img)[None], angle, stride=case["stride"], canvas_size=case["canvas"],
                      out_size=case["out"], flip=flip)[0].numpy()
    ref = reference_rotate(img, angle, case["stride"], case["canvas"], case["out"], flip)
    assert out.shape == ref.shape
    assert np.array_equal(out, ref)          # integral sample positions: order-1 interpolation is exact too


def test_default_output_sizes():
    x = torch.randn(1, 2, 5, 9)
    assert rotate_grid(x, 90).shape[-2:] == (9, 5)
    assert rotate_grid(x, 30).shape[-2:] == (5, 9)
    assert rotate_grid(x, 90, stride=8, canvas_size=(1024, 768)).shape[-2:] == (96, 128)
    assert rotated_canvas_size((1024, 768), 270) == (768, 1024)
    assert rotated_canvas_size((1024, 768), 45) == (1024, 768)


@pytest.mark.parametrize("angle", [90, -90, 30, 200])
@pytest.mark.parametrize("flip", [False, True])
def test_points_follow_the_content(angle, flip):
    """A blob at p lands where rotate_points sends p (image level and at stride 4, both coordinate orders)."""
    canvas, stride = (101, 81), 4
    h, w = 26, 21
    p = np.array([9.3, 6.6])                              # (y, x) feature coordinates
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / (2 * 1.5 ** 2))
    out = rotate_grid(torch.tensor(img)[None, None], angle, stride=stride, canvas_size=canvas, flip=flip)[0, 0]
    out = out.numpy()
    oy, ox = np.mgrid[0:out.shape[0], 0:out.shape[1]]
    centroid = np.array([(oy * out).sum(), (ox * out).sum()]) / out.sum()
    q = rotate_points(p, angle, canvas, stride=stride, flip=flip)
    np.testing.assert_allclose(centroid, q, atol=0.05)
    np.testing.assert_allclose(rotate_points(p[::-1].copy(), angle, canvas, stride=stride, flip=flip, order="xy"),
                               q[::-1])
    # image pixels: feature p sits at stride * p
    np.testing.assert_allclose(rotate_points(stride * p, angle, canvas, flip=flip), stride * q, atol=1e-9)
    qt = rotate_points(torch.tensor(p, dtype=torch.float32), angle, canvas, stride=stride, flip=flip)
    assert qt.dtype == torch.float32
    np.testing.assert_allclose(qt.numpy(), q, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# fibre operators between orientation steps
# ----------------------------------------------------------------------------------------------------------------

def _escnn_block(ft, element) -> np.ndarray:
    mats = [np.asarray(r(element), dtype=np.float64) for r in ft.representations]
    size = sum(m.shape[0] for m in mats)
    out = np.zeros((size, size))
    i = 0
    for m in mats:
        out[i:i + len(m), i:i + len(m)] = m
        i += len(m)
    return out


@pytest.mark.parametrize("group_name", ["C8", "D8", "C4"])
@pytest.mark.parametrize("rule", [None, "linear", "fourier"])
def test_rules_are_exact_at_orientation_steps(group_name, rule):
    ft = field_type(group_name, "mixed")
    n, _ = _order(ft.gspace)
    for element in ft.gspace.fibergroup.elements:
        angle, flip = _angle_flip(element, n)
        for turns in (0, 2, -1):
            op = fibre_operator(ft, angle + 360 * turns, rule, flip=flip)
            np.testing.assert_allclose(op.matrix(), _escnn_block(ft, element), atol=1e-9)


@pytest.mark.parametrize("flip", [False, True])
def test_linear_rule_between_steps(flip):
    ft = field_type("D8", "regular") if flip else field_type("C8", "regular")
    g = ft.gspace.fibergroup

    def rho(k):
        return _escnn_block(ft, g.element((int(flip), k % 8)) if flip else g.element(k % 8))

    for k in range(-2, 9):
        for f in (0.5, 0.25, 0.9):
            m = fibre_operator(ft, 45 * (k + f), "linear", flip=flip).matrix()
            np.testing.assert_allclose(m, (1 - f) * rho(k) + f * rho(k + 1), atol=1e-12)
    # half way: the average of the neighbours, as RiRoIAlign does
    x = torch.randn(1, ft.size, 4, 4, dtype=torch.float64)
    half = fibre_operator(ft, 22.5, "linear", flip=flip).apply(x)
    torch.testing.assert_close(half, 0.5 * (fibre_operator(ft, 0, flip=flip).apply(x)
                                            + fibre_operator(ft, 45, flip=flip).apply(x)))


def test_fourier_rule_is_the_band_limited_shift():
    """On a regular C8 field, ρ(θ) shifts an orientation signal of frequency < N/2 continuously by θ."""
    ft = field_type("C8", "regular")
    t = np.arange(8)
    for theta in (10.0, 22.5, 100.0, -71.0):
        for freq, phase in ((0, 0.0), (1, 0.3), (2, 1.1), (3, -0.4)):
            v = np.cos(2 * np.pi * freq * t / 8 + phase)
            shifted = np.cos(2 * np.pi * freq * (t - theta / 45.0) / 8 + phase)
            m = fibre_operator(ft, theta, "fourier").matrix()[:8, :8]
            np.testing.assert_allclose(m @ v, shifted, atol=1e-12)
            if freq >= 2:      # linear interpolation between channels is not exact there
                lin = fibre_operator(ft, theta, "linear").matrix()[:8, :8]
                assert np.abs(lin @ v - shifted).max() > 0.05


def test_no_rule_needs_evaluable_fields():
    c8 = GSPACES["C8"]
    g = c8.fibergroup
    with pytest.raises(ValueError, match=r"field 1 \(regular\)"):
        fibre_operator(enn.FieldType(c8, [c8.trivial_repr, c8.regular_repr]), 10.0)
    with pytest.raises(ValueError, match=r"quotient"):
        fibre_operator(enn.FieldType(c8, [_quotient("C8")]), 22.5)
    with pytest.raises(ValueError, match=r"irrep_4"):
        fibre_operator(enn.FieldType(c8, [g.irrep(4)]), 22.5)
    ok = enn.FieldType(c8, [c8.trivial_repr, g.irrep(1), g.irrep(3), _dense_rep("C8")])
    m = fibre_operator(ok, 10.0).matrix()
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    np.testing.assert_allclose(m[1:3, 1:3], [[c, -s], [s, c]], atol=1e-12)
    c3, s3 = math.cos(math.radians(30)), math.sin(math.radians(30))
    np.testing.assert_allclose(m[3:5, 3:5], [[c3, -s3], [s3, c3]], atol=1e-12)
    assert m[0, 0] == 1.0
    x = torch.randn(1, ok.size, 9, 9)
    assert rotate_fields(x, ok, 10.0).shape == x.shape
    # D_N: the flip-only quotient is trivial on rotations, so it needs no rule either
    d8 = GSPACES["D8"]
    fibre_operator(enn.FieldType(d8, [d8.quotient_repr((None, 8)), d8.irrep(1, 0), d8.irrep(1, 2)]), 7.0)


EVAL_TYPES = {
    "C8": enn.FieldType(GSPACES["C8"], [GSPACES["C8"].trivial_repr] + [GSPACES["C8"].fibergroup.irrep(k)
                                                                       for k in (1, 2, 3)] + [_dense_rep("C8")]),
    "D8": enn.FieldType(GSPACES["D8"], [GSPACES["D8"].fibergroup.irrep(1, k) for k in (0, 1, 2, 3)]
                        + [_dense_rep("D8")]),
}


@HYP
@given(name=st.sampled_from(sorted(EVAL_TYPES)), a=st.floats(-400, 400), b=st.floats(-400, 400),
       rule=st.sampled_from([None, "linear", "fourier"]))
def test_continuous_irreps_compose(name, a, b, rule):
    ft = EVAL_TYPES[name]
    ma, mb = fibre_operator(ft, a, rule).matrix(), fibre_operator(ft, b, rule).matrix()
    # entries within 1e-9 of 0/±1 are snapped exact (escnn's rounding noise), so compositions agree to ~1e-9
    np.testing.assert_allclose(ma @ mb, fibre_operator(ft, a + b, rule).matrix(), atol=1e-8)
    np.testing.assert_allclose(ma @ fibre_operator(ft, -a, rule).matrix(), np.eye(ft.size), atol=1e-8)


def test_linear_rule_inside_rotate_fields():
    """30° of a C4 regular field with the linear rule: the spatially rotated field mixed 2:1 from the 0° and 90°
    fibre operators."""
    ft = field_type("C4", "regular")
    x = torch.randn(1, ft.size, 9, 9, dtype=torch.float64)
    out = rotate_fields(x, ft, 30, fibre_interp="linear")
    spatial = rotate_grid(x, 30)
    ref = (2 / 3) * fibre_operator(ft, 0).apply(spatial) + (1 / 3) * fibre_operator(ft, 90).apply(spatial)
    torch.testing.assert_close(out, ref)


# ----------------------------------------------------------------------------------------------------------------
# autograd, dtypes, batches, pyramids, devices
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group_name,angle,rule,flip", [("C4", 90, None, False), ("D4", 270, None, True),
                                                        ("C4", 30, "linear", False), ("D4", 30, "fourier", True),
                                                        ("C8", 45, None, False)])
def test_gradcheck(group_name, angle, rule, flip):
    ft = field_type(group_name, "mixed")
    x = torch.randn(1, ft.size, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: rotate_fields(t, ft, angle, flip=flip, fibre_interp=rule), (x,), eps=1e-6, atol=1e-6,
        fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("angle", [90, 180, 30])
def test_half_dtypes(dtype, angle):
    ft = field_type("C8", "mixed")
    x = torch.randn(2, ft.size, 9, 7).to(dtype)
    out = rotate_fields(x, ft, angle, fibre_interp="linear")
    assert out.dtype == dtype
    ref = rotate_fields(x.float(), ft, angle, fibre_interp="linear")
    if angle % 90 == 0:       # pure index ops and exact ±1 signs; the dense field is computed in float32
        keep = _exact_channels(ft)
        assert torch.equal(out.float()[:, keep], ref.to(dtype).float()[:, keep])
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_batched_angles():
    ft = field_type("D4", "mixed")
    x = torch.randn(4, ft.size, 7, 7)
    angles = torch.tensor([0.0, 90.0, 30.0, -180.0])
    out = rotate_fields(x, ft, angles, fibre_interp="fourier", flip=True)
    for i, a in enumerate(angles.tolist()):
        assert torch.equal(out[i:i + 1], rotate_fields(x[i:i + 1], ft, a, fibre_interp="fourier", flip=True))
    assert torch.equal(rotate_fields(x, ft, [90] * 4), rotate_fields(x, ft, 90))
    rect = torch.randn(2, ft.size, 5, 7)
    with pytest.raises(ValueError, match="different sizes"):
        rotate_fields(rect, ft, [0, 90])
    out = rotate_fields(rect, ft, [0, 90], out_size=(7, 7))
    assert torch.equal(out[1:], rotate_fields(rect[1:], ft, 90, out_size=(7, 7)))
    with pytest.raises(ValueError, match="3 angles for a batch of 2"):
        rotate_fields(rect, ft, torch.tensor([0.0, 90.0, 180.0]))
    with pytest.raises(ValueError, match="3 angles for a batch of 2"):
        rotate_grid(rect, [0, 90, 180])


def test_pyramid_and_field_rotation():
    c4 = GSPACES["C4"]
    ft = enn.FieldType(c4, [c4.regular_repr, c4.trivial_repr])
    canvas = (1025, 1025)
    strides = [8, 16, 32, 64, 128]
    feats = [torch.randn(1, ft.size, 1024 // s + 1, 1024 // s + 1) for s in strides]
    out = rotate_pyramid(feats, ft, strides, 90, canvas)
    for f, o, s in zip(feats, out, strides):
        assert fields._plan(tuple(f.shape[-2:]), 90.0, s, canvas, None, False).exact
        assert torch.equal(o, _escnn(f, ft, c4.fibergroup.element(1)))
        assert torch.equal(o, FieldRotation(ft, stride=s, canvas_size=canvas)(f, 90))
    out30 = rotate_pyramid(feats[-2:], [ft, ft], strides[-2:], 30, canvas, fibre_interp="linear")
    assert [o.shape for o in out30] == [f.shape for f in feats[-2:]]
    with pytest.raises(ValueError, match="2 maps, 2 field types and 3 strides"):
        rotate_pyramid(feats[:2], ft, strides[:3], 90, canvas)
    # a whole turn gives the levels themselves; contiguous=True lays every level out row-major, with the same values
    assert all(o is f for o, f in zip(rotate_pyramid(feats, ft, strides, -360, canvas), feats))
    grads = [f.clone().requires_grad_() for f in feats[:2]]
    views = rotate_pyramid(grads, ft, strides[:2], 90, canvas)
    dense = rotate_pyramid(grads, ft, strides[:2], 90, canvas, contiguous=True)
    assert not all(v.is_contiguous() for v in views)      # what makes the option needed
    assert all(d.is_contiguous() and torch.equal(d, v) for d, v in zip(dense, views))


def test_row_copier_is_built():
    """setup.py builds the C row copier; without it every exact quarter turn silently takes the slower torch path
    (same results), so the environment that runs these tests must have it."""
    assert fields._plane_copy is not None, \
        "rotplugin._plane_copy is not built: run `pip install -e .` (needs a C compiler)"


def _torch_path(x, ft, k, flip):
    """The exact quarter turn by torch operations only (the path taken without the C row copier)."""
    op = fibre_operator(ft, 90 * k, flip=flip)
    plan = fields._plan(tuple(x.shape[-2:]), 90.0 * k, 1, None, None, flip)
    return plan.apply(op.apply(x), fresh=True), plan, op


@pytest.mark.parametrize("group_name", ["C8", "D4"])
def test_row_copier_agrees_with_torch_and_escnn(group_name):
    """One pass of the C row copier (spatial map, channel permutation and sign flips) is bit-identical to the torch
    path (same strides: odd turns stay transposed views) and to escnn, for every quarter turn and mirror, signed
    permutation fields and several field groups, odd and one-pixel maps, batches, every float dtype; it is really
    taken for them and not for dense fields, strided inputs or autograd."""
    n, dihedral = _order(GSPACES[group_name])
    used = 0
    for kind in ("trivial", "regular", "irreps", "quotient", "mixed", "dense"):
        ft = field_type(group_name, kind)
        for hw, dtype in (((9, 9), torch.float32), ((7, 11), torch.float16), ((1, 5), torch.bfloat16),
                          ((6, 3), torch.float64)):
            x = torch.randn(2, ft.size, *hw, generator=torch.Generator().manual_seed(5)).to(dtype)
            for k in range(4):
                for flip in ((False, True) if dihedral else (False,)):
                    reference, plan, op = _torch_path(x, ft, k, flip)
                    out = plan.copy(x, op)
                    assert (out is None) == (op.kind == "blocks"), (kind, k, flip)
                    if out is None:
                        continue
                    used += 1
                    assert torch.equal(out, reference) and out.stride() == reference.stride(), (kind, hw, k, flip)
                    assert torch.equal(rotate_fields(x, ft, 90 * k, flip=flip), out)
                    if dtype == torch.float32:
                        element = ft.gspace.fibergroup.element((int(flip), k * n // 4) if dihedral else k * n // 4)
                        assert torch.equal(out, _escnn(x, ft, element))
    assert used >= (4 * 4 * 4 * 2 if dihedral else 4 * 4 * 4)     # the four permutation kinds at least
    ft = field_type(group_name, "irreps")
    x = torch.randn(1, ft.size, 4, 5, dtype=torch.float64)
    strided = x.transpose(-2, -1).contiguous().transpose(-2, -1)
    plan, op = fields._plan((4, 5), 90.0, 1, None, None, False), fibre_operator(ft, 90)
    assert plan.copy(strided, op) is None and torch.equal(rotate_fields(strided, ft, 90), rotate_fields(x, ft, 90))
    x.requires_grad_(True)
    assert plan.copy(x, op) is None
    assert torch.autograd.gradcheck(lambda t: rotate_fields(t, ft, 90), (x,), fast_mode=True)
    with torch.no_grad():
        assert plan.copy(x, op) is not None


def test_row_copier_sign_flip_and_threads(monkeypatch):
    """Sign flips are exact negations bit for bit (-0.0, infinities, subnormals), an empty batch works, and
    splitting the planes over several threads gives the same bytes."""
    ft = field_type("D4", "irreps")
    op = fibre_operator(ft, 90)
    assert op.kind == "permutation" and (op.sign < 0).any()
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, -3.5])
    x = special.repeat(2 * ft.size * 7 * 9 // 6 + 1)[: 2 * ft.size * 7 * 9].view(2, ft.size, 7, 9)
    out = rotate_fields(x, ft, 90)
    reference = fields._plan((7, 9), 90.0, 1, None, None, False).apply(op.apply(x), fresh=True)
    assert torch.equal(out.contiguous().view(torch.int32), reference.contiguous().view(torch.int32))
    monkeypatch.setattr(fields, "_COPY_BYTES_PER_THREAD", 1)
    for threads in (2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        assert torch.equal(rotate_fields(x, ft, 90).contiguous().view(torch.int32),
                           out.contiguous().view(torch.int32))
    assert rotate_fields(x[:0], ft, 270).shape == (0, ft.size, 9, 7)


def test_torch_path_without_row_copier(monkeypatch):
    """Where the C row copier is not built, rotate_fields gives the same results through torch operations."""
    ft = field_type("C8", "mixed")
    x = torch.randn(2, ft.size, 9, 7)
    with_copier = [rotate_fields(x, ft, a, stride=2, canvas_size=(17, 13)) for a in (90, 180, 270)]
    monkeypatch.setattr(fields, "_plane_copy", None)
    for a, expected in zip((90, 180, 270), with_copier):
        assert torch.equal(rotate_fields(x, ft, a, stride=2, canvas_size=(17, 13)), expected)


def test_repeated_calls_still_validate():
    """The cache of validated arguments does not let 2.0 or True pass where 2 was accepted."""
    c4 = GSPACES["C4"]
    ft = enn.FieldType(c4, [c4.regular_repr])
    x = torch.randn(1, 4, 5, 5)
    ok = rotate_fields(x, ft, 90, stride=2, canvas_size=(9, 9))
    assert torch.equal(rotate_fields(x, ft, 90, stride=2, canvas_size=[9, 9]), ok)
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        rotate_fields(x, ft, 90, stride=2.0, canvas_size=(9, 9))
    with pytest.raises(ValueError, match="canvas_size must be two positive integers"):
        rotate_fields(x, ft, 90, stride=2, canvas_size=(9.0, 9))
    with pytest.raises(ValueError, match="canvas_size must be two positive integers"):
        rotate_fields(x, ft, 90, stride=2, canvas_size=(True, 9))


def test_output_never_aliases_input():
    d4 = GSPACES["D4"]
    ft = enn.FieldType(d4, [d4.trivial_repr])
    x = torch.randn(1, 1, 5, 5)
    for angle, flip in ((0, False), (90, True)):       # (90, flip) is a pure transposition
        out = rotate_fields(x, ft, angle, flip=flip)
        assert out.data_ptr() != x.data_ptr()


@pytest.mark.cuda
@pytest.mark.parametrize("angle", [90, 45, 30])
def test_cuda_matches_cpu(angle, device):
    ft = field_type("C8", "mixed")
    x = torch.randn(2, ft.size, 17, 13)
    cpu = rotate_fields(x, ft, angle, fibre_interp="linear")
    gpu = rotate_fields(x.to(device), ft, angle, fibre_interp="linear")
    assert gpu.device.type == device.type
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    half = rotate_fields(x.to(device).half(), ft, angle, fibre_interp="linear")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float().cpu(), cpu, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------

def test_bad_inputs_are_named():
    c4 = GSPACES["C4"]
    ft = enn.FieldType(c4, [c4.regular_repr])
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="5 channels but field_type has size 4"):
        rotate_fields(torch.randn(1, 5, 5, 5), ft, 90)
    with pytest.raises(ValueError, match=r"4-D \(B, C, h, w\) tensor, got shape \(4, 5, 5\)"):
        rotate_fields(x[0], ft, 90)
    with pytest.raises(TypeError, match="floating-point"):
        rotate_fields(x.long(), ft, 90)
    with pytest.raises(ValueError, match="only 2D gspaces"):
        rotate_fields(x, enn.FieldType(gspaces.no_base_space(c4.fibergroup), [c4.regular_repr]), 90)
    so2 = gspaces.rot2dOnR2(-1, maximum_frequency=2)
    with pytest.raises(ValueError, match="not continuous ones"):
        rotate_fields(torch.randn(1, 1, 5, 5), enn.FieldType(so2, [so2.trivial_repr]), 90)
    with pytest.raises(ValueError, match="flip=True needs a flipRot2dOnR2"):
        rotate_fields(x, ft, 90, flip=True)
    with pytest.raises(ValueError, match=r"angle 30.0° is not a multiple of 360/4 = 90°.*field 0 \(regular\)"):
        rotate_fields(x, ft, 30)
    with pytest.raises(ValueError, match="unknown fibre_interp 'cubic'"):
        rotate_fields(x, ft, 30, fibre_interp="cubic")
    with pytest.raises(ValueError, match="angle must be finite"):
        rotate_fields(x, ft, float("nan"))
    with pytest.raises(TypeError, match="angle must be a real number"):
        rotate_fields(x, ft, "90")
    with pytest.raises(TypeError, match="escnn.nn.FieldType"):
        rotate_fields(x, c4.regular_repr, 90)
    d4_axis0 = gspaces.flipRot2dOnR2(4, axis=0.0)
    with pytest.raises(ValueError, match="non-default axis"):
        rotate_fields(torch.randn(1, 1, 5, 5), enn.FieldType(d4_axis0, [d4_axis0.trivial_repr]), 90)
    with pytest.raises(ValueError, match=r"canvas_size must be \(H, W\)"):
        rotate_grid(x, 90, canvas_size=17)
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        rotate_grid(x, 90, stride=0)


def test_flip_only_and_trivial_gspaces():
    flip_gs = gspaces.flip2dOnR2()
    ft = enn.FieldType(flip_gs, [flip_gs.regular_repr, flip_gs.trivial_repr])
    x = torch.randn(1, ft.size, 5, 6)
    out = rotate_fields(x, ft, 0, flip=True)
    assert torch.equal(out, _escnn(x, ft, flip_gs.fibergroup.element(1)))
    assert torch.equal(rotate_fields(x, ft, 180), _escnn(x, ft, flip_gs.fibergroup.element(0)).flip((-2, -1)))
    triv = gspaces.trivialOnR2()
    ft1 = enn.FieldType(triv, [triv.trivial_repr])
    x1 = torch.randn(1, 1, 5, 5)
    assert torch.equal(rotate_fields(x1, ft1, 90), torch.rot90(x1, 1, (-2, -1)))


def test_module_imports_only_torch_numpy_escnn():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(fields.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("." + (node.module or "") if node.level else node.module.split(".")[0])
    # "." is rotplugin._plane_copy, the C row copier (plain C, no imports of its own)
    assert roots <= {"__future__", "math", "numbers", "collections", "typing", "numpy", "torch", "escnn", ".canvas",
                     "."}
    assert {"torch", "numpy", "escnn", ".canvas"} <= roots
