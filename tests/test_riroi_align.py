"""Tests for the pure-PyTorch RiRoIAlignRotated (rotplugin.ops.riroi_align)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rotplugin.ops import RiRoIAlignRotated, riroi_align_rotated

# --------------------------------------------------------------------------------------
# Oracle: a literal scalar transcription of mmcv 2.1.0's CUDA kernel
# (riroi_align_rotated_cuda_kernel.cuh + bilinear_interpolate in common_cuda_helper.hpp),
# one output element at a time, in Python floats (double precision).
# --------------------------------------------------------------------------------------


def _bilinear_weights(height, width, y, x):
    """(w1..w4, y_low, y_high, x_low, x_high) or None when the sample is dropped."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return None
    if y <= 0:
        y = 0.0
    if x <= 0:
        x = 0.0
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return (hy * hx, hy * lx, ly * hx, ly * lx), (y_low, y_high, x_low, x_high)


def _kernel_terms(roi, n_or, o, ph, pw, out_h, out_w, scale, num_samples, clockwise, height, width):
    """Yield (orientation channel offset, weight, y, x) of every bilinear tap of one output."""
    roi_center_w = roi[1] * scale
    roi_center_h = roi[2] * scale
    roi_width = max(roi[3] * scale, 1.0)
    roi_height = max(roi[4] * scale, 1.0)
    theta = roi[5]
    bin_size_h = roi_height / out_h
    bin_size_w = roi_width / out_w
    ind_float = theta * n_or / (2 * math.pi)
    ind = math.floor(ind_float)
    l_var = ind_float - ind
    r_var = 1.0 - l_var
    ind = (ind + n_or) % n_or
    ind_rot = (o - ind + n_or) % n_or
    ind_rot_plus = (ind_rot + 1 + n_or) % n_or
    grid_h = num_samples if num_samples > 0 else math.ceil(roi_height / out_h)
    grid_w = num_samples if num_samples > 0 else math.ceil(roi_width / out_w)
    if clockwise:
        theta = -theta
    roi_start_h = -roi_height / 2.0
    roi_start_w = -roi_width / 2.0
    cos_t = math.cos(theta)
    sin_t = math.sin(theta)
    count = max(grid_h * grid_w, 1)
    for iy in range(grid_h):
        yy = roi_start_h + ph * bin_size_h + (iy + 0.5) * bin_size_h / grid_h
        for ix in range(grid_w):
            xx = roi_start_w + pw * bin_size_w + (ix + 0.5) * bin_size_w / grid_w
            y = yy * cos_t - xx * sin_t + roi_center_h
            x = yy * sin_t + xx * cos_t + roi_center_w
            tap = _bilinear_weights(height, width, y, x)
            if tap is None:
                continue
            ws, (y_low, y_high, x_low, x_high) = tap
            corners = ((y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high))
            for w, (yi, xi) in zip(ws, corners):
                yield ind_rot, r_var * w / count, yi, xi
                yield ind_rot_plus, l_var * w / count, yi, xi


