"""Small helpers shared by the tools (no mm* imports): atomic writes, resumable JSON result files, loading an image
and turning it into network input."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

__all__ = ["write_atomic", "write_json_atomic", "write_pickle_atomic", "write_folder_atomic", "ResumableResults",
           "sha256_file", "DOTA_MEAN", "DOTA_STD", "image_to_tensor", "load_image"]

# mmrotate's DOTA configs normalise images by ImageNet's mean and std (RGB order, 0-255 scale)
DOTA_MEAN = (123.675, 116.28, 103.53)
DOTA_STD = (58.395, 57.12, 57.375)


def load_image(path, size=None, seed: int = 0):
    """``(BGR uint8 (H, W, 3) image, description)`` of the image file ``path``, or, for ``path=None``, of a
    synthetic aerial scene (:func:`rotplugin.data.dota_synth.render_scene`, ``seed``; 256² unless ``size`` says).

    ``size``: ``None`` keeps the size; an int resizes the longer side to it (aspect kept); ``(h, w)`` resizes to
    exactly that. A missing or unreadable file raises ``FileNotFoundError`` / ``ValueError`` naming it."""
    import cv2           # OpenCV and numpy only when an image is loaded: the writers above need neither
    import numpy as np

    if size is not None and not (isinstance(size, int) and size > 0) and not (
            isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)):
        raise ValueError(f"size must be None, a positive int (longer side) or (h, w), got {size!r}")
    if path is None:
        from rotplugin.data.dota_synth import render_scene   # the scene generator only when it is used

        side = size if isinstance(size, int) else 256
        img, _ = render_scene(np.random.default_rng(seed), side)
        what = f"synthetic scene (rotplugin.data.dota_synth.render_scene, seed {seed})"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"could not read image {path} (not an image OpenCV can decode)")
        what = str(path)
    h, w = img.shape[:2]
    if isinstance(size, int):
        scale = size / max(h, w)
        target = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        target = tuple(size) if size is not None else (h, w)
    if target != (h, w):
        shrink = target[0] * target[1] < h * w
        img = cv2.resize(img, (target[1], target[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        what += f", resized to {target[1]}x{target[0]}"
    return img, what


def image_to_tensor(img, mean=DOTA_MEAN, std=DOTA_STD, bgr_to_rgb: bool = True):
    """A ``(1, 3, H, W)`` float32 network input from an ``(H, W, 3)`` uint8 image: channels reversed first when
    ``bgr_to_rgb`` (cv2 reads BGR; mmdet's data preprocessor does the same), then ``(img - mean) / std``."""
    import numpy as np   # numpy and torch only for network input: the writers above need neither
    import torch

    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    img = img[..., ::-1] if bgr_to_rgb else img
    x = (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].contiguous()


def write_atomic(path, write: Callable, mode: str) -> None:
    """Call ``write(file)`` on a temp file (opened with ``mode``, ``"w"`` or ``"wb"``) in the folder of ``path`` and
    rename it to ``path`` (parent folders are created): readers see the old file or the complete new one, never a
    partial one. The file gets the permissions of a plain new file (``0o666`` less the umask), not mkstemp's
    private ``0o600``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(out.parent), prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_folder_atomic(out_dir, writers: Dict[str, Callable[[Path], None]], overwrite: bool = False) -> Path:
    """Create the folder ``out_dir`` holding the files ``writers`` make (``name -> fn(path)``) all at once: they are
    written into a temporary folder beside it, renamed to ``out_dir`` only when every writer succeeded (an error or
    an interruption leaves no partial folder). An existing non-empty ``out_dir`` raises ``FileExistsError`` unless
    ``overwrite`` (then it is replaced as a whole: readers find the old folder or the new one)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=str(out.parent), prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, write in writers.items():
            write(tmp / name)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():   # the old one moves aside first
            old = out.parent / f"{tmp.name[:-4]}.old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_json_atomic(path, data) -> None:
    """Write ``data`` as JSON to ``path`` through a temp file in the same folder and a rename, so that an
    interrupted run never leaves a half-written file (parent folders are created)."""
    def write(fh):
        json.dump(data, fh, indent=2)
        fh.write("\n")

    write_atomic(path, write, "w")


def write_pickle_atomic(path, data) -> None:
    """:func:`write_json_atomic` for a pickle file."""
    write_atomic(path, lambda fh: pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL), "wb")


def _canonical(settings: dict) -> dict:
    # the form the settings take once written and read back (tuples become lists, keys strings)
    return json.loads(json.dumps(settings))


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of the file ``path`` (what decides whether resumable results are still valid)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class ResumableResults:
    """A JSON file of named entries that a rerun of a tool resumes.

    Every entry is a dict stored with the ``settings`` it was measured with. Rerunning with the same file,
    :meth:`done` says (and prints) that an entry with equal settings is there, so the tool skips it; entries with
    other settings, or every entry with ``force=True``, are measured again. :meth:`put` writes the whole file
    atomically after each entry, so an interrupted run keeps what it finished. Entries of the file that this run
    does not touch are kept. Other top-level fields (a summary) can be set in :attr:`data` and written with
    :meth:`save`. Without a ``path`` nothing is read or written and nothing counts as done.
    """

    def __init__(self, path: Optional[str], force: bool = False, log: Callable[[str], Any] = print):
        self.path, self.force, self.log = path, force, log
        self.data: dict = {}
        if path and os.path.exists(path):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as err:
                raise ValueError(f"{path} exists but is not a JSON results file ({err}); move it away or name "
                                 f"another --json file") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path} does not hold a JSON object of results; name another --json file")
            self.data = data

    def done(self, key: str, settings: dict) -> bool:
        """Whether ``key`` is already in the file with these ``settings`` (and ``force`` is off); prints the
        reason when it skips or re-measures."""
        if not self.path:
            return False
        entry = self.data.get(key)
        if not isinstance(entry, dict) or "settings" not in entry:
            return False
        if entry["settings"] != _canonical(settings):
            self.log(f"{key}: in {self.path} with other settings, measuring again")
            return False
        if self.force:
            self.log(f"{key}: in {self.path}, measuring again (--force)")
            return False
        self.log(f"{key}: skipped, already measured with the same settings in {self.path} (--force to redo)")
        return True

    def get(self, key: str) -> Optional[dict]:
        return self.data.get(key)

    def put(self, key: str, value: dict, settings: dict) -> dict:
        """Store ``value`` (a dict) with its ``settings`` under ``key`` and write the file."""
        entry = dict(value, settings=_canonical(settings))
        self.data[key] = entry
        self.save()
        return entry

    def save(self) -> None:
        if self.path:
            write_json_atomic(self.path, self.data)
