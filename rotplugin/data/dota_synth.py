"""Synthetic aerial scenes in DOTA format (numpy + OpenCV only).

A scene is a textured ground (smooth colour variation, fields with furrows, roads with lane marks, buildings,
coastline and water, parking lots, clutter blobs, pixel noise) with oriented objects of a few DOTA v1.0 classes:

* ``plane``: fuselage with a pointed nose and cockpit, swept wings with engines, tail plane;
* ``ship``: hull with a pointed bow, hatches, superstructure at the stern (on water);
* ``small-vehicle``: car with a long bonnet, dark windscreen at the front and a small rear window (on roads, in
  driving direction, and in parking lots);
* ``large-vehicle``: truck with a narrower cab and windscreen at the front and a long trailer;
* ``storage-tank``: concentric discs, rotation symmetric (in clusters).

All but the tanks look different when turned by 180 degrees, so their heading is visible. Objects do not overlap
(their boxes are separated); tree crowns drawn over them occlude some (those with a tree centred in their box get
difficulty 1).

**Boxes.** Every object is drawn in its own frame ``(u, v)``: ``u`` forward (towards the nose / bow / windscreen),
``v`` to the object's right (seen from above). Its box is the tight ``u``-``v`` rectangle of everything drawn for it
(for tanks, whose heading is meaningless, the axis-aligned square around the disc). The DOTA polygon lists the box
corners **front-left, front-right, rear-right, rear-left**: clockwise as displayed, the first edge is the front,
so the heading is the direction from the middle of edge 3-4 to the middle of edge 1-2. ``angle`` is that heading
in degrees in ``[0, 360)``, counter-clockwise as displayed (0 = facing +x, 90 = facing up, i.e. -y), the
convention of :mod:`rotplugin.canvas`. Coordinates: pixel centres at integer ``(x, y)``; corners are rounded to
0.01 px (what is written is exactly what :func:`render_scene` returns).

**Determinism.** Image ``i`` of :func:`generate_dataset` is rendered from ``numpy.random.default_rng([seed, i])``
alone, so a seed gives byte-identical files whatever the number of workers.

Images are BGR ``uint8`` (OpenCV order), written as PNG.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .dota_split import DOTA_V1_CLASSES, format_dota_line, worker_pool

__all__ = ["SYNTH_CLASSES", "render_scene", "draw_object", "object_parts", "generate_dataset", "parse_size"]

SYNTH_CLASSES: Tuple[str, ...] = ("plane", "ship", "small-vehicle", "large-vehicle", "storage-tank")
assert set(SYNTH_CLASSES) <= set(DOTA_V1_CLASSES)

# length range in px (tanks: diameter) and width / length range
_SIZES = {
    "plane": ((34.0, 80.0), (0.85, 1.1)),
    "ship": ((28.0, 90.0), (0.18, 0.28)),
    "small-vehicle": ((16.0, 24.0), (0.44, 0.54)),
    "large-vehicle": ((30.0, 62.0), (0.26, 0.34)),
    "storage-tank": ((16.0, 64.0), (1.0, 1.0)),
}
# expected objects per 512x512 image, by theme
_THEMES = {
    "airport": dict(plane=4.0, **{"small-vehicle": 3.0, "large-vehicle": 1.5, "storage-tank": 0.5}),
    "harbor": dict(ship=5.0, **{"small-vehicle": 2.0, "large-vehicle": 2.0, "storage-tank": 2.5}),
    "urban": {"small-vehicle": 14.0, "large-vehicle": 2.0, "plane": 0.3, "storage-tank": 0.5},
    "rural": {"small-vehicle": 3.0, "large-vehicle": 1.0, "storage-tank": 1.5, "plane": 0.5},
    "industrial": {"storage-tank": 7.0, "large-vehicle": 3.0, "small-vehicle": 3.0},
}
_GROUNDS = {  # BGR
    "grass": (70, 115, 95), "soil": (95, 125, 150), "sand": (140, 175, 200), "concrete": (150, 152, 150),
    "urban": (110, 112, 118),
}
_THEME_GROUNDS = {
    "airport": ("concrete", "grass", "sand"), "harbor": ("concrete", "soil", "urban"),
    "urban": ("urban", "concrete", "soil"), "rural": ("grass", "soil", "sand"),
    "industrial": ("concrete", "soil", "sand"),
}
_SHIFT = 4  # fractional bits for OpenCV drawing
_SCALE = 1 << _SHIFT


def parse_size(size: Union[int, str, Sequence[int]]) -> Tuple[int, int]:
    """``512`` / ``"512"`` -> ``(512, 512)``; ``"1500x1300"`` / ``(1500, 1300)`` -> ``(width, height)``."""
    if isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        size = [int(p) for p in parts] if len(parts) == 2 else int(parts[0])
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        w, h = (int(v) for v in size)
    if w < 64 or h < 64:
        raise ValueError(f"image size must be at least 64x64, got {w}x{h}")
    return w, h


# ---------------------------------------------------------------------------------------------------------------
# object shapes, in units of the object length, frame (u forward, v right)
# ---------------------------------------------------------------------------------------------------------------
def _rect(u0, u1, v0, v1):
    return np.array([(u1, v0), (u1, v1), (u0, v1), (u0, v0)], np.float64)


def _jitter(rng, colour, amount):
    """``colour`` shifted in brightness by up to ``amount`` and in hue by up to a third of it."""
    d = rng.integers(-amount, amount + 1, 4).tolist()
    return tuple(min(255, max(0, int(c) + d[0] + e // 3)) for c, e in zip(colour, d[1:]))


def object_parts(cls: str, width_ratio: float, rng: np.random.Generator) -> list:
    """Parts ``("poly", (n, 2) array, bgr)`` / ``("circle", (u, v), r, bgr)`` of one object, in units of its length.

    The parts span exactly ``u in [-0.5, 0.5]`` and ``v in [-width_ratio / 2, width_ratio / 2]``.
    """
    h = width_ratio / 2.0
    if cls == "plane":
        body = _jitter(rng, (228, 228, 228), 20)
        dark = _jitter(rng, (95, 95, 100), 15)
        fh = 0.05
        fus = np.array([(0.5, 0.0), (0.46, 0.028), (0.40, fh), (-0.38, 0.8 * fh), (-0.5, 0.018), (-0.5, -0.018),
                        (-0.38, -0.8 * fh), (0.40, -fh), (0.46, -0.028)])
        sweep = rng.uniform(0.18, 0.28)
        chord = rng.uniform(0.09, 0.13)
        wing = np.array([(0.14, 0.02), (0.14 - sweep, h), (0.14 - sweep - chord, h), (0.14 - 2.2 * chord, 0.02)])
        ts = min(h, rng.uniform(0.14, 0.19))
        tail = np.array([(-0.33, 0.01), (-0.45, ts), (-0.5, ts), (-0.45, 0.01)])
        ev = 0.45 * h
        eu = 0.14 - sweep * ev / h + 0.02
        engine = _rect(eu - 0.09, eu, ev - 0.022, ev + 0.022)
        flip = np.array([1.0, -1.0])
        cockpit = np.array([(0.45, 0.0), (0.41, 0.025), (0.39, 0.0), (0.41, -0.025)])
        return [("poly", wing, body), ("poly", wing * flip, body), ("poly", tail, body),
                ("poly", tail * flip, body), ("poly", engine, dark), ("poly", engine * flip, dark),
                ("poly", fus, body), ("poly", cockpit, (40, 40, 45))]
    if cls == "ship":
        hull_c = _jitter(rng, [(80, 80, 85), (60, 60, 140), (120, 90, 60), (170, 170, 170)][rng.integers(4)], 15)
        deck_c = _jitter(rng, (140, 140, 135), 25)
        hull = np.array([(0.5, 0.0), (0.28, h), (-0.46, h), (-0.5, 0.7 * h), (-0.5, -0.7 * h), (-0.46, -h),
                         (0.28, -h)])
        deck = np.array([(0.44, 0.0), (0.26, 0.75 * h), (-0.44, 0.75 * h), (-0.44, -0.75 * h), (0.26, -0.75 * h)])
        parts = [("poly", hull, hull_c), ("poly", deck, deck_c)]
        n_hatch = int(rng.integers(0, 4))
        for k in range(n_hatch):
            u1 = 0.22 - k * 0.14
            parts.append(("poly", _rect(u1 - 0.1, u1, -0.5 * h, 0.5 * h), _jitter(rng, (90, 100, 110), 30)))
        parts.append(("poly", _rect(-0.42, -0.2, -0.62 * h, 0.62 * h), _jitter(rng, (235, 235, 235), 15)))
        parts.append(("poly", _rect(-0.26, -0.22, -0.5 * h, 0.5 * h), (50, 50, 55)))
        return parts
    if cls == "small-vehicle":
        body_c = [(200, 200, 200), (30, 30, 35), (40, 40, 170), (150, 90, 40), (150, 150, 150), (230, 230, 230),
                  (60, 120, 60)][rng.integers(7)]
        body_c = _jitter(rng, body_c, 15)
        cu, cv = 0.07, 0.3 * h
        body = np.array([(0.5, -h + cv), (0.5, h - cv), (0.5 - cu, h), (-0.5 + cu, h), (-0.5, h - cv),
                         (-0.5, -h + cv), (-0.5 + cu, -h), (0.5 - cu, -h)])
        glass = (25, 25, 30) if sum(body_c) > 200 else (110, 110, 120)
        windscreen = np.array([(0.25, -0.78 * h), (0.25, 0.78 * h), (0.08, 0.88 * h), (0.08, -0.88 * h)])
        rear = np.array([(-0.27, -0.8 * h), (-0.27, 0.8 * h), (-0.36, 0.7 * h), (-0.36, -0.7 * h)])
        return [("poly", body, body_c), ("poly", windscreen, glass), ("poly", rear, glass)]
    if cls == "large-vehicle":
        trailer_c = _jitter(rng, [(215, 215, 215), (170, 175, 180), (60, 90, 160), (140, 100, 60)][rng.integers(4)],
                            15)
        cab_c = _jitter(rng, [(40, 40, 180), (200, 200, 200), (160, 90, 30), (40, 40, 40)][rng.integers(4)], 15)
        cab = np.array([(0.5, -0.72 * h), (0.5, 0.72 * h), (0.46, 0.88 * h), (0.30, 0.88 * h), (0.30, -0.88 * h),
                        (0.46, -0.88 * h)])
        return [("poly", _rect(0.25, 0.31, -0.35 * h, 0.35 * h), (45, 45, 50)),
                ("poly", _rect(-0.5, 0.26, -h, h), trailer_c),
                ("poly", _rect(-0.47, 0.23, -0.8 * h, 0.8 * h), _jitter(rng, trailer_c, 12)),
                ("poly", cab, cab_c),
                ("poly", _rect(0.42, 0.47, -0.7 * h, 0.7 * h), (30, 30, 35))]
    if cls == "storage-tank":
        shell = _jitter(rng, (215, 218, 220), 25)
        return [("circle", (0.0, 0.0), 0.5, _jitter(rng, (150, 150, 150), 20)),
                ("circle", (0.0, 0.0), 0.44, shell),
                ("circle", (0.0, 0.0), 0.12, _jitter(rng, shell, 25))]
    raise ValueError(f"unknown synthetic class {cls!r}; available: {', '.join(SYNTH_CLASSES)}")


def _frame(cx, cy, angle_deg):
    a = math.radians(angle_deg)
    return cx, cy, math.cos(a), math.sin(a)


def _to_image(local: np.ndarray, length: float, frame) -> np.ndarray:
    cx, cy, c, s = frame
    return local @ np.array([[c * length, -s * length], [s * length, c * length]]) + (cx, cy)


def _box(length, width, frame) -> np.ndarray:
    local = np.array([(0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5)]) * np.array([1.0, width / length])
    return _to_image(local, length, frame)


def draw_object(img: np.ndarray, cls: str, cx: float, cy: float, length: float, width: float, angle: float,
                rng: np.random.Generator) -> np.ndarray:
    """Draw one object into ``img`` (in place); returns its DOTA polygon ``(4, 2)`` (see the module doc).

    ``length`` along the heading, ``width`` across it, ``angle`` the heading (degrees, counter-clockwise as
    displayed). For ``storage-tank`` ``length`` is the diameter and ``angle`` is ignored (0).
    """
    if cls == "storage-tank":
        width, angle = length, 0.0
    frame = _frame(cx, cy, angle)
    for part in object_parts(cls, width / length, rng):
        if part[0] == "poly":
            pts = np.round(_to_image(part[1], length, frame) * _SCALE).astype(np.int32)
            cv2.fillPoly(img, [pts], part[2], cv2.LINE_AA, _SHIFT)
        else:
            centre = np.round(_to_image(np.array([part[1]]), length, frame)[0] * _SCALE).astype(int)
            cv2.circle(img, (int(centre[0]), int(centre[1])), int(round(part[2] * length * _SCALE)), part[3], -1,
                       cv2.LINE_AA, _SHIFT)
    return np.round(_box(length, width, frame), 2)


# ---------------------------------------------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------------------------------------------
class _Occupancy:
    """Oriented boxes already used; a new box may not come closer than ``margin`` px (separating axes)."""

    def __init__(self, width, height, border=2.0, margin=1.0):
        self.w, self.h, self.border, self.margin = width, height, border, margin
        self.boxes: List[np.ndarray] = []
        self.centres = np.zeros((0, 2))
        self.radii = np.zeros((0,))

    def fits(self, box: np.ndarray) -> bool:
        lo, hi = box.min(axis=0), box.max(axis=0)
        if lo[0] < self.border or lo[1] < self.border or hi[0] > self.w - 1 - self.border \
                or hi[1] > self.h - 1 - self.border:
            return False
        c = box.mean(axis=0)
        r = float(np.linalg.norm(box[0] - c))
        if len(self.boxes):
            near = np.nonzero(np.hypot(*(self.centres - c).T) < self.radii + r + self.margin)[0]
            for i in near:
                if not self._separated(box, self.boxes[i]):
                    return False
        return True

    def _separated(self, a, b):
        for poly in (a, b):
            for k in range(2):
                e = poly[k + 1] - poly[k]
                n = np.array([-e[1], e[0]]) / (math.hypot(e[0], e[1]) + 1e-12)
                pa, pb = a @ n, b @ n
                if pa.max() + self.margin <= pb.min() or pb.max() + self.margin <= pa.min():
                    return True
        return False

    def add(self, box: np.ndarray) -> None:
        c = box.mean(axis=0)
        self.boxes.append(box)
        self.centres = np.vstack([self.centres, c[None]])
        self.radii = np.append(self.radii, np.linalg.norm(box[0] - c))


def _sample_dims(rng, cls, scale):
    (l0, l1), (r0, r1) = _SIZES[cls]
    length = rng.uniform(l0, l1) * scale
    return length, (length if cls == "storage-tank" else length * rng.uniform(r0, r1))


# ---------------------------------------------------------------------------------------------------------------
# scene
# ---------------------------------------------------------------------------------------------------------------
def _background(rng, w, h, ground):
    """Ground colour with smooth variation: built on a coarse grid, one resize up (fast)."""
    base = np.array(_GROUNDS[ground], np.float32) + rng.uniform(-15, 15) + rng.uniform(-5, 5, 3).astype(np.float32)
    gh, gw = max(2, h // 48), max(2, w // 48)
    colour = cv2.resize(rng.normal(0.0, 1.0, (max(2, gh // 2), max(2, gw // 2), 3)).astype(np.float32), (gw, gh),
                        interpolation=cv2.INTER_LINEAR)
    lum = rng.normal(0.0, 1.0, (gh, gw, 1)).astype(np.float32)
    small = np.clip(base + 3.0 * colour + 9.0 * lum, 0, 255).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _add_noise(rng, img, amplitude=5):
    """Per-pixel grey noise in ``[-amplitude, amplitude]`` with saturation, from ``rng`` (uint8 ops, fast)."""
    h, w = img.shape[:2]
    lut = (np.arange(256) * (2 * amplitude + 1) // 256).astype(np.uint8)
    noise = lut[np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w)]
    noise = cv2.merge([noise, noise, noise])
    return cv2.subtract(cv2.add(img, noise), (amplitude, amplitude, amplitude, 0))


def _rot_rect(cx, cy, a, b, angle):
    return _to_image(np.array([(0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5)]) * np.array([a, b]), 1.0,
                     _frame(cx, cy, angle))


def _fill(img, pts, colour, aa=False):
    cv2.fillPoly(img, [np.round(pts * _SCALE).astype(np.int32)], colour, cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def _segments(img, p, q, colour):
    """Many 1-px anti-aliased segments ``p[i] -> q[i]`` (arrays ``(n, 2)``) in one call."""
    if len(p):
        pts = np.round(np.stack([p, q], axis=1) * _SCALE).astype(np.int32)
        cv2.polylines(img, list(pts), False, colour, 1, cv2.LINE_AA, _SHIFT)


def _line(img, p, q, colour, thickness):
    cv2.line(img, tuple(int(v) for v in np.round(np.asarray(p) * _SCALE)),
             tuple(int(v) for v in np.round(np.asarray(q) * _SCALE)), colour, int(thickness), cv2.LINE_AA, _SHIFT)


def render_scene(rng: np.random.Generator, size: Union[int, Sequence[int], str] = 512,
                 classes: Optional[Sequence[str]] = None, density: float = 1.0,
                 theme: Optional[str] = None) -> Tuple[np.ndarray, List[dict]]:
    """Render one scene.

    Args:
        rng: the only source of randomness.
        size: ``S`` (square) or ``(width, height)`` / ``"WxH"``.
        classes: the classes to draw (default :data:`SYNTH_CLASSES`).
        density: multiplies the expected number of objects.
        theme: ``airport``, ``harbor``, ``urban``, ``rural`` or ``industrial`` (default: drawn at random among
            those with objects of ``classes``).

    Returns:
        ``(image, objects)``: BGR ``uint8`` image ``(H, W, 3)``; objects: dicts ``poly`` ((4, 2) float, DOTA corner
        order), ``label``, ``difficulty`` (0, or 1 when a tree is over it), ``angle`` (heading, degrees),
        ``center`` ``(x, y)``, ``length``, ``width``. At least one object.
    """
    w, h = parse_size(size)
    classes = tuple(SYNTH_CLASSES if classes is None else classes)
    for c in classes:
        if c not in SYNTH_CLASSES:
            raise ValueError(f"unknown synthetic class {c!r}; available: {', '.join(SYNTH_CLASSES)}")
    if theme is None:
        themes = sorted(t for t, lam in _THEMES.items() if any(lam.get(c, 0) >= 1.0 for c in classes))
        themes = themes or sorted(_THEMES)
        theme = themes[rng.integers(len(themes))]
    elif theme not in _THEMES:
        raise ValueError(f"unknown theme {theme!r}; available: {', '.join(_THEMES)}")
    area = w * h / 512.0 ** 2
    scale = rng.uniform(0.85, 1.2)  # ground sampling distance
    grounds = _THEME_GROUNDS[theme]
    img = _background(rng, w, h, grounds[rng.integers(len(grounds))])
    occ = _Occupancy(w, h)
    objects: List[dict] = []

    def place(cls, cx, cy, length, width, angle, rng=rng):
        angle = 0.0 if cls == "storage-tank" else float(angle) % 360.0
        if cls == "storage-tank":
            width = length
        box = _box(length, width, _frame(cx, cy, angle))
        if not occ.fits(box):
            return False
        poly = draw_object(img, cls, cx, cy, length, width, angle, rng)
        occ.add(box)
        objects.append(dict(poly=poly, label=cls, difficulty=0, angle=angle, center=(float(cx), float(cy)),
                            length=float(length), width=float(width)))
        return True

    # --- fields with furrows
    for _ in range(rng.poisson(2.0 * area) if theme in ("rural", "airport", "industrial") else rng.poisson(0.5 * area)):
        a, b = rng.uniform(60, 260, 2)
        fx, fy, fa = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 180)
        col = _jitter(rng, tuple(int(v) for v in img[int(fy), int(fx)]), 28)
        field = _rot_rect(fx, fy, a, b, fa)
        _fill(img, field, col)
        if rng.random() < 0.6:
            fr = _frame(fx, fy, fa)
            dark = _jitter(rng, col, 6)
            u = np.arange(-a / 2 + 2, a / 2 - 1, rng.uniform(4, 9))
            p = _to_image(np.stack([u, np.full_like(u, -b / 2 + 1)], 1), 1.0, fr)
            q = _to_image(np.stack([u, np.full_like(u, b / 2 - 1)], 1), 1.0, fr)
            _segments(img, p, q, tuple(max(0, c - 14) for c in dark))

    # --- water (harbor): a coastline across the image, water on one side
    water = None
    if theme == "harbor":
        water = np.zeros((h, w), np.uint8)
        side = rng.integers(4)
        n = 9
        t = np.linspace(-0.05, 1.05, n)
        depth = rng.uniform(0.35, 0.6) + rng.uniform(-0.08, 0.08, n)
        if side in (0, 1):  # water left / right
            xs = depth * w if side == 0 else (1 - depth) * w
            edge = np.stack([xs, t * h], 1)
            ends = [(-5, h + 5), (-5, -5)] if side == 0 else [(w + 5, h + 5), (w + 5, -5)]
        else:  # water top / bottom
            ys = depth * h if side == 2 else (1 - depth) * h
            edge = np.stack([t * w, ys], 1)
            ends = [(w + 5, -5), (-5, -5)] if side == 2 else [(w + 5, h + 5), (-5, h + 5)]
        poly = np.vstack([edge, np.array(ends, np.float64)])
        _fill(water, poly, 255)
        wc = _jitter(rng, (95, 80, 45), 15)
        _fill(img, poly, wc, aa=True)
        wave = tuple(min(255, c + 18) for c in wc)
        wa = rng.uniform(0, 180)
        wd = np.array([math.cos(math.radians(wa)), -math.sin(math.radians(wa))])
        n = rng.poisson(40 * area)  # wavelets
        p = rng.uniform(0, 1, (n, 2)) * (w - 1, h - 1)
        q = p + wd * rng.uniform(4, 14, (n, 1))
        pi, qi = p.astype(int), np.clip(q, 0, (w - 1, h - 1)).astype(int)
        wet = (water[pi[:, 1], pi[:, 0]] > 0) & (water[qi[:, 1], qi[:, 0]] > 0)
        _segments(img, p[wet], q[wet], wave)

    # --- roads (vehicles drive on them)
    roads = []
    n_roads = rng.poisson({"urban": 2.5, "rural": 1.2, "industrial": 1.5, "airport": 1.0, "harbor": 1.0}[theme]
                          * math.sqrt(area))
    for _ in range(n_roads):
        rx, ry, ra = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 180)
        width = rng.uniform(14, 24) * scale
        d = np.array([math.cos(math.radians(ra)), -math.sin(math.radians(ra))])
        reach = w + h
        p, q = np.array([rx, ry]) - reach * d, np.array([rx, ry]) + reach * d
        if water is not None and water[int(ry), int(rx)]:
            continue
        _line(img, p, q, _jitter(rng, (105, 105, 108), 15), width)
        if rng.random() < 0.6:
            dash = rng.uniform(6, 12)
            t0 = np.arange(-reach, reach, 2.5 * dash)[:, None]
            _segments(img, np.array([rx, ry]) + t0 * d, np.array([rx, ry]) + (t0 + dash) * d, (200, 205, 205))
        roads.append((rx, ry, ra, width))

    # --- buildings (obstacles, clutter)
    for _ in range(rng.poisson({"urban": 6.0, "industrial": 4.0, "harbor": 3.0}.get(theme, 1.5) * area)):
        a, b = rng.uniform(18, 70, 2)
        bx, by, ba = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 90)
        rect = _rot_rect(bx, by, a, b, ba)
        if not occ.fits(rect) or (water is not None and water[int(by), int(bx)]):
            continue
        roof = _jitter(rng, [(150, 150, 150), (60, 70, 150), (80, 100, 120), (190, 190, 185)][rng.integers(4)], 12)
        _fill(img, rect + np.array([3.0, 3.0]), tuple(max(0, c - 60) for c in roof))  # shadow
        _fill(img, rect, roof, aa=True)
        _fill(img, _rot_rect(bx, by, a * 0.6, b * 0.6, ba), _jitter(rng, roof, 10))
        occ.add(rect)

    # --- clutter blobs (under objects)
    for _ in range(rng.poisson(8 * area)):
        ax = tuple(int(v) for v in rng.uniform(2, 9, 2) * _SCALE)
        ctr = tuple(int(v) for v in (rng.uniform(0, w) * _SCALE, rng.uniform(0, h) * _SCALE))
        cv2.ellipse(img, ctr, ax, float(rng.uniform(0, 180)), 0, 360, tuple(int(v) for v in rng.integers(30, 230, 3)),
                    -1, cv2.LINE_AA, _SHIFT)

    lam = {c: v * density * area for c, v in _THEMES[theme].items() if c in classes}

    # --- parking lots full of cars
    if "small-vehicle" in lam and theme in ("urban", "airport", "harbor", "industrial") and rng.random() < 0.6:
        for _ in range(max(1, rng.poisson(0.8 * area))):
            car_l = rng.uniform(17, 22) * scale
            car_w = car_l * rng.uniform(0.44, 0.52)
            slot, cols, rows = car_w * rng.uniform(1.35, 1.7), int(rng.integers(3, 9)), int(rng.integers(1, 3))
            aisle = car_l * 1.3
            la, lb = cols * slot + 4, rows * (car_l + 3) + (aisle if rows == 2 else 0) + 4
            lx, ly, lang = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 360)
            lot = _rot_rect(lx, ly, la, lb, lang)
            if not occ.fits(lot) or (water is not None and water[int(ly), int(lx)]):
                continue
            _fill(img, lot, _jitter(rng, (85, 85, 90), 10), aa=True)
            fr = _frame(lx, ly, lang)
            for r in range(rows):
                v = (-lb / 2 + 2 + car_l / 2) if r == 0 else (lb / 2 - 2 - car_l / 2)
                heading = lang - 90 if r == 0 else lang + 90  # cars face the aisle / the lot's middle
                for k in range(cols):
                    u = -la / 2 + 2 + slot * (k + 0.5)
                    e1, e2 = _to_image(np.array([(u - slot / 2, v - car_l / 2), (u - slot / 2, v + car_l / 2)]),
                                       1.0, fr)
                    _line(img, e1, e2, (190, 195, 195), 1)
                    if rng.random() < 0.75:
                        cx, cy = _to_image(np.array([(u, v)]), 1.0, fr)[0]
                        if rng.random() < 0.2:
                            heading_k = heading + 180
                        else:
                            heading_k = heading
                        place("small-vehicle", cx, cy, car_l, car_w, heading_k + rng.uniform(-4, 4))
            occ.add(lot)

    # --- vehicles on roads, driving on the right
    for cls in ("small-vehicle", "large-vehicle"):
        if cls not in lam or not roads:
            continue
        for _ in range(rng.poisson(0.6 * lam[cls])):
            rx, ry, ra, rw = roads[rng.integers(len(roads))]
            length, width = _sample_dims(rng, cls, scale)
            if width > 0.5 * rw:
                continue
            heading = ra + (180.0 if rng.random() < 0.5 else 0.0)
            t = rng.uniform(-(w + h) / 2, (w + h) / 2)
            a = math.radians(heading)
            d, right = np.array([math.cos(a), -math.sin(a)]), np.array([math.sin(a), math.cos(a)])
            c = np.array([rx, ry]) + t * d + right * rw / 4
            place(cls, c[0], c[1], length, width, heading + rng.uniform(-3, 3))

    # --- storage-tank clusters
    if "storage-tank" in lam:
        n_left = rng.poisson(lam["storage-tank"])
        while n_left > 0:
            d = _sample_dims(rng, "storage-tank", scale)[0]
            gx, gy = rng.uniform(0, w), rng.uniform(0, h)
            cols, rows = int(rng.integers(1, 4)), int(rng.integers(1, 3))
            pitch = d * rng.uniform(1.15, 1.5)
            for i, j in np.ndindex(rows, cols):
                tx, ty = gx + j * pitch, gy + i * pitch
                if water is None or not water[int(np.clip(ty, 0, h - 1)), int(np.clip(tx, 0, w - 1))]:
                    place("storage-tank", tx, ty, d * rng.uniform(0.95, 1.05), d, 0.0)
                n_left -= 1

    # --- ships on the water, everything else anywhere on land
    for cls, n in lam.items():
        if cls == "storage-tank":
            continue
        count = rng.poisson(n * (0.5 if cls in ("small-vehicle", "large-vehicle") and roads else 1.0))
        for _ in range(count):
            length, width = _sample_dims(rng, cls, scale)
            for _try in range(12):
                cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 360)
                if water is not None:
                    corners = _box(length, width, _frame(cx, cy, angle))
                    ij = np.clip(np.round(corners).astype(int), 0, [w - 1, h - 1])
                    wet = water[ij[:, 1], ij[:, 0]] > 0
                    if (cls == "ship") != bool(wet.all()) or (cls != "ship" and wet.any()):
                        continue
                elif cls == "ship":
                    break
                if place(cls, cx, cy, length, width, angle):
                    break

    # --- at least one object
    tries = 0
    while not objects and tries < 200:
        tries += 1
        cls = classes[rng.integers(len(classes))]
        length, width = _sample_dims(rng, cls, scale)
        shrink = min(1.0, 0.6 * min(w, h) / max(length, width))  # tiny images
        place(cls, rng.uniform(0, w), rng.uniform(0, h), length * shrink, width * shrink, rng.uniform(0, 360))
    if not objects:
        raise RuntimeError(f"could not place any object in a {w}x{h} image")

    # --- trees over everything: occlusion
    centres = np.array([o["center"] for o in objects])
    ang = np.radians([o["angle"] for o in objects])
    half = np.array([(o["length"] / 2, o["width"] / 2) for o in objects])
    for _ in range(rng.poisson({"rural": 5.0, "urban": 4.0}.get(theme, 2.0) * area)):
        tx, ty = rng.uniform(0, w), rng.uniform(0, h)
        green = _jitter(rng, (45, 85, 55), 12)
        for _k in range(int(rng.integers(2, 9))):
            px, py = tx + rng.normal(0, 6), ty + rng.normal(0, 6)
            r = rng.uniform(3, 8)
            cv2.circle(img, (int(px * _SCALE), int(py * _SCALE)), int(r * _SCALE), _jitter(rng, green, 10), -1,
                       cv2.LINE_AA, _SHIFT)
            dx, dy = px - centres[:, 0], py - centres[:, 1]
            u = dx * np.cos(ang) - dy * np.sin(ang)
            v = dx * np.sin(ang) + dy * np.cos(ang)
            for i in np.nonzero((np.abs(u) < half[:, 0]) & (np.abs(v) < half[:, 1]))[0]:
                objects[i]["difficulty"] = 1

    # --- sensor: slight blur and noise
    img = cv2.GaussianBlur(img, (3, 3), 0.7)
    return _add_noise(rng, img), objects


# ---------------------------------------------------------------------------------------------------------------
# data set
# ---------------------------------------------------------------------------------------------------------------
def _image_name(index: int) -> str:
    return f"P{index:04d}"


_PNG_STRATEGIES = {"default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT, "huffman": cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                   "rle": cv2.IMWRITE_PNG_STRATEGY_RLE, "filtered": cv2.IMWRITE_PNG_STRATEGY_FILTERED}


def _render_one(job):
    index, seed, size, classes, density, img_dir, ann_dir, png_params = job
    img, objects = render_scene(np.random.default_rng([seed, index]), size, classes, density)
    name = _image_name(index)
    if not cv2.imwrite(os.path.join(img_dir, name + ".png"), img, png_params):
        raise OSError(f"could not write {os.path.join(img_dir, name + '.png')!r}")
    with open(os.path.join(ann_dir, name + ".txt"), "w", encoding="utf-8") as f:
        f.write("".join(format_dota_line(o["poly"].ravel(), o["label"], o["difficulty"]) + "\n" for o in objects))
    return name, objects


def generate_dataset(out_dir: str, num_images: int, size: Union[int, str, Sequence[int]] = 512, seed: int = 0,
                     workers: int = 1, classes: Optional[Sequence[str]] = None, density: float = 1.0,
                     png_compression: int = 1, png_strategy: str = "huffman", overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Write ``num_images`` scenes to ``out_dir/images/P0000.png ...`` and ``out_dir/labelTxt/P0000.txt ...``.

    ``size``: ``S``, ``(W, H)`` or ``"WxH"`` (e.g. ``"1500x1300"`` for full-size images to split). Image ``i`` uses
    ``default_rng([seed, i])``: same seed -> same bytes, whatever ``workers``. Refuses a non-empty output unless
    ``overwrite``. PNG: zlib level ``png_compression`` with strategy ``png_strategy`` (``default``, ``huffman``,
    ``rle``, ``filtered``); the default (1, Huffman only) is the fastest to write, about 20 % larger than
    ``(9, "default")``. Returns ``dict(objects={name: [object dicts]}, seconds, images_per_s)``.
    """
    if png_strategy not in _PNG_STRATEGIES:
        raise ValueError(f"png_strategy must be one of {sorted(_PNG_STRATEGIES)}, got {png_strategy!r}")
    png_params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression), cv2.IMWRITE_PNG_STRATEGY,
                  _PNG_STRATEGIES[png_strategy]]
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    size = parse_size(size)
    img_dir, ann_dir = os.path.join(out_dir, "images"), os.path.join(out_dir, "labelTxt")
    for d in (img_dir, ann_dir):
        if os.path.isdir(d) and os.listdir(d) and not overwrite:
            raise FileExistsError(f"output directory {d!r} is not empty (pass overwrite=True / --overwrite)")
        os.makedirs(d, exist_ok=True)
    classes = None if classes is None else tuple(classes)
    jobs = [(i, int(seed), size, classes, float(density), img_dir, ann_dir, png_params)
            for i in range(num_images)]
    t0 = time.perf_counter()
    out: Dict[str, list] = {}
    every = max(1, num_images // 20)

    def report(k):
        if progress and (k % every == 0 or k == num_images):
            rate = k / max(time.perf_counter() - t0, 1e-9)
            print(f"synthetic DOTA: {k}/{num_images} images ({rate:.1f} images/s)", file=sys.stderr, flush=True)

    if workers > 1 and num_images > 1:
        chunk = max(1, min(8, num_images // (4 * workers)))
        with worker_pool(min(workers, num_images)) as pool:
            for k, (name, objs) in enumerate(pool.imap(_render_one, jobs, chunksize=chunk), start=1):
                out[name] = objs
                report(k)
    else:
        for k, job in enumerate(jobs, start=1):
            name, objs = _render_one(job)
            out[name] = objs
            report(k)
    seconds = time.perf_counter() - t0
    return dict(objects=out, seconds=seconds, images_per_s=num_images / max(seconds, 1e-9))