def oracle_forward(feat, rois, out_h, out_w, scale, num_samples, n_or, clockwise):
    feat = np.asarray(feat, dtype=np.float64)
    rois = np.asarray(rois, dtype=np.float64)
    _, channels, height, width = feat.shape
    out = np.zeros((len(rois), channels, out_h, out_w))
    for n, roi in enumerate(rois):
        b = int(roi[0])
        for c in range(channels // n_or):
            for o in range(n_or):
                for ph in range(out_h):
                    for pw in range(out_w):
                        acc = 0.0
                        for ch, w, yi, xi in _kernel_terms(roi, n_or, o, ph, pw, out_h, out_w, scale,
                                                           num_samples, clockwise, height, width):
                            acc += w * feat[b, c * n_or + ch, yi, xi]
                        out[n, c * n_or + o, ph, pw] = acc
    return out


def oracle_backward(grad_out, feat_shape, rois, scale, num_samples, n_or, clockwise):
    """Literal transcription of the backward kernel's scatter (atomicAdd) loop."""
    grad_out = np.asarray(grad_out, dtype=np.float64)
    rois = np.asarray(rois, dtype=np.float64)
    _, channels, height, width = feat_shape
    _, _, out_h, out_w = grad_out.shape
    grad = np.zeros(feat_shape)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        for c in range(channels // n_or):
            for o in range(n_or):
                for ph in range(out_h):
                    for pw in range(out_w):
                        g = grad_out[n, c * n_or + o, ph, pw]
                        for ch, w, yi, xi in _kernel_terms(roi, n_or, o, ph, pw, out_h, out_w, scale,
                                                           num_samples, clockwise, height, width):
                            grad[b, c * n_or + ch, yi, xi] += g * w
    return grad


def _random_rois(gen, n, batch, height, width, scale):
    """RoIs in image coordinates: some inside, some crossing or outside the border, tiny and big
    boxes, angles in [-3*pi, 3*pi]."""
    cx = torch.empty(n).uniform_(-3, width + 3, generator=gen) / scale
    cy = torch.empty(n).uniform_(-3, height + 3, generator=gen) / scale
    w = torch.empty(n).uniform_(0.3, 1.2 * width, generator=gen) / scale
    h = torch.empty(n).uniform_(0.3, 1.2 * height, generator=gen) / scale
    w[0] = 0.4 / scale  # below the kernel's 1-pixel minimum (clamped to 1)
    h[1 % n] = 0.7 / scale
    t = torch.empty(n).uniform_(-3 * math.pi, 3 * math.pi, generator=gen)
    b = torch.randint(0, batch, (n,), generator=gen).double()
    return torch.stack([b, cx, cy, w, h, t], 1).double()


# --------------------------------------------------------------------------------------
# Reference (oracle) tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_or,num_samples,clockwise", [
    (4, 0, False), (4, 2, True), (8, 0, True), (8, 3, False), (2, 1, False),
])
def test_forward_matches_kernel_transcription(n_or, num_samples, clockwise):
    gen = torch.Generator().manual_seed(1000 * n_or + 10 * num_samples + clockwise)
    batch, fields, height, width = 2, 2, 9, 12
    scale = 0.5
    feat = torch.randn(batch, fields * n_or, height, width, generator=gen, dtype=torch.float64)
    rois = _random_rois(gen, 6, batch, height, width, scale)
    ref = oracle_forward(feat.numpy(), rois.numpy(), 3, 2, scale, num_samples, n_or, clockwise)
    assert np.abs(ref).max() > 0.1 and (ref == 0).any()  # non-trivial, and some RoIs leave the map
    out64 = riroi_align_rotated(feat, rois, (3, 2), scale, num_samples, n_or, clockwise)
    assert out64.shape == (6, fields * n_or, 3, 2) and out64.dtype == torch.float64
    np.testing.assert_allclose(out64.numpy(), ref, rtol=0, atol=1e-10)
    out32 = riroi_align_rotated(feat.float(), rois.float(), (3, 2), scale, num_samples, n_or,
                                clockwise)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.double().numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_samples,clockwise", [(0, True), (2, False)])
def test_backward_matches_kernel_transcription(num_samples, clockwise):
    gen = torch.Generator().manual_seed(7 + num_samples)
    n_or, batch, fields, height, width = 4, 2, 2, 8, 10
    scale = 1.0
    feat = torch.randn(batch, fields * n_or, height, width, generator=gen,
                       dtype=torch.float64).requires_grad_()
    rois = _random_rois(gen, 5, batch, height, width, scale)
    out = riroi_align_rotated(feat, rois, 2, scale, num_samples, n_or, clockwise)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, feat, grad_out)
    ref = oracle_backward(grad_out.numpy(), tuple(feat.shape), rois.numpy(), scale, num_samples,
                          n_or, clockwise)
    np.testing.assert_allclose(grad.numpy(), ref, rtol=0, atol=1e-10)


