"""Does equivariance pay on real imagery? An equal-budget, from-scratch CPU comparison on real DOTA images.

:func:`run_real_benchmark` trains four Rotated RetinaNets (le90) from scratch on patches of real DOTA images, with
the same iterations, schedule, data order rule, augmentation and head, and tests them on image regions training
never sees:

* **(a)** EquivariantResNet-18 **C4** (stem/base width 32, i.e. 8 regular C4 fields in the first stage) +
  EquivariantFPN (64 channels = 16 fields), the demo's detector (``configs/demo/...synthdota.py``);
* **(b)** the same with **C8** (same channel widths: 4 / 8 regular C8 fields; fewer free parameters);
* **(c)** a plain ``mmdet.ResNet`` depth 18 with the **same channel widths** (stem/base 32: 32-64-128-256) +
  ``mmdet.FPN`` (64 channels);
* **(d)** the plain ResNet-18 **narrowed to (a)'s parameter count**: the base width (an integer) whose whole
  detector has the parameter count nearest (a)'s (:func:`narrowed_width`; 14 for the default widths, +4 %), with
  the same FPN output (64 channels) and head, so that only the backbone's width (and with it the FPN's input
  convolutions) differs from (c).

Everything but backbone and neck is the demo config's and the same for all four: the data preprocessor
(``EquivariantDetDataPreprocessor``, ``max_stride=64``: every input is padded at the bottom/right to a canvas of
side ``≡ 1 (mod 64)``, 256² patches to 257², for the plain models too, so that they see exactly the same input),
the RetinaNet head (2 stacked convs of 64 channels, anchors from 16 px at stride 8, P3-P6), the assigner, AdamW
(lr 2e-3, weight decay 0.05, gradient clip 35) and ``test_cfg`` (score 0.05, rotated NMS IoU 0.1, 300 per image).
Widths are the demo's: that is what trains in minutes on 2 CPU cores.

Data (``data_dir``: ``images/<id>.png`` + ``labelTxt/<id>.txt`` of P0003, P0004, P0005, P0706, DOTA v1.0 format,
used at full resolution, no resize):

* **Classes**: small-vehicle, large-vehicle, ship. **harbor is dropped** (5 instances, all in P0706, up to 598 px
  long: larger than the training patches; no AP could be measured from them). Its pixels stay in the images, as
  background.
* **Split by region** (:data:`TRAIN_REGIONS`, :data:`HELDOUT_REGIONS`): training sees P0003, P0004 (all vehicles)
  and the rows ``y < 733`` of P0706 (ships); the held-out set is the whole of **P0005** (vehicles) and the rows
  ``y >= 733`` of **P0706** (ships; 449 rows = 7·64 + 1, an equivariant canvas side). No held-out pixel is ever
  in a training patch.
* **Objects cut by a crop line** (only P0706's line ``y = 733``; image borders do not count as cuts): an object is
  kept in a region when at least half of its polygon area (IoF >= 0.5) lies on that side, with its unclipped
  polygon shifted to region coordinates, and with **difficulty 2** when it is cut (IoF < 1): DOTA's Task1
  evaluation ignores difficult objects (a detection matching one counts neither way), so a half-visible ship is
  neither required nor penalised. Objects with IoF < 0.5 are dropped from the region.
* **Unlabelled vehicles**: DOTA v1.0 labels only ships (and harbors) in P0706, yet its quays and parking lots hold
  many cars. In training they are background for every model alike (nothing can be done without labels); in the
  evaluation the vehicle classes are scored on P0005 only and ship on both held-out images (:data:`EVAL_IMAGES`),
  so that a correct car detection in P0706 is not counted as a false positive (a ship detection in P0005, a bus
  depot without water, is a true false positive).
* **Held-out images** are the regions padded at the bottom/right with the ImageNet mean colour to their
  equivariant canvas (side ≡ 1 mod 64; W x H: P0005 884x977 -> 897x1025, P0706 bottom 1111x449 -> 1153x449), what
  the data preprocessor would pad them to anyway; the labels are unchanged. They are tested **whole** (no
  patches, no merge): the detectors are fully convolutional and fit these canvases.
* **Rotated held-out sets**: every held-out image rotated about its canvas centre by 90° (exact: ``np.rot90``;
  the canvas becomes W x H) and by 30° (bilinear, onto the smallest equivariant canvas that holds the whole
  rotated image, corners filled with the mean colour), ground-truth polygons mapped by the same point map
  (:mod:`rotplugin.canvas` conventions, :func:`rotate_region`). Even the equivariant detectors are not
  rotation-equivariant end to end: their RetinaNet head is plain convolutions over the fields' channels with fixed
  anchor shapes, so the 90° result differs from the unrotated one for every model (what is exact on the canvas
  is image TTA = feature TTA over 0/90/180/270°).
* **Training patches**: the training regions split by :func:`rotplugin.data.dota_split.split_dataset` into
  ``patch_size``² patches (default 256) with overlap ``patch_size // 4`` (MMRotate's rules: objects with IoF >=
  0.7 kept, patches without objects dropped).

Training (:func:`build_config`): mmengine's ``IterBasedTrainLoop``, ``iters`` iterations (default 600) of batch
``batch_size`` (default 4) drawn by an ``InfiniteSampler`` (shuffled, seeded by the run's seed), linear warm-up
over ``min(100, iters // 6)`` iterations from 0.1x, then cosine to 0.05x at ``iters`` (by iteration), the run's
seed in ``randomness``; the same **augmentation** for every model: mmrotate's ``RandomRotate`` (p 0.5, any angle
in [-180°, 180°), corners filled with the mean colour, boxes whose centre leaves the patch dropped) then
``mmdet.RandomFlip`` (p 0.75 over horizontal / vertical / diagonal). Weights are initialised from scratch (no
pretraining). A progress bar (:class:`rotplugin.engine.progress.ProgressBarHook`) shows the speed and the loss.
**Timed**: the wall time of ``Runner.train()`` (data loading and augmentation in the main process included, Runner
construction excluded) and ``sec_per_iter`` = that / iterations, on all the machine's cores (``torch_threads`` and
the load average before and after are recorded: another process on the machine slows a run down).

Evaluation (:func:`evaluate_run`): DOTA Task1 mAP (IoU 0.5, VOC07 11-point AP, difficult objects ignored;
:func:`rotplugin.data.dota_eval.evaluate_task1`) over the held-out images (per class those of :data:`EVAL_IMAGES`;
the mAP is the mean over the three classes), detections as le90 boxes turned
into corner polygons. Modes: ``none`` (the detector), ``image`` (:class:`~rotplugin.models.tta.
ImageRotationTTAModel`, views 0/90/180/270° of the canvas), ``feature`` (:class:`~rotplugin.models.tta.
FeatureRotationTTAModel`, the same views by rotating the feature pyramid; only for the equivariant models (a),
(b): a plain FPN's features cannot be rotated, so it is marked not applicable for (c), (d)), ``rot90`` and
``rot30`` (the rotated held-out sets, no TTA). The TTA views are merged with the detector's own ``test_cfg``
(score 0.05, NMS IoU 0.1, 300 per image). ``sec_per_img``: the wall time of the model step per image (data
preprocessing + prediction + merge), image loading and evaluation excluded.

Seeds: the models of :data:`SPREAD_MODELS` ((a) and (c)) are trained once per seed of ``seeds`` (default 0 and 1)
to show the seed-to-seed spread; (b) and (d) with the first seed only. Runs go in the order a, c, b, d for the
first seed, then a, c for the others, so that an interrupted run has the most telling pairs first.

Outputs (``out_dir``): ``data/`` (regions, patches, rotated sets, written once per data settings),
``runs/<model>_seed<s>/model.pth`` + ``train.json`` (per run), ``benchmark_real.json`` (one entry per run:
parameters, iterations, training seconds, s/iter, and per mode mAP, per-class AP, number of ground truths and
s/img; plus ``meta`` with every setting and ``summary`` per model: mean, min and max over seeds),
``benchmark_real.png`` (bar chart) and ``benchmark_real.md`` (the README table, also returned and printed).

Resuming: a run whose ``train.json`` holds the same settings (model, seed, iterations, batch, patch size, data,
config digest) and whose weights exist is not trained again; an interrupted training **restarts that run from
scratch** (no mid-training checkpoints: a restart keeps the timing honest and the run short). Evaluations are
kept in ``benchmark_real.json`` with their settings (weights digest, held-out data, TTA views, merge thresholds)
through :class:`rotplugin.io.ResumableResults` and skipped on a rerun. ``force`` retrains and re-evaluates.
``quick`` tests on 257² crops from the centres of the held-out regions (``tools/benchmark_real.py --quick`` also
sets 8 iterations of 2 patches of 128² and one seed: a smoke run of a minute or two whose numbers mean nothing).

Budget (why 600 iterations): measured on the 2-core machine this was written on, 256² patches, batch 4,
another job sharing the CPU (load average 1.5-2): (a) 0.96 s/iter, (b) 0.74, (c) 0.89, (d) 0.44. The six runs
(a, c twice) then train for about 6 x 600 iterations ≈ 50 min, and evaluating a run takes 15-60 s (the TTA modes
run the head four times on 1-1.8 Mpx canvases). Measured: the whole benchmark took 40.3 min (trainings 4.4-7.4 min
each), under the 90 minutes it must fit.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from rotplugin.canvas import (equivariant_canvas_shape, rotate_points, rotated_canvas_size,
                              rotation_matrix_and_offset)
from rotplugin.data.dota_split import (DOTA_V1_CLASSES, crop_patch, format_dota_line, parse_dota_txt,
                                       split_dataset, window_annotations)
from rotplugin.io import ResumableResults, sha256_file, write_atomic, write_json_atomic

__all__ = ["CLASSES", "MODEL_KEYS", "SPREAD_MODELS", "MODES", "PAD_BGR", "MAX_STRIDE", "Region", "TRAIN_REGIONS",
           "HELDOUT_REGIONS", "ModelSpec", "MODEL_SPECS", "RealBenchmarkSettings", "crop_region", "pad_to_canvas",
           "rotate_region", "prepare_data", "build_config", "test_config", "count_parameters", "narrowed_width",
           "plan_runs",
           "train_run", "evaluate_run", "evaluate_views", "format_table", "plot_results", "run_real_benchmark",
           "JSON_NAME", "PNG_NAME", "MD_NAME"]

CLASSES: Tuple[str, ...] = ("small-vehicle", "large-vehicle", "ship")   # harbor dropped (see the module doc)
MODEL_KEYS: Tuple[str, ...] = ("a", "b", "c", "d")
SPREAD_MODELS: Tuple[str, ...] = ("a", "c")      # trained once per seed; the others with the first seed only
MODES: Tuple[str, ...] = ("none", "image", "feature", "rot90", "rot30")
MODE_TITLES = {"none": "no TTA", "image": "image TTA", "feature": "feature TTA", "rot90": "rotated 90°",
               "rot30": "rotated 30°"}
TTA_ANGLES: Tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
PAD_BGR: Tuple[int, int, int] = (104, 116, 124)   # ImageNet mean, BGR: what normalises to ~0 (= the canvas padding)
MAX_STRIDE = 64                                   # the demo's P6: canvases ≡ 1 (mod 64)
CUT_KEEP_IOF = 0.5                                # an object cut by a crop line stays on the side holding >= half
JSON_NAME, PNG_NAME, MD_NAME = "benchmark_real.json", "benchmark_real.png", "benchmark_real.md"
_BIG = 1e9


# ---------------------------------------------------------------------------------------------------------------
# regions
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A rectangle ``window = (x0, y0, x1, y1)`` of the source image ``image`` (``None`` for x1 / y1: up to the
    image's border), saved as the image ``name`` of its set."""
    name: str
    image: str
    window: Tuple[int, int, Optional[int], Optional[int]] = (0, 0, None, None)


