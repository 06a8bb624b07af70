"""Where ``make demo`` (``tools/demo.py``) and the tools that default to its model keep things.

Paths are relative: :data:`DEMO_CONFIG`, :data:`DEMO_WORK_DIR` to the repository root and :data:`SAMPLE_IMAGE` to it
as well (the sample lies beside the repository, in ``../shared``; optional: the tools fall back to a synthetic
scene without it). Each tool resolves them against its own location (``tools/..``), so nothing here depends on how
rotplugin was installed. :class:`DemoLayout` is what the demo writes below its output folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO_CONFIG", "DEMO_WORK_DIR", "SAMPLE_IMAGE", "DEMO_BEST_TTA", "DemoLayout", "demo_config"]

DEMO_CONFIG = "configs/demo/rotated-retinanet-le90_er18-c4_efpn_synthdota.py"
DEMO_WORK_DIR = "work_dirs/demo"   # tools/demo.py's default --out
SAMPLE_IMAGE = "../shared/data/dota_samples/images/demo.jpg"   # a 1024² DOTA image without labels
# the feature-TTA setting that scored best on the C4 demo model in tools/benchmark_tta_grid.py within the time of
# image TTA over 4 x 90° with NMS (README: "TTA beyond quarter turns"); the demo measures it beside its three modes
DEMO_BEST_TTA = dict(angles=[0, 90, 180, 270], flips=["none", "horizontal"], merge="fusion")


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


def demo_config(config, out, size: int, epochs=None, data=None):
    """The demo config (the file ``config``, resolved by the caller) with its data under ``data`` (default
    ``DemoLayout(out).data``), test scenes of ``size``² kept at their size, rotation TTA on the same pipeline, and
    with ``epochs`` the schedule stretched to them; work dir ``DemoLayout(out).train_dir``."""
    import os

    from rotplugin.presets import load_config   # mm* only here: the paths above stay light

    cfg = load_config(str(config))
    data_root = str(Path(data) if data is not None else DemoLayout(out).data) + os.sep
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[key].dataset.data_root = data_root
        for step in cfg[key].dataset.pipeline:
            if step["type"] == "mmdet.Resize":
                step["scale"] = (size, size)
    cfg.tta_pipeline = cfg.test_dataloader.dataset.pipeline   # rotation TTA tests on the same pipeline
    if epochs:
        cfg.train_cfg.max_epochs = cfg.train_cfg.val_interval = epochs
        for sched in cfg.param_scheduler:
            if sched.get("by_epoch", True):
                sched.update(end=epochs, T_max=epochs) if "T_max" in sched else sched.update(end=epochs)
        cfg.default_hooks.checkpoint.interval = epochs
    cfg.work_dir = str(DemoLayout(out).train_dir)
    return cfg