def test_orientation_interpolation_direction():
    """Pin the kernel's orientation convention: t = theta*N/(2*pi), k = floor(t), l = t - k;
    output orientation o = (1-l) * in[(o-k) % N] + l * in[(o-k+1) % N] (unnegated theta, also with
    clockwise=True).  Features are spatially constant with value = orientation index."""
    n_or = 8
    feat = torch.arange(n_or, dtype=torch.float64).view(1, n_or, 1, 1).expand(1, n_or, 9, 9)
    step = 2 * math.pi / n_or
    for clockwise in (False, True):
        for t in (0.0, 1.0, 2.25, 2.75, -0.5, -3.0, 9.5):
            rois = torch.tensor([[0, 4.0, 4.0, 3.0, 3.0, t * step]], dtype=torch.float64)
            out = riroi_align_rotated(feat, rois, 1, 1.0, 2, n_or, clockwise)[0, :, 0, 0]
            k = math.floor(t)
            lv = t - k
            expect = [(1 - lv) * ((o - k) % n_or) + lv * ((o - k + 1) % n_or) for o in range(n_or)]
            np.testing.assert_allclose(out.numpy(), expect, atol=1e-9)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 8, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 2.3, 2.1, 3.5, 2.2, 0.7],
                         [1, 4.1, 1.2, 2.0, 4.5, -2.1],
                         [1, 0.2, 5.3, 6.0, 1.5, 3.9]], dtype=torch.float64)
    for num_samples, clockwise in ((2, True), (0, False)):
        assert torch.autograd.gradcheck(
            lambda f: riroi_align_rotated(f, rois, (2, 3), 1.0, num_samples, 4, clockwise),
            (feat,), eps=1e-6, atol=1e-8)


def test_module_is_mmcv_dropin():
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 16, 10, 10, generator=gen)
    rois = _random_rois(gen, 4, 2, 10, 10, 0.25).float()
    # positional, in mmcv's order: out_size, spatial_scale, num_samples, num_orientations, clockwise
    layer = RiRoIAlignRotated(7, 0.25, 2, 8, True)
    assert layer.out_size == 7 and layer.output_size == (7, 7)
    assert layer.spatial_scale == 0.25 and layer.num_samples == 2
    assert layer.num_orientations == 8 and layer.clockwise is True
    # keyword style, as mmrotate's RotatedSingleRoIExtractor builds it from a config dict
    cfg = dict(out_size=7, num_samples=2, num_orientations=8, clockwise=True)
    layer2 = RiRoIAlignRotated(spatial_scale=1 / 4, **cfg)
    out = layer2(feat, rois)
    torch.testing.assert_close(out, riroi_align_rotated(feat, rois, 7, 0.25, 2, 8, True))
    assert RiRoIAlignRotated(output_size=(3, 5), spatial_scale=1.0).output_size == (3, 5)
    # empty RoI set
    assert layer(feat, rois[:0]).shape == (0, 16, 7, 7)
    # half precision input: computed in float32, returned as half
    assert layer(feat.half(), rois.half()).dtype == torch.float16
    assert "num_orientations=8" in repr(layer)