P0706_CUT = 733   # P0706 rows 733..1181 (449 = 7·64 + 1) are held out
TRAIN_REGIONS: Tuple[Region, ...] = (Region("P0003", "P0003"), Region("P0004", "P0004"),
                                     Region("P0706_top", "P0706", (0, 0, None, P0706_CUT)))
HELDOUT_REGIONS: Tuple[Region, ...] = (Region("P0005", "P0005"), Region("P0706_bottom", "P0706", (0, P0706_CUT,
                                                                                                   None, None)))
# The held-out images each class is evaluated on (None: all). DOTA v1.0 labels no vehicle in P0706 although its
# quays and parking lots hold many cars: there, a correct vehicle detection would count as a false positive.
EVAL_IMAGES: Dict[str, Optional[Tuple[str, ...]]] = {"small-vehicle": ("P0005",), "large-vehicle": ("P0005",),
                                                     "ship": None}
QUICK_SIDE = 257  # --quick tests on this square from the centre of every held-out region


def _select(ann: dict, keep) -> dict:
    keep = np.asarray(keep, dtype=np.int64)
    return dict(polys=ann["polys"][keep].reshape(-1, 8), labels=[ann["labels"][i] for i in keep],
                difficulties=np.asarray(ann["difficulties"], np.int64)[keep])


def _resolve_window(window, width: int, height: int) -> Tuple[int, int, int, int]:
    x0, y0, x1, y1 = window
    x1 = width if x1 is None else int(x1)
    y1 = height if y1 is None else int(y1)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"region window {tuple(window)} does not lie inside the {width}x{height} image")
    return int(x0), int(y0), x1, y1


