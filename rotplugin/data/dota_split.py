"""Split full-size DOTA images into fixed-size patches, the way MMRotate's DOTA pipeline expects them.

Behaviour (that of MMRotate's ``tools/data/dota/split/img_split.py``, re-implemented here with numpy, OpenCV and shapely):

* **Windows.** For a window side ``s`` and overlap ``gap``, the step is ``s - gap``; windows start at ``0, step,
  2*step, ...`` along each axis, as many as needed to cover the side, and the last one is moved back so that it ends
  on the image border (``start = side - s``). A side not longer than ``s`` gets a single window at 0. Windows are
  the product of the x and y starts.
* **Rates (multi-scale).** ``rates`` only change the window: for a rate ``r`` the window side is ``int(size / r)``
  and the gap ``int(gap / r)``, in *original* image pixels. Patches are never resized: a rate-0.5 patch of a
  1024 split is a 2048x2048 crop, and the training / test pipeline's ``Resize`` brings it to the network's input
  size. MMRotate's multi-scale configs use rates ``0.5 1.0 1.5`` with gap 500 (``--gap 500``), single scale
  rate 1.0 with gap 200.
* **Image-rate threshold.** A window whose part inside the image is not more than ``img_rate_thr`` (0.6) of its
  area is dropped, unless no window of the image passes, in which case the ones with the largest share are kept
  (so an image smaller than the window still gives one, padded, patch; in a multi-scale split the large windows
  of a small image, mostly padding, are dropped).
* **Names.** ``{image_id}__{window_side}__{x_start}___{y_start}``, e.g. ``P0000__1024__0___824``, with
  ``(x_start, y_start)`` the window's top-left corner in the original image: what MMRotate's ``DOTAMetric``
  (``merge_patches=True``) parses to move detections back to the full image. The window side in the name tells
  the scale apart (``P0000__2048__0___0`` is the rate-0.5 window of a 1024 split). (DOTA_devkit's older
  multi-scale splitter instead resized the image and wrote ``{id}__{rate}__{x}___{y}`` in resized coordinates;
  MMRotate does not use that, and its merge would misplace such patches.)
* **Objects.** An object goes to a patch when its IoF with the window (area of the polygon inside the window
  rectangle ``[x0, x0+s] x [y0, y0+s]`` over the polygon's area) is at least ``iof_thr`` (0.7). Objects cut by
  the window (IoF < 1) get difficulty 2, the others keep theirs. Kept polygons are written *unclipped*, shifted
  to patch coordinates (they may stick out of the patch). A polygon of zero area counts as inside a window when
  all its points are, else as outside.
* **Padding.** Patches that reach past the image (images smaller than the window) are padded to the full window
  with ``pad_value`` (BGR order as OpenCV stores images; the default 104 116 124 is the ImageNet mean).
* **Empty patches.** With annotations, patches without objects are skipped unless ``save_empty``; without
  annotations (a test set) every patch is written and no labelTxt is written.

Output: ``out_dir/images/<name>.png`` and (with annotations) ``out_dir/labelTxt/<name>.txt`` with DOTA lines
``x1 y1 x2 y2 x3 y3 x4 y4 class difficulty``. Load them with ``DOTADataset(data_root=out_dir,
ann_file='labelTxt/', data_prefix=dict(img_path='images/'))`` (the test set: ``ann_file=''``).

Input labelTxt: lines of 8 coordinates, the class and optionally the difficulty (0 when absent); the
``imagesource:`` / ``gsd:`` header lines of the original DOTA files and blank lines are skipped. A line of another
shape, an unknown class, a coordinate that is not a finite number -> :class:`DOTAFormatError` naming file and line
(or, with ``skip_bad``, a warning and the line is dropped). A label file without an image -> error; an image
without a label file -> warning, no objects.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
import warnings
from contextlib import contextmanager
from itertools import product
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "DOTA_CLASSES",
    "DOTA_V1_CLASSES",
    "IMAGE_EXTENSIONS",
    "DOTAFormatError",
    "resolve_classes",
    "parse_dota_txt",
    "parse_dota_lines",
    "format_dota_line",
    "list_images",
    "windows_for_rates",
    "sliding_windows",
    "poly_window_iof",
    "patch_name",
    "plan_patches",
    "window_annotations",
    "crop_patch",
    "worker_pool",
    "split_dataset",
]

DOTA_V1_CLASSES: Tuple[str, ...] = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter",
)
DOTA_CLASSES: Dict[str, Tuple[str, ...]] = {
    "dota1.0": DOTA_V1_CLASSES,
    "dota1.5": DOTA_V1_CLASSES + ("container-crane",),
    "dota2.0": DOTA_V1_CLASSES + ("container-crane", "airport", "helipad"),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_HEADER_PREFIXES = ("imagesource:", "gsd:")


class DOTAFormatError(ValueError):
    """A DOTA labelTxt line (or data set layout) that cannot be used; the message names file and line."""


def resolve_classes(classes: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """``None`` or ``"any"`` (accept any class name), a preset (``dota1.0``, ``dota1.5``, ``dota2.0``) or names."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [classes]
    classes = list(classes)
    if classes == ["any"]:
        return None
    if len(classes) == 1 and classes[0].lower() in DOTA_CLASSES:
        return DOTA_CLASSES[classes[0].lower()]
    return tuple(classes)


