"""Where ``make demo`` (``tools/demo.py``) and the tools that default to its model keep things.

Paths are relative: :data:`DEMO_CONFIG`, :data:`DEMO_WORK_DIR` to the repository root and :data:`SAMPLE_IMAGE` to it
as well (the sample lies beside the repository, in ``../shared``; optional: the tools fall back to a synthetic
scene without it). Each tool resolves them against its own location (``tools/..``), so nothing here depends on how
rotplugin was installed. :class:`DemoLayout` is what the demo writes below its output folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO_CONFIG", "DEMO_WORK_DIR", "SAMPLE_IMAGE", "DemoLayout"]

DEMO_CONFIG = "configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py"
DEMO_WORK_DIR = "work_dirs/demo"   # tools/demo.py's default --out
SAMPLE_IMAGE = "../shared/data/dota_samples/images/demo.jpg"   # a 1024² DOTA image without labels


@dataclass(frozen=True)
class DemoLayout:
    """The files of a demo run below ``out``: data, trained weights, benchmark, pictures, report."""
    out: Path

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))

    @property
    def data(self) -> Path:
        return self.out / "data"          # data/train, data/test: DOTA-format scenes (images/, labelTxt/)

    @property
    def test_data(self) -> Path:
        return self.data / "test"

    @property
    def checkpoint(self) -> Path:
        return self.out / "model.pth"     # the trained weights (a plain {'state_dict', 'meta'} file)

    @property
    def train_dir(self) -> Path:
        return self.out / "train"

    @property
    def benchmark_dir(self) -> Path:
        return self.out / "benchmark"

    @property
    def detections_dir(self) -> Path:
        return self.out / "detections"

    @property
    def fields_dir(self) -> Path:
        return self.out / "fields"