def crop_region(img: np.ndarray, ann: dict, window, keep_iof: float = CUT_KEEP_IOF) -> Tuple[np.ndarray, dict]:
    """The region ``window = (x0, y0, x1, y1)`` (``None`` ends: the image border) of ``img`` and its objects.

    ``ann``: :func:`rotplugin.data.dota_split.parse_dota_txt`'s dict in image coordinates. Only the window's sides
    inside the image are *crop lines*: an object counts as cut when part of it lies beyond one of them (objects
    sticking out of the image itself are not cut). Objects with at least ``keep_iof`` of their area on the region's
    side of the crop lines are kept, polygons unclipped and shifted to region coordinates, difficulty 2 when cut
    (IoF < 1, ignored by DOTA's evaluation), else their own. Returns ``(region image, region ann)``."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = _resolve_window(window, w, h)
    region = np.ascontiguousarray(img[y0:y1, x0:x1])
    lines = [x0 if x0 > 0 else -_BIG, y0 if y0 > 0 else -_BIG, x1 if x1 < w else _BIG, y1 if y1 < h else _BIG]
    return region, window_annotations(ann, lines, keep_iof, origin=(x0, y0))


def pad_to_canvas(img: np.ndarray, max_stride: int = MAX_STRIDE, pad_value=PAD_BGR) -> np.ndarray:
    """``img`` padded at the bottom and right with ``pad_value`` to its equivariant canvas (both sides ≡ 1 mod
    ``max_stride``, :func:`rotplugin.canvas.equivariant_canvas_shape`); labels need no change."""
    h, w = img.shape[:2]
    ch, cw = equivariant_canvas_shape((h, w), max_stride)
    return crop_patch(img, (0, 0, cw, ch), pad_value=pad_value)


def rotate_region(img: np.ndarray, ann: dict, angle: float, max_stride: int = MAX_STRIDE,
                  pad_value=PAD_BGR) -> Tuple[np.ndarray, dict]:
    """``img`` (H, W) rotated by ``angle`` degrees about its centre ``((H-1)/2, (W-1)/2)`` and its objects with it.

    The angle convention (sign, centre) is :mod:`rotplugin.canvas`'s.
    Multiples of 90° are exact (``np.rot90``; the canvas becomes W x H for odd ones). Other angles: bilinear
    (``cv2.warpAffine``) onto the smallest canvas with sides ≡ 1 (mod ``max_stride``) that holds the whole rotated
    image, centre on centre, uncovered pixels set to ``pad_value``. Polygons (``ann['polys']``, x/y pairs) go
    through the same point map; labels and difficulties are kept. Returns ``(rotated image, rotated ann)``."""
    h, w = img.shape[:2]
    a, _ = rotation_matrix_and_offset(angle, (h, w))
    quarter = np.allclose(a, np.round(a), atol=1e-12)
    if quarter:
        k = int(round(math.degrees(math.atan2(a[1, 0], a[0, 0])) / 90.0)) % 4
        out = np.ascontiguousarray(np.rot90(img, k, axes=(0, 1)))
        out_size = rotated_canvas_size((h, w), angle)
        assert out.shape[:2] == tuple(out_size)
    else:
        c, s = abs(a[0, 0]), abs(a[1, 0])
        need = (math.ceil(c * (h - 1) + s * (w - 1) - 1e-9) + 1, math.ceil(s * (h - 1) + c * (w - 1) - 1e-9) + 1)
        out_size = equivariant_canvas_shape(need, max_stride)
        a, t = rotation_matrix_and_offset(angle, (h, w), out_size=out_size)
        m = np.concatenate([a[::-1, ::-1], t[::-1, None]], axis=1)               # (x, y) order for OpenCV
        border = tuple(float(v) for v in np.ravel(pad_value))
        out = cv2.warpAffine(img, m, (int(out_size[1]), int(out_size[0])), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    pts = rotate_points(np.asarray(ann["polys"], np.float64).reshape(-1, 4, 2), angle, (h, w), order="xy",
                        out_size=out_size)
    res = dict(polys=pts.reshape(-1, 8), labels=list(ann["labels"]),
               difficulties=np.asarray(ann["difficulties"], np.int64).copy())
    return out, res


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def _read_source(data_dir: Path, image_id: str) -> Tuple[np.ndarray, dict]:
    img_path, ann_path = data_dir / "images" / f"{image_id}.png", data_dir / "labelTxt" / f"{image_id}.txt"
    for p in (img_path, ann_path):
        if not p.is_file():
            raise FileNotFoundError(f"real-image benchmark: {p} is missing (the data dir {data_dir} must hold "
                                    f"images/<id>.png and labelTxt/<id>.txt for "
                                    f"{', '.join(sorted({r.image for r in TRAIN_REGIONS + HELDOUT_REGIONS}))})")
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"real-image benchmark: could not read the image {img_path}")
    ann = parse_dota_txt(str(ann_path), classes=DOTA_V1_CLASSES)
    keep = [i for i, label in enumerate(ann["labels"]) if label in CLASSES]
    return img, _select(ann, keep)


def _source_digest(data_dir: Path, ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in sorted(ids):
        st = (data_dir / "images" / f"{i}.png").stat()
        h.update(f"{i}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        h.update((data_dir / "labelTxt" / f"{i}.txt").read_bytes())
    return h.hexdigest()


def _write_set(folder: Path, items: Sequence[Tuple[str, np.ndarray, dict]]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    (folder / "labelTxt").mkdir(parents=True)
    for name, img, ann in items:
        if not cv2.imwrite(str(folder / "images" / f"{name}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"could not write {folder / 'images' / (name + '.png')}")
        lines = [format_dota_line(p, lab, d) for p, lab, d in zip(ann["polys"], ann["labels"], ann["difficulties"])]
        (folder / "labelTxt" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))


def _counts(ann: dict) -> Dict[str, int]:
    return {c: int(sum(1 for lab, d in zip(ann["labels"], ann["difficulties"]) if lab == c and d == 0))
            for c in CLASSES}


def prepare_data(data_dir, out_dir, patch_size: int = 256, quick: bool = False,
                 log: Callable[[str], object] = print) -> dict:
    """Write the benchmark's data below ``out_dir/data`` (once per settings; kept on a rerun):
    ``train_regions/``, ``train_patches/`` (what training reads), ``heldout/``, ``heldout_rot90/``,
    ``heldout_rot30/`` (DOTA-format folders). Returns the data ``settings`` (what a change of retrains) and
    ``stats`` (patches, objects per class; difficulty-0 counts)."""
    data_dir, data = Path(data_dir), Path(out_dir) / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"real-image benchmark: data dir {data_dir} does not exist (a DOTA folder with "
                                f"images/ and labelTxt/ of P0003, P0004, P0005, P0706; --data-dir)")
    if not isinstance(patch_size, int) or patch_size < 64:
        raise ValueError(f"patch_size must be an integer >= 64, got {patch_size!r}")
    ids = sorted({r.image for r in TRAIN_REGIONS + HELDOUT_REGIONS})
    sources = {i: _read_source(data_dir, i) for i in ids}           # checks every file before writing anything
    settings = dict(source=_source_digest(data_dir, ids), patch_size=patch_size, gap=patch_size // 4,
                    classes=list(CLASSES), train=[[r.name, r.image, list(r.window)] for r in TRAIN_REGIONS],
                    heldout=[[r.name, r.image, list(r.window)] for r in HELDOUT_REGIONS], quick=bool(quick),
                    keep_iof=CUT_KEEP_IOF, max_stride=MAX_STRIDE, version=1)
    stamp = data / "settings.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("settings") == json.loads(json.dumps(settings)):
            log(f"data: kept {data} (same settings)")
            return old
    if data.is_dir() and any(data.iterdir()) and not stamp.is_file():
        raise FileExistsError(f"{data} exists but holds no benchmark data ({stamp.name} missing): it is not this "
                              f"benchmark's to replace; choose another output dir")
    t0 = time.perf_counter()
    shutil.rmtree(data, ignore_errors=True)
    train = [(r.name, *crop_region(*sources[r.image], r.window)) for r in TRAIN_REGIONS]
    _write_set(data / "train_regions", train)
    split = split_dataset(str(data / "train_regions" / "images"), str(data / "train_patches"),
                          ann_dir=str(data / "train_regions" / "labelTxt"), size=patch_size, gap=patch_size // 4,
                          classes=CLASSES, progress=False)
    heldout = []
    for r in HELDOUT_REGIONS:
        img, ann = crop_region(*sources[r.image], r.window)
        if quick:   # the centre square only
            hh, ww = img.shape[:2]
            side_y, side_x = min(QUICK_SIDE, hh), min(QUICK_SIDE, ww)
            oy, ox = (hh - side_y) // 2, (ww - side_x) // 2
            img, ann = crop_region(img, ann, (ox, oy, ox + side_x, oy + side_y))
        heldout.append((r.name, pad_to_canvas(img), ann))
    sets = {"heldout": heldout}
    for angle in (90, 30):
        sets[f"heldout_rot{angle}"] = [(n, *rotate_region(img, ann, angle)) for n, img, ann in heldout]
    for name, items in sets.items():
        _write_set(data / name, items)
    train_counts = {r: _counts(a) for r, _, a in train}
    stats = dict(train_patches=split["patches"], train_patch_objects=split["objects"],
                 train_objects=train_counts,
                 heldout_objects={n: _counts(a) for n, _, a in heldout},
                 heldout_shapes={n: list(img.shape[:2]) for n, img, _ in heldout},
                 heldout_rot30_shapes={n: list(img.shape[:2]) for n, img, _ in sets["heldout_rot30"]})
    info = dict(settings=settings, stats=stats)
    write_json_atomic(str(stamp), info)
    log(f"data: {split['patches']} training patches of {patch_size}² ({split['objects']} objects) from "
        f"{', '.join(r.name for r in TRAIN_REGIONS)}; held out {', '.join(r.name for r in HELDOUT_REGIONS)} "
        f"(+ rotated by 90° and 30°) in {time.perf_counter() - t0:.1f} s -> {data}")
    return json.loads(json.dumps(info))


def _load_set(folder: Path) -> List[Tuple[str, np.ndarray, dict]]:
    items = []
    for img_path in sorted((folder / "images").glob("*.png")):
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"could not read {img_path}")
        ann = parse_dota_txt(str(folder / "labelTxt" / f"{img_path.stem}.txt"), classes=CLASSES)
        items.append((img_path.stem, img, ann))
    if not items:
        raise FileNotFoundError(f"no images in {folder / 'images'}: delete {folder.parent} and run again")
    return items


# ---------------------------------------------------------------------------------------------------------------
# models and configs
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """One contender: ``orientation`` N (C_N regular fields) for the equivariant ones, ``None`` for plain ResNets;
    ``width`` the stem/base channels (``None``: narrowed to (a)'s parameter count, :func:`narrowed_width`)."""
    key: str
    title: str
    orientation: Optional[int]
    width: Optional[int]

    @property
    def equivariant(self) -> bool:
        return self.orientation is not None


WIDTH = 32          # the demo's stem/base width
NECK_CHANNELS = 64  # the demo's FPN channels (= the head's input)
MODEL_SPECS: Dict[str, ModelSpec] = {
    "a": ModelSpec("a", "EquivariantResNet-18 C4 + EquivariantFPN", 4, WIDTH),
    "b": ModelSpec("b", "EquivariantResNet-18 C8 + EquivariantFPN", 8, WIDTH),
    "c": ModelSpec("c", "ResNet-18 + FPN, same widths", None, WIDTH),
    "d": ModelSpec("d", "ResNet-18 + FPN narrowed to (a)'s params", None, None),
}


def _plain_backbone_neck(width: int) -> Tuple[dict, dict]:
    backbone = dict(type="mmdet.ResNet", depth=18, in_channels=3, stem_channels=width, base_channels=width,
                    num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                    norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, style="pytorch", init_cfg=None)
    neck = dict(type="mmdet.FPN", in_channels=[width * 2 ** i for i in range(4)], out_channels=NECK_CHANNELS,
                start_level=1, add_extra_convs="on_input", num_outs=4)
    return backbone, neck


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters (for escnn layers: the free coefficients, not the expanded filters)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _model_cfg(base_cfg, spec: ModelSpec, width: int):
    model = copy.deepcopy(base_cfg.model)
    model.bbox_head.num_classes = len(CLASSES)
    if spec.equivariant:
        model.backbone.update(orientation=spec.orientation, stem_channels=width, base_channels=width, init_cfg=None)
        model.neck.update(orientation=spec.orientation, in_channels=[width * 2 ** i for i in range(4)],
                          out_channels=NECK_CHANNELS)
    else:
        model.backbone, model.neck = _plain_backbone_neck(width)
    return model


_WIDTH_CACHE: Dict[str, Tuple[int, int, int]] = {}


def narrowed_width(base_config: str, target: str = "a", widths: Sequence[int] = range(4, 33)) -> Tuple[int, int, int]:
    """``(width, its params, target's params)``: the plain ResNet-18 width (stem/base channels, FPN and head as
    in every model) whose whole detector has the parameter count nearest that of model ``target``."""
    from mmrotate.registry import MODELS

    from rotplugin.presets import load_config

    key = f"{os.path.abspath(base_config)}:{target}"
    if key not in _WIDTH_CACHE:
        cfg = load_config(str(base_config))
        want = count_parameters(MODELS.build(_model_cfg(cfg, MODEL_SPECS[target], MODEL_SPECS[target].width)))
        best = None
        for w in widths:
            n = count_parameters(MODELS.build(_model_cfg(cfg, MODEL_SPECS["c"], int(w))))
            if best is None or abs(n - want) < abs(best[1] - want):
                best = (int(w), n)
        _WIDTH_CACHE[key] = (best[0], best[1], want)
    return _WIDTH_CACHE[key]


def _warmup(iters: int) -> int:
    return max(1, min(100, iters // 6))


def build_config(base_config: str, spec: ModelSpec, seed: int, iters: int, batch_size: int, data_root,
                 work_dir, width: Optional[int] = None):
    """The training config of one run: the demo config ``base_config`` with ``spec``'s backbone / neck (``width``
    overrides ``spec.width``; needed for (d)), the benchmark's classes, the real-patch data at ``data_root``
    (``images/``, ``labelTxt/``), the augmentation, loop, schedule and hooks of the module doc."""
    from rotplugin.presets import load_config

    width = spec.width if width is None else width
    if width is None:
        raise ValueError(f"model ({spec.key}) has no fixed width: pass the narrowed width (narrowed_width)")
    if not isinstance(iters, int) or iters < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"iters and batch_size must be positive integers, got {iters!r}, {batch_size!r}")
    cfg = load_config(str(base_config))
    cfg.model = _model_cfg(cfg, spec, width)
    cfg.metainfo = dict(classes=CLASSES)
    pipeline = [
        dict(type="mmdet.LoadImageFromFile"),
        dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
        dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox")),
        dict(type="RandomRotate", prob=0.5, angle_range=180, img_border_value=tuple(float(v) for v in PAD_BGR)),
        dict(type="mmdet.RandomFlip", prob=0.75, direction=["horizontal", "vertical", "diagonal"]),
        dict(type="mmdet.PackDetInputs"),
    ]
    cfg.train_pipeline = pipeline
    cfg.train_dataloader = dict(
        batch_size=batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type="InfiniteSampler", shuffle=True), batch_sampler=None,
        dataset=dict(type="DOTADataset", data_root=str(data_root) + os.sep, metainfo=dict(classes=CLASSES),
                     ann_file="labelTxt/", data_prefix=dict(img_path="images/"),
                     filter_cfg=dict(filter_empty_gt=True), pipeline=pipeline))
    for key in ("val_dataloader", "val_evaluator", "val_cfg", "test_dataloader", "test_evaluator", "test_cfg"):
        cfg[key] = None
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=10 ** 9)
    warm = _warmup(iters)
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=warm),
        dict(type="CosineAnnealingLR", by_epoch=False, begin=0, end=iters, T_max=iters, eta_min_ratio=0.05),
    ]
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=50)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=-1, by_epoch=False, save_last=False)
    cfg.custom_hooks = [dict(type="ProgressBarHook", interval=10)]
    cfg.log_processor = dict(type="LogProcessor", window_size=50, by_epoch=False)
    cfg.randomness = dict(seed=int(seed))
    cfg.log_level = "WARNING"     # the progress bar reports; mmengine's INFO lines would bury it
    cfg.work_dir = str(work_dir)
    cfg.load_from, cfg.resume = None, False
    return cfg