# ---------------------------------------------------------------------------------------------------------------
# labelTxt reading / writing
# ---------------------------------------------------------------------------------------------------------------
def _empty_ann() -> dict:
    return dict(polys=np.zeros((0, 8), np.float64), labels=[], difficulties=np.zeros((0,), np.int64))


def parse_dota_lines(lines: Iterable[str], source: str = "<labels>",
                     classes: Optional[Sequence[str]] = DOTA_V1_CLASSES, skip_bad: bool = False) -> dict:
    """Parse DOTA label lines; see :func:`parse_dota_txt`. ``source`` names the file in messages."""
    classes = resolve_classes(classes)
    class_set = None if classes is None else set(classes)
    polys, labels, diffs = [], [], []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line or line.lower().startswith(_HEADER_PREFIXES):
            continue
        fields = line.split()
        problem = None
        if len(fields) not in (9, 10):
            problem = (f"expected 10 fields 'x1 y1 x2 y2 x3 y3 x4 y4 class difficulty' (or 9, without difficulty), "
                       f"got {len(fields)}")
        else:
            try:
                coords = [float(v) for v in fields[:8]]
            except ValueError:
                coords = None
            if coords is None or not all(math.isfinite(v) for v in coords):
                problem = f"coordinates must be finite numbers, got {' '.join(fields[:8])!r}"
            elif class_set is not None and fields[8] not in class_set:
                problem = f"unknown class {fields[8]!r} (known: {', '.join(classes)})"
            else:
                diff = 0
                if len(fields) == 10:
                    try:
                        diff = int(fields[9])
                    except ValueError:
                        problem = f"difficulty must be an integer, got {fields[9]!r}"
        if problem is not None:
            msg = f"{source}:{lineno}: {problem}: {line!r}"
            if skip_bad:
                warnings.warn(f"skipping bad label line: {msg}", stacklevel=2)
                continue
            raise DOTAFormatError(msg)
        polys.append(coords)
        labels.append(fields[8])
        diffs.append(diff)
    if not polys:
        return _empty_ann()
    return dict(polys=np.asarray(polys, np.float64), labels=labels, difficulties=np.asarray(diffs, np.int64))


def parse_dota_txt(path: str, classes: Optional[Sequence[str]] = DOTA_V1_CLASSES, skip_bad: bool = False) -> dict:
    """Read a DOTA labelTxt file.

    Returns ``dict(polys=(N, 8) float64, labels=[str]*N, difficulties=(N,) int64)``. ``classes``: allowed names
    (default DOTA v1.0; a preset name, or ``None`` for any). Bad lines raise :class:`DOTAFormatError`
    ``"<path>:<line>: ..."``, or with ``skip_bad`` are skipped with a warning.
    """
    with open(path, "r", encoding="utf-8-sig") as f:
        return parse_dota_lines(f, source=str(path), classes=classes, skip_bad=skip_bad)


