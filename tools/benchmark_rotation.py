"""Benchmark rotplugin.fields: speed of passive rotation against a clone and against escnn, and equivariance error.

Usage: ``python tools/benchmark_rotation.py [--json OUT [--force]] [--quick] [--threads N]``

Speed (one CPU run; one torch thread by default, since this machine's two cores are shared and a busy second core
makes multi-threaded timings of memory-bound copies meaningless): a 5-level pyramid of a 1025x1025 canvas (strides
8..128, maps 129, 65, 33, 17, 9), 256 channels = 32 regular fields of C8, batch 1.

* ``rot90_over_clone``: time of ``rotate_pyramid(..., 90)`` over the time of cloning the same tensors (median over
  back-to-back pairs, each call timed after an untimed call of the same function, order alternating: see
  ``interleaved_ratio``; odd quarter turns return transposed views, as ``torch.rot90`` does; the time of also
  making them contiguous, and 180°, 270° and a bare ``torch.rot90``, are printed for information).
* ``escnn_over_ours_90`` / ``escnn_over_ours_45``: escnn's ``GeometricTensor(x, ft).transform(r^k)`` over ours, at
  90° (k=2) and 45° (k=1: escnn resamples with scipy's order-2 splines, we bilinearly).

Accuracy, on the DOTA demo image (``/work/shared/data/dota_samples/images/demo.jpg``; a generated image when it is
absent): the image is centre-cropped, resized to a 1025x1025 "scene" ``S``, and every network input is ``pool(S)``
or ``pool(rotate(S, 45°))``, where ``pool`` is a 5x5 box filter sampled at stride 4 (pixel ``i`` <- scene pixel
``4i``: a 257x257 image whose centre is the scene's centre) and the scene is rotated bilinearly at 4x resolution.

* ``err45_features``: ``||rotate_fields(B(I), 45°) - B(I45)|| / ||B(I45)||`` summed over the output levels of a C8
  network ``B`` (``rotplugin.models.EquivariantResNet(depth=18, orientation=8)`` in eval mode when it imports, else
  a small escnn stack), ``I = pool(S)``, ``I45 = pool(rotate(S, 45°))``, restricted to the central disc of radius
  0.6 x the half-side (the corners of ``I45`` are empty and the border sees zero padding).
* ``err45_input``: the interpolation error of the input itself: ``||rotate(rotate(I, 45°), -45°) - I|| / ||I||`` in
  the same disc, both rotations bilinear (``rotate_grid``). Also printed: ``||rotate(I, 45°) - I45|| / ||I45||``.

``--json OUT`` holds the five results at its top level and the two measurements (``speed``, ``accuracy``) as
entries with their settings; it is written atomically after each measurement, and a rerun with the same file skips
a measurement already there with the same settings (``--force`` redoes it).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

try:
    import resource         # page-fault counts (POSIX)
except ImportError:         # pragma: no cover
    resource = None

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message=".*py3nj.*")

from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

from rotplugin.apis.demo import SAMPLE_IMAGE  # noqa: E402
from rotplugin.fields import rotate_fields, rotate_grid, rotate_pyramid  # noqa: E402
from rotplugin.io import ResumableResults, load_image  # noqa: E402
from rotplugin.timing import median_time  # noqa: E402

SAMPLE = ROOT / SAMPLE_IMAGE
KEYS = ("rot90_over_clone", "escnn_over_ours_90", "escnn_over_ours_45", "err45_features", "err45_input")


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def interleaved_ratio(fn, base, reps: int) -> tuple[float, float, float, float, float]:
    """Medians of ``fn`` and ``base``, the median of the ratios of back-to-back pairs (each pair sees the same
    load of the shared machine, so the ratio is steadier than either time), and the page faults per timed call of
    each.

    Every timed call follows an untimed call of the same function, and which of the two goes first alternates:
    each is timed in its own steady state. A function whose freed memory glibc hands back to the system pays the
    page faults of getting it again on its own next call, not on the other function's (with plain ``base, fn``
    pairs, a map-sized temporary of ``fn`` made ``base`` fault on every page of its output half of the time and
    the ratio swung from 1.1 to 5.9 between runs)."""
    def timed(f):
        f()
        p0 = _page_faults()
        t0 = time.perf_counter()
        f()
        t = time.perf_counter() - t0
        return t, _page_faults() - p0

    for _ in range(3):
        fn()
        base()
    tf, tb, pf, pb = [], [], 0, 0
    for i in range(reps):
        if i % 2:
            (b, qb), (f, qf) = timed(base), timed(fn)
        else:
            (f, qf), (b, qb) = timed(fn), timed(base)
        tf.append(f)
        tb.append(b)
        pf, pb = pf + qf, pb + qb
    ratios = np.array(tf) / np.array(tb)
    return float(np.median(tf)), float(np.median(tb)), float(np.median(ratios)), pf / reps, pb / reps


def speed(quick: bool) -> dict:
    gs = gspaces.rot2dOnR2(8)
    ft = enn.FieldType(gs, [gs.regular_repr] * 32)
    strides = [8, 16, 32, 64, 128]
    canvas = (1025, 1025)
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 256, 1024 // s + 1, 1024 // s + 1, generator=gen) for s in strides]
    print(f"pyramid: maps {[tuple(f.shape[-2:]) for f in feats]}, {ft.size} channels (32 C8 regular fields), "
          f"torch threads {torch.get_num_threads()}")

    def ours(angle):
        return lambda: rotate_pyramid(feats, ft, strides, angle, canvas)

    def clone():
        return [f.clone() for f in feats]

    def ours90_contiguous():
        return [o.contiguous() for o in rotate_pyramid(feats, ft, strides, 90, canvas)]

    def escnn(k):
        element = gs.fibergroup.element(k)
        return lambda: [enn.GeometricTensor(f, ft).transform(element).tensor for f in feats]

    reps = 15 if quick else 100
    t90, tclone, ratio, pf90, pfclone = interleaved_ratio(ours(90), clone, reps)
    t90c, _, ratio_c, _, _ = interleaved_ratio(ours90_contiguous, clone, max(5, reps // 3))
    t180, _, ratio180, _, _ = interleaved_ratio(ours(180), clone, max(5, reps // 3))
    t270, _, ratio270, _, _ = interleaved_ratio(ours(270), clone, max(5, reps // 3))
    trot, _, ratio_rot, _, _ = interleaved_ratio(lambda: [torch.rot90(f, 1, (-2, -1)) for f in feats], clone,
                                                 max(5, reps // 3))
    t45 = median_time(ours(45), max(3, reps // 6), warmup=2)[0]
    te90 = median_time(escnn(2), 3 if quick else 5, warmup=1)[0]
    te45 = median_time(escnn(1), 1 if quick else 3, warmup=0 if quick else 1)[0]
    # sanity: the two agree at 90° (bitwise) and closely at 45° inside a disc
    e90 = escnn(2)()
    assert all(torch.equal(a, b) for a, b in zip(ours(90)(), e90)), "90° differs from escnn"
    print(f"  clone                 {tclone * 1e3:8.2f} ms  ({pfclone:.0f} page faults per call)")
    print(f"  ours 90°              {t90 * 1e3:8.2f} ms  ({ratio:.2f}x clone; transposed views; {pf90:.0f} page "
          f"faults per call)")
    print(f"  ours 90° .contiguous  {t90c * 1e3:8.2f} ms  ({ratio_c:.2f}x clone)")
    print(f"  ours 180°             {t180 * 1e3:8.2f} ms  ({ratio180:.2f}x clone)")
    print(f"  ours 270°             {t270 * 1e3:8.2f} ms  ({ratio270:.2f}x clone)")
    print(f"  torch.rot90 only      {trot * 1e3:8.2f} ms  ({ratio_rot:.2f}x clone; no fibre part, a view)")
    print(f"  ours 45°              {t45 * 1e3:8.2f} ms")
    print(f"  escnn 90°             {te90 * 1e3:8.2f} ms")
    print(f"  escnn 45°             {te45 * 1e3:8.2f} ms")
    return {"rot90_over_clone": ratio, "escnn_over_ours_90": te90 / t90, "escnn_over_ours_45": te45 / t45}


def load_scene(size: int = 1025) -> tuple[torch.Tensor, str]:
    """(1, 3, size, size) float64 RGB scene in [0, 1]: the DOTA sample image resized, or, without it, a generated
    band-limited one (sums of plane waves: smooth enough that resampling it is accurate, unlike a rendered scene)."""
    if SAMPLE.is_file():
        img, what = load_image(str(SAMPLE), (size, size))
        return torch.tensor(img[..., ::-1].copy(), dtype=torch.float64).permute(2, 0, 1)[None] / 255.0, what
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = []
    for c in range(3):
        v = np.zeros((size, size))
        for _ in range(40):
            fy, fx, ph = rng.uniform(-40, 40), rng.uniform(-40, 40), rng.uniform(0, 2 * np.pi)
            v += np.cos(2 * np.pi * (fy * yy + fx * xx) + ph) / (1 + math.hypot(fy, fx))
        v += (rng.random((size, size)) < 0.001) * 3.0
        chans.append(v)
    img = np.stack(chans)
    img = (img - img.min()) / (img.max() - img.min())
    return torch.tensor(img)[None], f"generated image ({SAMPLE} not found)"


def pool(scene: torch.Tensor) -> torch.Tensor:
    """5x5 box filter sampled at stride 4: pixel i <- scene pixel 4i (centre kept)."""
    return F.avg_pool2d(scene, 5, stride=4, padding=2, count_include_pad=False)


def disc_mask(n: int, frac: float = 0.6) -> torch.Tensor:
    c = (n - 1) / 2.0
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64),
                            indexing="ij")
    return (yy - c) ** 2 + (xx - c) ** 2 <= (frac * c) ** 2


def build_network():
    """(name, module, list of (field_type, stride)) of a C8 network taking 3 trivial fields."""
    torch.manual_seed(0)
    try:
        from rotplugin.models import EquivariantResNet
        net = EquivariantResNet(depth=18, orientation=8)
        levels = list(zip(net.out_field_types, net.out_strides))
        return "rotplugin.models.EquivariantResNet(depth=18, orientation=8), random init, eval", net, levels
    except Exception as exc:       # the project's backbone is optional here
        print(f"  (EquivariantResNet unavailable: {type(exc).__name__}: {exc}; using a small escnn network)")
        torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(8)
    t_in = enn.FieldType(gs, [gs.trivial_repr] * 3)
    t1 = enn.FieldType(gs, [gs.regular_repr] * 8)
    t2 = enn.FieldType(gs, [gs.regular_repr] * 16)
    body = enn.SequentialModule(
        enn.R2Conv(t_in, t1, 7, padding=3), enn.ReLU(t1),
        enn.R2Conv(t1, t2, 5, padding=2, stride=2), enn.ReLU(t2),
        enn.R2Conv(t2, t2, 3, padding=1, stride=2))

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):
            return (self.body(enn.GeometricTensor(x, t_in)).tensor,)

    return "small escnn C8 network (7x7 trivial->8 regular, 5x5/2 ->16, 3x3/2 ->16), random init", Small(), [(t2, 4)]


def accuracy() -> dict:
    scene, what = load_scene()
    print(f"image: {what}")
    image = pool(scene)                                   # (1, 3, 257, 257)
    image45 = pool(rotate_grid(scene, 45))
    n = image.shape[-1]
    mean = image.mean(dim=(2, 3), keepdim=True)
    std = image.std(dim=(2, 3), keepdim=True)
    x, x45 = ((image - mean) / std).float(), ((image45 - mean) / std).float()

    mask = disc_mask(n)
    back = rotate_grid(rotate_grid(image, 45), -45)
    err_input = ((back - image)[..., mask].norm() / image[..., mask].norm()).item()
    direct = ((rotate_grid(image, 45) - image45)[..., mask].norm() / image45[..., mask].norm()).item()

    name, net, levels = build_network()
    print(f"network: {name}")
    net.eval()
    x90 = ((pool(rotate_grid(scene, 90)) - mean) / std).float()         # exact: index ops only
    with torch.no_grad():
        feats, feats45, feats90 = net(x), net(x45), net(x90)
    err90 = max(((rotate_fields(f, ft, 90, stride=s, canvas_size=(n, n)) - f90).norm() / f90.norm()).item()
                for (ft, s), f, f90 in zip(levels, feats, feats90))
    print(f"  sanity: 90° equivariance error of the same features (whole maps) {err90:.2e}")
    num = den = 0.0
    for (ft, stride), f, f45 in zip(levels, feats, feats45):
        kw = dict(stride=stride, canvas_size=(n, n))
        rot = rotate_fields(f, ft, 45, **kw)
        m = disc_mask(f.shape[-1])
        d2 = ((rot - f45)[..., m] ** 2).sum().item()
        r2 = (f45[..., m] ** 2).sum().item()
        num, den = num + d2, den + r2
        back = rotate_fields(rotate_fields(f, ft, 45, **kw), ft, -45, **kw)
        e_back = ((back - f)[..., m].norm() / f[..., m].norm()).item()
        print(f"  stride {stride:3d} map {tuple(f.shape[-2:])}: err45 {math.sqrt(d2 / r2):.4f}   "
              f"(features rotated 45° and back vs themselves: {e_back:.4f})")
    err_feat = math.sqrt(num / den)
    print(f"  input: rotate 45° and back vs original {err_input:.4f}; rotate(I, 45°) vs pool(rotate(S, 45°)) "
          f"{direct:.4f}")
    return {"err45_features": err_feat, "err45_input": err_input}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="write (and resume) the five results in this JSON file")
    parser.add_argument("--force", action="store_true", help="measure again what --json already holds")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    store = ResumableResults(args.json, force=args.force)
    image = str(SAMPLE) if SAMPLE.is_file() else "generated"
    measurements = [("speed", lambda: speed(args.quick),   # timing: results of the old plain pairs are redone
                     dict(quick=args.quick, threads=args.threads, timing="steady-state pairs")),
                    ("accuracy", accuracy, dict(image=image))]
    results = {}
    for name, fn, settings in measurements:
        if not store.done(name, settings):
            store.put(name, {k: float(v) for k, v in fn().items()}, settings)
        results.update({k: v for k, v in store.get(name).items() if k in KEYS})
        store.data.update(results)  # the flat summary at the top level
        store.save()
    print()
    print(f"{'metric':22s} {'value':>10s}  goal")
    goals = {"rot90_over_clone": "<= 2", "escnn_over_ours_45": ">= 20"}
    for key in KEYS:
        print(f"{key:22s} {results[key]:10.4f}  {goals.get(key, '')}")
    print(f"(total {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