def test_config(cfg, data_root):
    """A test-ready copy of a run's training config ``cfg``: what ``tools/test.py`` and ``tools/dota_chain.sh``
    take with the run's ``model.pth``. Test set: the DOTA-format folder ``data_root`` (``images/``,
    ``labelTxt/``; ``tools/test.py --cfg-options test_dataloader.dataset.data_root=...`` points it elsewhere), read
    at full resolution (``Resize(scale_factor=1.0)`` only records the scale), DOTA mAP of
    :class:`rotplugin.evaluation.DOTAClassAPMetric`; ``tta_pipeline`` the same pipeline (the demo's resizes to
    256², which the training here never did). The model, its ``test_cfg`` and ``tta_model`` are the run's."""
    test = cfg.copy()
    pipeline = [
        dict(type="mmdet.LoadImageFromFile"),
        dict(type="mmdet.Resize", scale_factor=1.0),
        dict(type="mmdet.LoadAnnotations", with_bbox=True, box_type="qbox"),
        dict(type="ConvertBoxType", box_type_mapping=dict(gt_bboxes="rbox")),
        dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    test.test_pipeline = pipeline
    test.tta_pipeline = pipeline
    test.test_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False, drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(type="DOTADataset", data_root=str(data_root) + os.sep, metainfo=dict(classes=CLASSES),
                     ann_file="labelTxt/", data_prefix=dict(img_path="images/"), test_mode=True, pipeline=pipeline))
    test.test_evaluator = dict(type="DOTAClassAPMetric", metric="mAP")
    test.test_cfg = dict(type="TestLoop")
    test.train_dataloader = test.train_cfg = test.optim_wrapper = test.param_scheduler = None
    test.custom_hooks = []
    return test