def _fmt_coord(v: float) -> str:
    return repr(round(float(v), 6) + 0.0)  # "+ 0.0" turns -0.0 into 0.0


def format_dota_line(poly: Sequence[float], label: str, difficulty: int) -> str:
    """``"x1 y1 ... y4 label difficulty"`` (no newline); coordinates rounded to 6 decimals, shortest repr."""
    return " ".join([_fmt_coord(v) for v in poly] + [str(label), str(int(difficulty))])


def list_images(img_dir: str) -> Dict[str, str]:
    """``{image_id: file_name}`` of the images (``IMAGE_EXTENSIONS``, any case) in ``img_dir``."""
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f"image directory {img_dir!r} does not exist")
    images: Dict[str, str] = {}
    for name in sorted(os.listdir(img_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(os.path.join(img_dir, name)):
            continue
        if stem in images:
            raise DOTAFormatError(f"{img_dir}: two images with the id {stem!r}: {images[stem]!r} and {name!r}")
        images[stem] = name
    if not images:
        raise DOTAFormatError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in {img_dir!r}")
    return images


# ---------------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------------
def windows_for_rates(size: int, gap: int, rates: Sequence[float] = (1.0,)) -> List[Tuple[int, int]]:
    """``(window_side, gap)`` per rate, in original pixels: ``(int(size / r), int(gap / r))``."""
    out = []
    for r in rates:
        if not r > 0:
            raise ValueError(f"rates must be positive, got {r}")
        pair = (int(size / r), int(gap / r))
        if pair not in out:
            out.append(pair)
    return out


def _starts(side: int, size: int, step: int) -> List[int]:
    if side <= size:
        return [0]
    num = math.ceil((side - size) / step + 1)
    starts = [step * i for i in range(num)]
    if starts[-1] + size > side:
        starts[-1] = side - size
    return starts


def sliding_windows(width: int, height: int, sizes: Sequence[int], gaps: Sequence[int],
                    img_rate_thr: float = 0.6) -> np.ndarray:
    """Windows ``(K, 4)`` int64 rows ``x0, y0, x1, y1`` (``x1 = x0 + side``) covering a ``width x height`` image.

    For each ``(side, gap)`` pair: x starts (outer loop) times y starts. Windows whose share of image is not more
    than ``img_rate_thr`` are dropped unless none passes (then the largest shares are kept); see the module doc.
    """
    if len(sizes) != len(gaps):
        raise ValueError(f"sizes {list(sizes)} and gaps {list(gaps)} differ in length")
    wins = []
    for size, gap in zip(sizes, gaps):
        if not 0 <= gap < size:
            raise ValueError(f"need 0 <= gap < size, got size {size}, gap {gap}")
        step = size - gap
        for x0, y0 in product(_starts(width, size, step), _starts(height, size, step)):
            wins.append((x0, y0, x0 + size, y0 + size))
    wins = np.asarray(wins, np.int64).reshape(-1, 4)
    inside_w = np.clip(wins[:, 2], 0, width) - np.clip(wins[:, 0], 0, width)
    inside_h = np.clip(wins[:, 3], 0, height) - np.clip(wins[:, 1], 0, height)
    rates = inside_w * inside_h / ((wins[:, 2] - wins[:, 0]) * (wins[:, 3] - wins[:, 1]))
    if not (rates > img_rate_thr).any():
        rates = np.where(np.abs(rates - rates.max()) < 0.01, 1.0, rates)
    return wins[rates > img_rate_thr]


def poly_window_iof(polys, windows, eps: float = 1e-6) -> np.ndarray:
    """IoF ``(N, K)``: area of polygon ``n`` inside window ``k`` over the polygon's area.

    ``polys``: ``(N, 2m)`` flat polygons; ``windows``: ``(K, 4)`` ``x0, y0, x1, y1``. Exactly 1 for polygons inside a
    window (all points within, borders included), 0 for disjoint ones; zero-area polygons get 1 when inside, else 0.
    The area of a polygon cut by a window is shapely's intersection with it; a self-intersecting ("bow-tie")
    polygon is taken in its valid form (``shapely.make_valid``: both lobes count).
    """
    polys = np.asarray(polys, np.float64)
    windows = np.asarray(windows, np.float64).reshape(-1, 4)
    n, k = len(polys), len(windows)
    iof = np.zeros((n, k), np.float64)
    if n == 0 or k == 0:
        return iof
    pts = polys.reshape(n, -1, 2)
    lo, hi = pts.min(axis=1), pts.max(axis=1)  # (N, 2)
    wlo, whi = windows[None, :, :2], windows[None, :, 2:]
    inside = np.all((lo[:, None] >= wlo) & (hi[:, None] <= whi), axis=-1)
    apart = np.any((hi[:, None] <= wlo) | (lo[:, None] >= whi), axis=-1)
    iof[inside] = 1.0
    ii, jj = np.nonzero(~inside & ~apart)
    if len(ii) == 0:
        return iof
    import shapely  # the polygon clipping (vectorised GEOS); only the IoF of objects cut by a window needs it

    shapes = shapely.polygons(pts)
    bad = ~shapely.is_valid(shapes)
    if bad.any():  # self-intersecting ("bow-tie") labels: their valid form, both lobes counted
        shapes[bad] = shapely.make_valid(shapes[bad])
    areas = shapely.area(shapes)
    boxes = shapely.box(windows[:, 0], windows[:, 1], windows[:, 2], windows[:, 3])
    ok = areas[ii] > eps   # a zero-area polygon cut by a window counts as outside it
    ii, jj = ii[ok], jj[ok]
    inter = shapely.area(shapely.intersection(shapes[ii], boxes[jj]))
    iof[ii, jj] = np.minimum(1.0, inter / areas[ii])
    return iof


# ---------------------------------------------------------------------------------------------------------------
# patches
# ---------------------------------------------------------------------------------------------------------------
def patch_name(image_id: str, window: Sequence[int]) -> str:
    """``{image_id}__{side}__{x0}___{y0}`` (MMRotate's patch naming)."""
    x0, y0, x1, _ = (int(v) for v in window)
    return f"{image_id}__{x1 - x0}__{x0}___{y0}"


def plan_patches(image_id: str, width: int, height: int, ann: Optional[dict], sizes: Sequence[int],
                 gaps: Sequence[int], iof_thr: float = 0.7, img_rate_thr: float = 0.6,
                 save_empty: Optional[bool] = None) -> List[dict]:
    """The patches of one image, without touching pixels.

    Returns dicts ``name, window (x0, y0, x1, y1)``, and with ``ann`` (see :func:`parse_dota_txt`) ``polys``
    (patch coordinates), ``labels``, ``difficulties`` (2 for objects cut by the window). ``save_empty`` defaults
    to ``ann is None``.
    """
    if save_empty is None:
        save_empty = ann is None
    windows = sliding_windows(width, height, sizes, gaps, img_rate_thr)
    iof = poly_window_iof(ann["polys"], windows) if ann is not None else None
    patches = []
    for j, win in enumerate(windows):
        patch = dict(name=patch_name(image_id, win), window=tuple(int(v) for v in win))
        if ann is not None:
            objects = window_annotations(ann, win, iof_thr, iof=iof[:, j])
            if len(objects["labels"]) == 0 and not save_empty:
                continue
            patch.update(objects)
        patches.append(patch)
    return patches


def window_annotations(ann: dict, window: Sequence[float], iof_thr: float = 0.7,
                       iof: Optional[np.ndarray] = None, origin: Optional[Sequence[float]] = None) -> dict:
    """The objects of ``ann`` (see :func:`parse_dota_txt`) in the rectangle ``window = (x0, y0, x1, y1)``, in its
    coordinates: those with IoF >= ``iof_thr`` (:func:`poly_window_iof`; ``iof`` when already computed), shifted by
    ``origin`` (default ``(x0, y0)``), unclipped; objects cut by the window get difficulty 2, the others keep
    theirs. Returns ``dict(polys, labels, difficulties)``. The rule of the patches of :func:`plan_patches`, for any
    rectangle."""
    win = np.asarray(window, np.float64).reshape(4)
    if iof is None:
        iof = poly_window_iof(ann["polys"], win[None])[:, 0]
    keep = np.nonzero(iof >= iof_thr)[0]
    origin = win[:2] if origin is None else np.asarray(origin, np.float64).reshape(2)
    shift = np.tile(origin, ann["polys"].shape[1] // 2)
    return dict(polys=ann["polys"][keep] - shift, labels=[ann["labels"][i] for i in keep],
                difficulties=np.where(iof[keep] < 1.0, 2, ann["difficulties"][keep]).astype(np.int64))


def crop_patch(img: np.ndarray, window: Sequence[int], pad_value=(104, 116, 124)) -> np.ndarray:
    """Crop ``img[y0:y1, x0:x1]``, padded with ``pad_value`` (scalar or one value per channel) to the window."""
    x0, y0, x1, y1 = (int(v) for v in window)
    patch = img[y0:y1, x0:x1]
    h, w = y1 - y0, x1 - x0
    if patch.shape[:2] == (h, w):
        return np.ascontiguousarray(patch)
    out = np.empty((h, w) + img.shape[2:], img.dtype)
    pad = np.asarray(pad_value, img.dtype)
    if pad.size not in (1, out.shape[-1] if out.ndim == 3 else 1):
        raise ValueError(f"pad_value {list(np.ravel(pad_value))} does not match {out.shape[-1]} channels")
    out[...] = pad.reshape(-1) if pad.size > 1 else pad.reshape(())
    out[:patch.shape[0], :patch.shape[1]] = patch
    return out


def _write_image(path: str, img: np.ndarray, png_compression: int) -> None:
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)] if path.lower().endswith(".png") else []
    if not cv2.imwrite(path, img, params):
        raise OSError(f"could not write {path!r}")


def _split_one(job: dict) -> dict:
    img = cv2.imread(job["img_path"], cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"could not read image {job['img_path']!r}")
    h, w = img.shape[:2]
    patches = plan_patches(job["image_id"], w, h, job["ann"], job["sizes"], job["gaps"], job["iof_thr"],
                           job["img_rate_thr"], job["save_empty"])
    n_obj = 0
    for p in patches:
        _write_image(os.path.join(job["img_out"], p["name"] + job["ext"]), crop_patch(img, p["window"],
                                                                                   job["pad_value"]),
                     job["png_compression"])
        if job["ann"] is not None:
            lines = [format_dota_line(poly, lab, d) for poly, lab, d in zip(p["polys"], p["labels"],
                                                                           p["difficulties"])]
            n_obj += len(lines)
            with open(os.path.join(job["ann_out"], p["name"] + ".txt"), "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
    return dict(image_id=job["image_id"], names=[p["name"] for p in patches], objects=n_obj,
                windows=len(sliding_windows(w, h, job["sizes"], job["gaps"], job["img_rate_thr"])))


@contextmanager
def worker_pool(workers: int):
    """A ``multiprocessing`` pool whose workers start from a clean process (``forkserver``).

    Forking the calling process directly is not safe once it has used threaded libraries: OpenCV's or torch's
    (OpenMP) thread pools copied mid-state can leave the children waiting forever (seen with the full test suite).
    The fork server is a fresh interpreter that imports this module once, and the workers are forked from it.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload([__name__])
    with ctx.Pool(workers) as pool:
        yield pool


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        yield from iterable
        return
    try:  # tqdm is optional: without it, no progress bar
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, unit="img")
        return
    every = max(1, total // 20)
    for i, item in enumerate(iterable, start=1):
        if i % every == 0 or i == total:
            print(f"{desc}: {i}/{total}", file=sys.stderr, flush=True)
        yield item


def split_dataset(img_dir: str, out_dir: str, ann_dir: Optional[str] = None, size: int = 1024, gap: int = 200,
                  rates: Sequence[float] = (1.0,), iof_thr: float = 0.7, img_rate_thr: float = 0.6,
                  pad_value: Sequence[int] = (104, 116, 124), save_empty: Optional[bool] = None,
                  workers: int = 1, skip_bad: bool = False, classes: Optional[Sequence[str]] = DOTA_V1_CLASSES,
                  ext: str = ".png", png_compression: int = 1, ann_subdir: str = "labelTxt",
                  overwrite: bool = False, progress: bool = True) -> dict:
    """Split every image of ``img_dir`` (with its ``ann_dir/<id>.txt``) into ``out_dir/images`` (+ ``labelTxt``).

    All labels are read and checked before anything is written. Returns ``dict(images, patches, objects,
    skipped_empty, seconds, patch_names)`` (``patch_names`` sorted; ``skipped_empty``: windows left out for
    having no object). See the module doc for the rules.
    """
    t0 = time.perf_counter()
    if not 0.0 <= iof_thr <= 1.0:
        raise ValueError(f"iof_thr must be in [0, 1], got {iof_thr}")
    if not ext.startswith("."):
        ext = "." + ext
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"ext must be one of {IMAGE_EXTENSIONS}, got {ext!r}")
    pad_value = tuple(int(v) for v in np.ravel(pad_value))
    if len(pad_value) not in (1, 3):
        raise ValueError(f"pad_value needs 1 or 3 values, got {list(pad_value)}")
    wins = windows_for_rates(size, gap, rates)
    sizes, gaps = [s for s, _ in wins], [g for _, g in wins]
    for s, g in wins:
        if not 0 <= g < s:
            raise ValueError(f"need 0 <= gap < size, got window {s}, gap {g} (size {size}, gap {gap}, rates {rates})")

    images = list_images(img_dir)
    anns: Dict[str, Optional[dict]] = {i: None for i in images}
    if ann_dir is not None:
        if not os.path.isdir(ann_dir):
            raise FileNotFoundError(f"annotation directory {ann_dir!r} does not exist")
        txts = sorted(n for n in os.listdir(ann_dir) if n.lower().endswith(".txt"))
        orphans = [n for n in txts if os.path.splitext(n)[0] not in images]
        if orphans:
            raise DOTAFormatError(f"{os.path.join(ann_dir, orphans[0])}: no image {os.path.splitext(orphans[0])[0]}.* "
                                  f"in {img_dir!r}" + (f" (and {len(orphans) - 1} more labels without image)"
                                                        if len(orphans) > 1 else ""))
        for name in txts:
            anns[os.path.splitext(name)[0]] = parse_dota_txt(os.path.join(ann_dir, name), classes, skip_bad)
        for image_id in images:
            if anns[image_id] is None:
                warnings.warn(f"no label file {image_id}.txt in {ann_dir!r}: image {images[image_id]} has no objects",
                              stacklevel=2)
                anns[image_id] = _empty_ann()

    img_out = os.path.join(out_dir, "images")
    ann_out = os.path.join(out_dir, ann_subdir) if ann_dir is not None else None
    for d in (img_out, ann_out):
        if d is None:
            continue
        if os.path.isdir(d) and os.listdir(d) and not overwrite:
            raise FileExistsError(f"output directory {d!r} is not empty (pass overwrite=True / --overwrite)")
        os.makedirs(d, exist_ok=True)

    jobs = [dict(img_path=os.path.join(img_dir, images[i]), image_id=i, ann=anns[i], sizes=sizes, gaps=gaps,
                 iof_thr=iof_thr, img_rate_thr=img_rate_thr, save_empty=save_empty, pad_value=pad_value,
                 img_out=img_out, ann_out=ann_out, ext=ext, png_compression=png_compression) for i in images]
    results = []
    if workers > 1 and len(jobs) > 1:
        with worker_pool(min(workers, len(jobs))) as pool:
            for r in _progress(pool.imap_unordered(_split_one, jobs), len(jobs), "split", progress):
                results.append(r)
    else:
        for r in _progress(map(_split_one, jobs), len(jobs), "split", progress):
            results.append(r)
    names = sorted(n for r in results for n in r["names"])
    return dict(images=len(results), patches=len(names), objects=sum(r["objects"] for r in results),
                skipped_empty=sum(r["windows"] - len(r["names"]) for r in results),
                seconds=time.perf_counter() - t0, patch_names=names)