def test_ops_package_imports_no_mm_package():
    """rotplugin.ops must work without the OpenMMLab stack: import it with every mm* package
    blocked (``import rotplugin`` itself only tries mmrotate and falls back when it is missing)."""
    code = ("import sys\n"
            "for name in ('mmcv', 'mmdet', 'mmrotate', 'mmengine'):\n"
            "    sys.modules[name] = None  # any import of it now raises ImportError\n"
            "import torch\n"
            "from rotplugin.ops import riroi_align_rotated\n"
            "feat = torch.randn(1, 8, 5, 5)\n"
            "rois = torch.tensor([[0, 2.0, 2.0, 3.0, 3.0, 0.3]])\n"
            "assert riroi_align_rotated(feat, rois, 2, 1.0, 2, 8, True).shape == (1, 8, 2, 2)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------------------
# Rotation invariance under a 90 degree rotation of C_N regular feature fields
# --------------------------------------------------------------------------------------

SIZE = 33  # square, odd: pixel centres at integer coords 0..32, map centre at 16 (kernel convention)


def _rotate_fields(feat, n_or, shift):
    """rot90 (k=1, dims=(-2, -1)) of the map plus a cyclic roll of every field's N channels."""
    batch, channels, height, width = feat.shape
    rot = torch.rot90(feat, 1, dims=(-2, -1))
    rot = rot.reshape(batch, channels // n_or, n_or, height, width)
    return torch.roll(rot, shift, dims=2).reshape(batch, channels, height, width)


def _rotate_rois(rois, dtheta):
    """The RoIs' image under rot90(k=1): (cx, cy) -> (cy, S-1-cx) (pixel centres at integer
    coordinates, no half-pixel offset in the kernel), angle + dtheta."""
    out = rois.clone()
    out[:, 1] = rois[:, 2]
    out[:, 2] = (SIZE - 1) - rois[:, 1]
    out[:, 5] = rois[:, 5] + dtheta
    return out


def test_passive_rotation_matches_escnn():
    """The field rotation used below is escnn's action of the +90 degree element of C_N on regular
    fields (the convention of the equivariant backbone)."""
    pytest.importorskip("escnn")
    from escnn import gspaces
    from escnn import nn as enn
    for n_or in (4, 8):
        gspace = gspaces.rot2dOnR2(n_or)
        ftype = enn.FieldType(gspace, 3 * [gspace.regular_repr])
        feat = torch.randn(2, 3 * n_or, 9, 9)
        ref = enn.GeometricTensor(feat, ftype).transform(gspace.fibergroup.element(n_or // 4)).tensor
        torch.testing.assert_close(_rotate_fields(feat, n_or, n_or // 4), ref, rtol=0, atol=1e-6)


def _invariance_case(n_or, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(2, 3 * n_or, SIZE, SIZE, generator=gen, dtype=torch.float64).to(dtype)
    n = 12
    rois = torch.stack([
        torch.randint(0, 2, (n,), generator=gen).double(),
        torch.empty(n).uniform_(-2, SIZE + 1, generator=gen),   # some RoIs cross the border
        torch.empty(n).uniform_(-2, SIZE + 1, generator=gen),
        torch.empty(n).uniform_(0.5, 20, generator=gen),
        torch.empty(n).uniform_(0.5, 20, generator=gen),
        torch.empty(n).uniform_(-7, 7, generator=gen),
    ], 1).to(dtype)
    return feat, rois


@pytest.mark.parametrize("n_or", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotation_invariance_clockwise_true(n_or, dtype):
    """escnn's passive rotation of regular fields (rot90 + roll(+N/4)) and the RoI rotated with
    the map (angle - pi/2 in the clockwise=True convention) give identical pooled features."""
    feat, rois = _invariance_case(n_or, dtype, seed=n_or)
    for num_samples in (0, 2):
        out = riroi_align_rotated(feat, rois, (7, 5), 1.0, num_samples, n_or, True)
        out_r = riroi_align_rotated(_rotate_fields(feat, n_or, n_or // 4),
                                    _rotate_rois(rois, -math.pi / 2), (7, 5), 1.0, num_samples,
                                    n_or, True)
        assert out.abs().sum() > 0
        torch.testing.assert_close(out_r, out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_or", [4, 8])
def test_rotation_clockwise_false_conventions(n_or):
    """clockwise=False (geometric angle + pi/2 for the map's rot90): invariant only if the fields
    roll by -N/4; with escnn's roll(+N/4) the pooled orientations come out rolled by N/2."""
    feat, rois = _invariance_case(n_or, torch.float64, seed=10 + n_or)
    rois_r = _rotate_rois(rois, math.pi / 2)
    out = riroi_align_rotated(feat, rois, 3, 1.0, 2, n_or, False)
    out_minus = riroi_align_rotated(_rotate_fields(feat, n_or, -(n_or // 4)), rois_r, 3, 1.0, 2,
                                    n_or, False)
    torch.testing.assert_close(out_minus, out, rtol=0, atol=1e-5)
    out_plus = riroi_align_rotated(_rotate_fields(feat, n_or, n_or // 4), rois_r, 3, 1.0, 2, n_or,
                                   False)
    shifted = torch.roll(out.view(len(rois), -1, n_or, 3, 3), n_or // 2, dims=2).view(out.shape)
    torch.testing.assert_close(out_plus, shifted, rtol=0, atol=1e-5)
    assert (out_plus - out).abs().max() > 1e-2  # really not invariant


def test_rotation_180_invariant_both_conventions():
    n_or = 8
    feat, rois = _invariance_case(n_or, torch.float64, seed=99)
    rot = torch.rot90(feat, 2, dims=(-2, -1)).reshape(2, 3, n_or, SIZE, SIZE)
    rot = torch.roll(rot, n_or // 2, dims=2).reshape(feat.shape)
    rois_r = rois.clone()
    rois_r[:, 1:3] = (SIZE - 1) - rois[:, 1:3]
    for clockwise in (False, True):
        rois_r[:, 5] = rois[:, 5] + (-math.pi if clockwise else math.pi)
        out = riroi_align_rotated(feat, rois, 4, 1.0, 0, n_or, clockwise)
        out_r = riroi_align_rotated(rot, rois_r, 4, 1.0, 0, n_or, clockwise)
        torch.testing.assert_close(out_r, out, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------


def test_bad_inputs():
    feat = torch.randn(1, 8, 6, 6)
    rois = torch.tensor([[0, 3.0, 3.0, 2.0, 2.0, 0.1]])
    with pytest.raises(ValueError, match="divisible"):
        riroi_align_rotated(torch.randn(1, 6, 6, 6), rois, 2, 1.0, 0, 4)
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        riroi_align_rotated(feat, rois[:, :5], 2, 1.0, 0, 4)
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        riroi_align_rotated(feat, rois[0], 2, 1.0, 0, 4)
    for bad in ((2,), (2, 3, 4), (2.0, 3), "7", None, 2.5, True):
        with pytest.raises(TypeError, match="output_size"):
            riroi_align_rotated(feat, rois, bad, 1.0, 0, 4)
    for bad in (0, (0, 3), (3, -1)):
        with pytest.raises(ValueError, match="output_size"):
            riroi_align_rotated(feat, rois, bad, 1.0, 0, 4)
    with pytest.raises(ValueError, match="4-D"):
        riroi_align_rotated(feat[0], rois, 2, 1.0, 0, 4)
    with pytest.raises(ValueError, match="batch indices"):
        riroi_align_rotated(feat, torch.tensor([[1, 3.0, 3.0, 2.0, 2.0, 0.1]]), 2, 1.0, 0, 4)
    with pytest.raises(ValueError, match="num_orientations"):
        riroi_align_rotated(feat, rois, 2, 1.0, 0, 0)
    with pytest.raises(ValueError, match="spatial_scale"):
        riroi_align_rotated(feat, rois, 2, 0.0, 0, 4)
    with pytest.raises(TypeError, match="floating"):
        riroi_align_rotated(feat.long(), rois, 2, 1.0, 0, 4)
    with pytest.raises(TypeError, match="spatial_scale"):
        RiRoIAlignRotated(7)
    with pytest.raises(TypeError, match="output_size"):
        RiRoIAlignRotated((7, 7, 7), 1.0)


# --------------------------------------------------------------------------------------
# CUDA: device-agnostic check and comparison with mmcv's CUDA kernel
# --------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_matches_cpu(device):
    gen = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 16, 20, 24, generator=gen)
    rois = _random_rois(gen, 30, 2, 20, 24, 0.5).float()
    for num_samples in (0, 2):
        cpu = riroi_align_rotated(feat, rois, 7, 0.5, num_samples, 8, True)
        gpu = riroi_align_rotated(feat.to(device), rois.to(device), 7, 0.5, num_samples, 8, True)
        assert gpu.device.type == device.type
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("num_samples,clockwise,n_or", [(0, True, 8), (2, True, 8), (2, False, 4)])
def test_matches_mmcv_cuda_kernel(num_samples, clockwise, n_or, device):
    mmcv_ops = pytest.importorskip("mmcv.ops")
    if device.type != "cuda":
        pytest.skip("mmcv's RiRoIAlignRotated has a CUDA kernel only")
    gen = torch.Generator().manual_seed(17)
    feat = torch.randn(2, 4 * n_or, 24, 20, generator=gen).to(device)
    rois = _random_rois(gen, 40, 2, 24, 20, 0.5).float().to(device)
    ref_layer = mmcv_ops.RiRoIAlignRotated((3, 4), 0.5, num_samples, n_or, clockwise)
    feat_ref = feat.clone().requires_grad_()
    ref = ref_layer(feat_ref, rois)      # an mmcv built without CUDA ops fails here: the GPU check must see it
    feat_ours = feat.clone().requires_grad_()
    ours = RiRoIAlignRotated((3, 4), 0.5, num_samples, n_or, clockwise)(feat_ours, rois)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    grad_out = torch.randn(ref.shape, generator=gen).to(device)
    ref.backward(grad_out)
    ours.backward(grad_out)
    torch.testing.assert_close(feat_ours.grad, feat_ref.grad, rtol=0, atol=1e-5)