def _config_digest(cfg) -> str:
    keep = {k: cfg.get(k) for k in ("model", "train_pipeline", "optim_wrapper", "param_scheduler", "train_cfg",
                                    "randomness")}
    keep["batch_size"] = cfg.train_dataloader.batch_size
    keep["sampler"] = cfg.train_dataloader.sampler
    text = json.dumps(keep, sort_keys=True, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else repr(o))
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RealBenchmarkSettings:
    """What :func:`run_real_benchmark` does; see the module doc for the defaults' reasons."""
    data_dir: str
    out_dir: str
    base_config: str
    models: Sequence[str] = MODEL_KEYS
    seeds: Sequence[int] = (0, 1)
    iters: int = 600
    patch_size: int = 256
    batch_size: int = 4
    quick: bool = False
    force: bool = False
    angles: Sequence[float] = field(default=TTA_ANGLES)


def plan_runs(models: Sequence[str], seeds: Sequence[int]) -> List[Tuple[str, int]]:
    """``(model, seed)`` in training order: every model with the first seed (a, c, b, d order), then the models of
    :data:`SPREAD_MODELS` with each further seed."""
    bad = [m for m in models if m not in MODEL_SPECS]
    if bad:
        raise ValueError(f"unknown model(s) {bad}: choose from {', '.join(MODEL_KEYS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    order = [m for m in ("a", "c", "b", "d") if m in models]
    runs = [(m, int(seeds[0])) for m in order]
    for s in seeds[1:]:
        runs += [(m, int(s)) for m in order if m in SPREAD_MODELS]
    return list(dict.fromkeys(runs))


def run_key(model: str, seed: int) -> str:
    return f"{model}_seed{seed}"


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def train_run(cfg, run_dir: Path, settings: dict, force: bool = False,
              log: Callable[[str], object] = print) -> dict:
    """Train ``cfg`` with mmengine's Runner unless ``run_dir/train.json`` holds the same ``settings`` and
    ``run_dir/model.pth`` exists. Writes the weights (``{'state_dict', 'meta'}``) and ``train.json`` (seconds,
    s/iter, parameters, settings), both atomically; returns ``train.json``'s content (``kept=True`` when kept)."""
    from mmengine.runner import Runner

    from rotplugin.models.tta import unwrap_model

    ckpt, info_path = run_dir / "model.pth", run_dir / "train.json"
    canonical = json.loads(json.dumps(settings))
    if not force and ckpt.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("settings") == canonical:
            log(f"train {run_dir.name}: kept {ckpt} (same settings; --force to train again)")
            return dict(info, kept=True)
        log(f"train {run_dir.name}: {ckpt} was trained with other settings: training again")
    shutil.rmtree(run_dir / "work", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    # mmengine keeps one logger / visualizer per name for the whole process: one name per run, or the next run's
    # scalars would go to this run's (deleted) work dir
    name = f"{run_dir.name}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    cfg.experiment_name = name
    if cfg.get("visualizer") is not None:
        cfg.visualizer.name = f"visualizer_{name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = Runner.from_cfg(cfg)
    params = count_parameters(unwrap_model(runner.model))
    load_before = _loadavg()
    log(f"train {run_dir.name}: {cfg.train_cfg.max_iters} iterations of {cfg.train_dataloader.batch_size} patches "
        f"({len(runner.train_dataloader.dataset)} in the set), {params:,} parameters, "
        f"{torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner.train()
    seconds = time.perf_counter() - t0
    state = {"state_dict": unwrap_model(runner.model).state_dict(), "meta": {"run": run_dir.name,
                                                                            "settings": canonical}}
    write_atomic(ckpt, lambda fh: torch.save(state, fh), "wb")
    info = dict(seconds=seconds, iterations=int(runner.iter), sec_per_iter=seconds / max(int(runner.iter), 1),
                batch_size=int(cfg.train_dataloader.batch_size), params=params,
                train_patches=len(runner.train_dataloader.dataset), torch_threads=torch.get_num_threads(),
                loadavg_before=load_before, loadavg_after=_loadavg(),
                finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                settings=canonical)
    write_json_atomic(str(info_path), info)
    log(f"train {run_dir.name}: {info['iterations']} iterations in {seconds / 60:.1f} min "
        f"({info['sec_per_iter']:.2f} s/it) -> {ckpt}")
    return info


def _batch(img: np.ndarray, image_id: str) -> dict:
    """What ``PackDetInputs`` makes of an unresized BGR image (no ground truth)."""
    from mmdet.structures import DetDataSample

    h, w = img.shape[:2]
    sample = DetDataSample(metainfo=dict(img_id=image_id, img_path=image_id, ori_shape=(h, w), img_shape=(h, w),
                                         scale_factor=(1.0, 1.0)))
    return dict(inputs=[torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))], data_samples=[sample])


def _collect(dets: dict, pred, image_id: str) -> None:
    """Append one image's ``pred_instances`` to ``dets`` as corner polygons (``{class: [(id, score, poly)]}``)."""
    from mmdet.structures.bbox import get_box_tensor

    from rotplugin.boxes import rbox_to_polygon

    boxes = get_box_tensor(pred.bboxes).detach().float().cpu()
    polys = rbox_to_polygon(boxes).reshape(-1, 8).numpy() if len(boxes) else np.zeros((0, 8))
    for poly, score, label in zip(polys, pred.scores.tolist(), pred.labels.tolist()):
        dets[CLASSES[int(label)]].append((image_id, float(score), [float(v) for v in poly]))


def _detect(model, items, merges: Optional[Sequence[str]] = None) -> Tuple[dict, dict]:
    """Detections of ``model`` on every ``(image_id, image, ann)`` as ``evaluate_task1`` takes them
    (``{class: [(image_id, score, polygon)]}``) and the model step's seconds per image, per merge.

    Without ``merges``: ``model.test_step``, returned under the key ``None``. With ``merges`` (a rotation TTA
    model): its views are predicted once per image and merged by each merge (``'nms'``, ``'fusion'``), each merge
    timed as the shared views plus its own merge (as :func:`rotplugin.apis.benchmark.run_benchmark` does)."""
    keys = list(merges) if merges else [None]
    dets: Dict[Optional[str], Dict[str, list]] = {k: {c: [] for c in CLASSES} for k in keys}
    total = dict.fromkeys(keys, 0.0)
    for image_id, img, _ in items:
        batch = _batch(img, image_id)
        t0 = time.perf_counter()
        with torch.no_grad():
            if not merges:
                preds = {None: model.test_step(batch)[0]}
                shared = time.perf_counter() - t0
            else:
                views = model.test_step_views(batch)
                shared = time.perf_counter() - t0
                merged, seconds = model.merge_each(views, merges)
                preds = {merge: merged[merge][0] for merge in merges}
                for merge in merges:
                    total[merge] += seconds[merge]
        for k, pred in preds.items():
            total[k] += shared
            _collect(dets[k], pred.pred_instances, image_id)
    n = max(len(items), 1)
    return dets, {k: t / n for k, t in total.items()}


def _evaluate(dets: dict, items) -> dict:
    """DOTA Task1 (VOC07, IoU 0.5) of ``dets`` against the ground truth of ``items``, every class on the images
    of :data:`EVAL_IMAGES`; the mAP averages the classes with (non-difficult) ground truth."""
    from rotplugin.data.dota_eval import evaluate_task1

    gt = {image_id: ann for image_id, _, ann in items}
    classes, notes = {}, []
    for cls in CLASSES:
        images = EVAL_IMAGES.get(cls)
        images = list(gt) if images is None else [i for i in images if i in gt]
        if not images:
            continue
        res = evaluate_task1({cls: dets.get(cls, [])}, gt, iou_thr=0.5, metric="voc07", classes=CLASSES,
                             image_set=images)
        if cls in res["classes"]:
            classes[cls] = res["classes"][cls]
        notes += [f"{cls}: {w}" for w in res.get("warnings", [])]
    aps = [r["ap"] for r in classes.values() if r["num_gts"] > 0]
    return dict(mAP=float(np.mean(aps)) if aps else 0.0,
                per_class_AP={c: float(r["ap"]) for c, r in classes.items() if r["num_gts"] > 0},
                num_gts={c: int(r["num_gts"]) for c, r in classes.items()},
                num_dets={c: int(r["num_dets"]) for c, r in classes.items()},
                eval_images={c: EVAL_IMAGES.get(c) or sorted(gt) for c in CLASSES}, eval_warnings=notes)


def _merge_settings(cfg) -> dict:
    test_cfg = cfg.model.get("test_cfg") or {}
    return dict(score_thr=float(test_cfg.get("score_thr", 0.05)),
                iou_thr=float((test_cfg.get("nms") or {}).get("iou_threshold", 0.1)),
                max_per_img=int(test_cfg.get("max_per_img", 300)))


def _load_detector(cfg, checkpoint):
    """The detector of ``cfg.model`` with the weights ``checkpoint``, in eval mode, its equivariant filters expanded
    (one untimed pass), and whether its features can be rotated (an equivariant neck)."""
    from mmrotate.registry import MODELS

    detector = MODELS.build(cfg.model)
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    detector.load_state_dict(state["state_dict"])
    detector.eval()
    with torch.no_grad():   # untimed: the first eval-mode pass expands the equivariant filters once
        detector.extract_feat(torch.zeros(1, 3, MAX_STRIDE + 1, MAX_STRIDE + 1))
    return detector, hasattr(detector.neck, "out_field_types")


_NOT_ROTATABLE = ("a plain FPN's features cannot be rotated (no field types): feature TTA needs an equivariant "
                  "backbone + neck")


def evaluate_run(cfg, checkpoint, data_root, angles: Sequence[float] = TTA_ANGLES,
                 log: Callable[[str], object] = print) -> dict:
    """Every mode of :data:`MODES` of the trained detector (``cfg.model`` with the weights ``checkpoint``) on the
    held-out sets below ``data_root`` (``heldout``, ``heldout_rot90``, ``heldout_rot30``). Returns ``{mode: entry}``
    with ``mAP``, ``per_class_AP`` (classes with ground truth), ``num_gts``, ``num_dets``, ``sec_per_img``;
    ``feature`` of a plain model is ``{'applicable': False, 'mAP': None, 'reason': ...}``."""
    from rotplugin.models.tta import FeatureRotationTTAModel, ImageRotationTTAModel

    data_root = Path(data_root)
    detector, equivariant = _load_detector(cfg, checkpoint)
    merge = _merge_settings(cfg)
    sets = {name: _load_set(data_root / name) for name in ("heldout", "heldout_rot90", "heldout_rot30")}
    plan = {"none": (detector, "heldout"),
            "image": (ImageRotationTTAModel(detector, angles=list(angles), **merge), "heldout"),
            "feature": (FeatureRotationTTAModel(detector, angles=list(angles), **merge) if equivariant else None,
                        "heldout"),
            "rot90": (detector, "heldout_rot90"), "rot30": (detector, "heldout_rot30")}
    out = {}
    for mode, (model, set_name) in plan.items():
        if model is None:
            out[mode] = dict(applicable=False, mAP=None, reason=_NOT_ROTATABLE)
            continue
        dets, sec = _detect(model, sets[set_name])
        out[mode] = dict(_evaluate(dets[None], sets[set_name]), sec_per_img=sec[None], applicable=True,
                         data=set_name)
        log(f"  {mode:8s} mAP {out[mode]['mAP']:.4f}  ({sec[None]:.2f} s/img)")
    return out


def evaluate_views(cfg, checkpoint, data_root, angles: Sequence[float] = TTA_ANGLES, tta: Optional[dict] = None,
                   modes: Sequence[str] = ("image", "feature"), merges: Sequence[str] = ("nms",),
                   log: Callable[[str], object] = print) -> dict:
    """Rotation TTA of the trained detector on the held-out regions (``data_root/heldout``) with any views and
    merges (issue 16's grid): ``angles`` x ``tta``'s ``flips`` / ``scales`` (and ``fusion_iou_thr``,
    ``fibre_interp``: :class:`rotplugin.models.FeatureRotationTTAModel`'s options), the views of each of ``modes``
    (``'none'``: the detector alone, ``'image'``, ``'feature'``) predicted once per image and merged by each of
    ``merges``. Returns ``{'none' | '<mode>+<merge>': entry}``, entries as :func:`evaluate_run`'s plus
    ``backbone_passes`` (per image). Feature TTA of a plain model is not applicable (marked as in
    :func:`evaluate_run`)."""
    from rotplugin.apis.benchmark import MODES as VIEW_MODES, TTA_OPTIONS   # run_benchmark's modes and options
    from rotplugin.models.tta import FeatureRotationTTAModel, ImageRotationTTAModel
    from rotplugin.models.tta_views import parse_merge

    unknown = sorted(set(modes) - set(VIEW_MODES))
    if unknown or not modes:
        raise ValueError(f"modes: give one or more of {', '.join(VIEW_MODES)}, got {list(modes)}")
    merges = [parse_merge(m) for m in merges]
    if not merges:
        raise ValueError("merges: give one or more of nms, fusion")
    tta = dict(tta or {})
    known = [o for o in TTA_OPTIONS if o != "merge"]   # the merges are an argument of their own
    unknown = sorted(set(tta) - set(known))
    if unknown:
        raise ValueError(f"unknown tta options {unknown}: known are {', '.join(known)} (the merges are given as "
                         f"merges=[...])")
    detector, equivariant = _load_detector(cfg, checkpoint)
    items = _load_set(Path(data_root) / "heldout")
    makers = {"image": ImageRotationTTAModel, "feature": FeatureRotationTTAModel if equivariant else None}
    out = {}
    for mode in modes:
        if mode == "none":
            dets, sec = _detect(detector, items)
            out["none"] = dict(_evaluate(dets[None], items), sec_per_img=sec[None], backbone_passes=1.0,
                               applicable=True)
            log(f"  none           mAP {out['none']['mAP']:.4f}  ({sec[None]:.2f} s/img)")
            continue
        if makers[mode] is None:
            out.update({f"{mode}+{m}": dict(applicable=False, mAP=None, reason=_NOT_ROTATABLE) for m in merges})
            continue
        model = makers[mode](detector, angles=list(angles), **_merge_settings(cfg), **tta)
        dets, sec = _detect(model, items, merges)
        passes = model.counts["backbone_passes"] / len(items)
        for m in merges:
            key = f"{mode}+{m}"
            out[key] = dict(_evaluate(dets[m], items), sec_per_img=sec[m], backbone_passes=passes, applicable=True)
            log(f"  {key:14s} mAP {out[key]['mAP']:.4f}  ({sec[m]:.2f} s/img, {passes:g} backbone passes)")
    return out


# ---------------------------------------------------------------------------------------------------------------
# summary, table, chart
# ---------------------------------------------------------------------------------------------------------------
def _summary(entries: Dict[str, dict]) -> Dict[str, dict]:
    """Per model: the runs' seeds, and per number (params, s/iter, training minutes, mAP per mode) the mean, min
    and max over the seeds."""
    by_model: Dict[str, List[dict]] = {}
    for e in entries.values():
        by_model.setdefault(e["model"], []).append(e)
    out = {}
    for m in MODEL_KEYS:
        runs = sorted(by_model.get(m, []), key=lambda e: e["seed"])
        if not runs:
            continue

        def stat(values):
            values = [v for v in values if v is not None]
            if not values:
                return None
            return dict(mean=float(np.mean(values)), min=float(min(values)), max=float(max(values)),
                        values=[float(v) for v in values])

        out[m] = dict(title=runs[0]["title"], seeds=[e["seed"] for e in runs], params=runs[0]["params"],
                      width=runs[0]["width"], orientation=runs[0]["orientation"],
                      sec_per_iter=stat([e["train"]["sec_per_iter"] for e in runs]),
                      train_minutes=stat([e["train"]["seconds"] / 60 for e in runs]),
                      mAP={mode: stat([e["eval"][mode].get("mAP") for e in runs]) for mode in MODES})
    return out


def _fmt(stat: Optional[dict], digits: int = 3) -> str:
    if stat is None:
        return "n/a"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"


def format_table(summary: Dict[str, dict], meta: dict) -> str:
    """The README table (markdown): one row per model, mAP as ``mean (min–max over seeds)``."""
    head = ["model", "params", "seeds", "s/iter", "train min"] + [MODE_TITLES[m] for m in MODES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        row = [f"({m}) {s['title']}" + (f" (width {s['width']})" if m == "d" else ""), f"{s['params'] / 1e6:.2f} M",
               ", ".join(str(x) for x in s["seeds"]), _fmt(s["sec_per_iter"], 2), _fmt(s["train_minutes"], 1)]
        row += [_fmt(s["mAP"][mode]) for mode in MODES]
        lines.append("| " + " | ".join(row) + " |")
    stats = meta.get("data", {}).get("stats", {})
    several = any(len(s["seeds"]) > 1 for s in summary.values())
    spread = "; several seeds: mean (min–max over the seeds)" if several else ""
    lines += ["", f"DOTA Task1 mAP (IoU 0.5, VOC07) on the held-out regions ({', '.join(meta.get('heldout', []))}; "
                  f"{_objects(stats.get('heldout_objects', {}))} non-difficult objects; vehicles scored on P0005 "
                  f"only, P0706's cars being unlabelled), every model trained from scratch for "
                  f"{meta.get('iters')} iterations of {meta.get('batch_size')} {meta.get('patch_size')}² patches "
                  f"({stats.get('train_patches', '?')} patches of {', '.join(meta.get('train', []))}) on "
                  f"{meta.get('torch_threads', '?')} CPU threads{spread}. TTA: views "
                  f"{', '.join(f'{a:g}' for a in meta.get('angles', []))}°. Rotated: the held-out images rotated "
                  f"by 90° / 30°, no TTA."]
    if meta.get("quick"):
        lines.append("")
        lines.append("**--quick smoke run: these numbers mean nothing.**")
    return "\n".join(lines)


def _objects(counts: Dict[str, Dict[str, int]]) -> str:
    total: Dict[str, int] = {}
    for per_class in counts.values():
        for c, n in per_class.items():
            total[c] = total.get(c, 0) + n
    return ", ".join(f"{n} {c}" for c, n in total.items()) or "?"


def plot_results(summary: Dict[str, dict], path, title: str = "") -> None:
    """Grouped bars (PNG, matplotlib Agg): per model the mAP of each mode (bar = mean over seeds, black dots =
    the seeds, whiskers = min–max; "n/a" where a mode does not apply), and the parameters and s/iter beside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(summary)
    fig = Figure(figsize=(13.0, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 4, width_ratios=[3.2, 1, 1, 0.01])
    ax, ax_p, ax_t = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[0, 2])
    colours = dict(none="#4c72b0", image="#dd8452", feature="#55a868", rot90="#8172b3", rot30="#c44e52")
    width = 0.8 / len(MODES)
    top = 1e-3
    for j, mode in enumerate(MODES):
        xs, means, lo, hi = [], [], [], []
        for i, m in enumerate(models):
            x = i - 0.4 + width * (j + 0.5)
            st = summary[m]["mAP"][mode]
            if st is None:
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize="x-small", rotation=90)
                continue
            xs.append(x)
            means.append(st["mean"])
            lo.append(st["mean"] - st["min"])
            hi.append(st["max"] - st["mean"])
            top = max(top, st["max"])
            if len(st["values"]) > 1:
                ax.plot([x] * len(st["values"]), st["values"], "k.", markersize=4)
        ax.bar(xs, means, width, color=colours[mode], label=MODE_TITLES[mode], yerr=[lo, hi], capsize=2,
               error_kw=dict(elinewidth=0.8))
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([f"({m})" for m in models])
    ax.set_ylabel("mAP (IoU 0.5, VOC07)")
    ax.set_ylim(0, top * 1.25)
    ax.set_title("held-out regions")
    ax.legend(fontsize="small", ncol=len(MODES), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax_p.bar([f"({m})" for m in models], [summary[m]["params"] / 1e6 for m in models], color="#8c8c8c")
    ax_p.set_title("parameters (M)")
    ax_t.bar([f"({m})" for m in models], [summary[m]["sec_per_iter"]["mean"] for m in models], color="#8c8c8c")
    ax_t.set_title("training s / iteration")
    fig.text(0.01, 0.01, "  ".join(f"({m}) {summary[m]['title']}" for m in models), fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"), "wb")


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------
def run_real_benchmark(settings: RealBenchmarkSettings, log: Callable[[str], object] = print) -> dict:
    """Data, the runs of :func:`plan_runs` (train, then evaluate), JSON, chart and table (see the module doc).

    Returns ``dict(entries={run: entry}, summary={model: ...}, table=str, json=path, png=path, md=path)``."""
    s = settings
    if not os.path.isfile(s.base_config):
        raise FileNotFoundError(f"base config {s.base_config} not found (the demo config)")
    if not isinstance(s.iters, int) or s.iters < 1:
        raise ValueError(f"iters must be a positive integer, got {s.iters!r}")
    runs = plan_runs(s.models, s.seeds)
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = prepare_data(s.data_dir, out, s.patch_size, s.quick, log=log)
    data_root = out / "data"
    heldout_digest = hashlib.sha256("".join(
        sha256_file(p) for p in sorted(data_root.glob("heldout*/*/*")) if p.is_file()).encode()).hexdigest()
    width_d = None
    if any(m == "d" for m, _ in runs):
        width_d, params_d, params_a = narrowed_width(s.base_config)
        log(f"model (d): plain ResNet-18 width {width_d}: {params_d:,} parameters against (a)'s {params_a:,} "
            f"({100 * (params_d / params_a - 1):+.1f} %)")
    store = ResumableResults(str(out / JSON_NAME), force=s.force, log=lambda msg: log(f"evaluate {msg}"))
    meta = dict(iters=s.iters, batch_size=s.batch_size, patch_size=s.patch_size, gap=s.patch_size // 4,
                seeds=list(s.seeds), models=list(s.models), classes=list(CLASSES), angles=[float(a) for a in s.angles],
                train=[r.name for r in TRAIN_REGIONS], heldout=[r.name for r in HELDOUT_REGIONS],
                warmup_iters=_warmup(s.iters), quick=bool(s.quick), torch_threads=torch.get_num_threads(),
                base_config=Path(s.base_config).name, data=data)
    log(f"plan: {len(runs)} runs ({', '.join(run_key(m, sd) for m, sd in runs)}), {s.iters} iterations each, "
        f"batch {s.batch_size}, {s.patch_size}² patches")
    for k, (m, seed) in enumerate(runs, start=1):
        spec = MODEL_SPECS[m]
        width = width_d if m == "d" else spec.width
        key = run_key(m, seed)
        run_dir = out / "runs" / key
        cfg = build_config(s.base_config, spec, seed, s.iters, s.batch_size, data_root / "train_patches",
                           run_dir / "work", width=width)
        train_settings = dict(model=m, seed=seed, width=width, orientation=spec.orientation, iters=s.iters,
                              batch_size=s.batch_size, data=data["settings"], config=_config_digest(cfg))
        log(f"[{k}/{len(runs)}] ({m}) {spec.title}, seed {seed}")
        info = train_run(cfg, run_dir, train_settings, force=s.force, log=log)
        ckpt = run_dir / "model.pth"
        # the run as tools/test.py / tools/dota_chain.sh take it (not part of the settings: written every time)
        test_config(cfg, data_root / "heldout").dump(str(run_dir / "config.py"))
        eval_settings = dict(train=train_settings, checkpoint=sha256_file(ckpt), heldout=heldout_digest,
                             angles=[float(a) for a in s.angles], merge=_merge_settings(cfg), modes=list(MODES))
        if not store.done(key, eval_settings):
            log(f"evaluate {key}: held-out regions, {', '.join(MODES)}")
            t0 = time.perf_counter()
            results = evaluate_run(cfg, ckpt, data_root, s.angles, log=log)
            entry = dict(model=m, seed=seed, title=spec.title, width=width, orientation=spec.orientation,
                         params=info["params"], iterations=info["iterations"], batch_size=info["batch_size"],
                         train={k2: info[k2] for k2 in ("seconds", "sec_per_iter", "torch_threads",
                                                        "loadavg_before", "loadavg_after", "train_patches")},
                         eval=results, eval_seconds=time.perf_counter() - t0)
            store.put(key, entry, eval_settings)
    entries = {run_key(m, sd): store.get(run_key(m, sd)) for m, sd in runs}
    summary = _summary(entries)
    store.data["meta"] = meta
    store.data["summary"] = summary
    store.save()
    table = format_table(summary, meta)
    write_atomic(out / MD_NAME, lambda fh: fh.write(table + "\n"), "w")
    png = out / PNG_NAME
    plot_results(summary, png, title=f"Rotated RetinaNet from scratch on real DOTA patches: {s.iters} it x "
                                     f"{s.batch_size} of {s.patch_size}², held out "
                                     f"{', '.join(r.name for r in HELDOUT_REGIONS)}"
                                     + ("  (--quick: meaningless)" if s.quick else ""))
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min: {out / JSON_NAME}, {png}, {out / MD_NAME}")
    return dict(entries=entries, summary=summary, table=table, json=str(out / JSON_NAME), png=str(png),
                md=str(out / MD_NAME))
