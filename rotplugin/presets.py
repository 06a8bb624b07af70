"""Small variants of the full configs, for CPU tests, the demo and quick benchmarks."""
from __future__ import annotations

import os
import os.path as osp
from contextlib import contextmanager

from mmengine.config import Config, DictAction

__all__ = ["load_config", "shrink_detector_config", "add_runner_args", "runner_config", "trusted_checkpoints"]


def load_config(path: str) -> Config:
    """``Config.fromfile`` (resolving ``mmrotate::`` bases) with mmrotate's modules registered."""
    from mmrotate.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return Config.fromfile(path)


def add_runner_args(parser) -> None:
    """The options tools/train.py and tools/test.py share: ``--work-dir``, ``--cfg-options``, ``--launcher``,
    ``--local-rank`` (set by ``torch.distributed.launch``)."""
    parser.add_argument("--work-dir")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def runner_config(args) -> Config:
    """The config of ``args.config`` with ``--cfg-options``, the launcher and the work dir (default
    ``work_dirs/<config name>``) applied; sets ``LOCAL_RANK`` for mmengine's launcher."""
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    return cfg


@contextmanager
def trusted_checkpoints():
    """Let ``torch.load`` unpickle mmengine's own checkpoints while the block runs.

    torch >= 2.6 loads with ``weights_only=True`` by default, and the checkpoints an mmengine Runner writes carry
    its message hub (``HistoryBuffer``, numpy arrays): ``--resume`` and ``load_from`` of such files fail with
    "Weights only load failed". The train/test tools load files the user names on the command line, so they trust
    them (as mmengine did before torch 2.6); the setting is restored afterwards.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def shrink_detector_config(cfg: Config, depth: int = 18, orientation: int = 4, width: int = 16,
                           neck_channels: int = 32, fc_channels: int = 64) -> Config:
    """Make the detector of ``cfg`` small: an EquivariantResNet of ``depth`` with ``width`` base channels, a neck
    and heads of ``neck_channels``. Works for single-stage (``bbox_head``) and two-stage (``rpn_head`` +
    ``roi_head``, also with per-stage lists of extractors / bbox heads) detectors. Returns a copy."""
    cfg = cfg.copy()
    model = cfg.model
    expansion = 1 if depth in (18, 34) else 4
    model.backbone.update(depth=depth, orientation=orientation, stem_channels=width, base_channels=width,
                          init_cfg=None)
    model.neck.update(in_channels=[width * expansion * 2 ** i for i in range(4)], out_channels=neck_channels,
                      orientation=orientation)
    for head in ("bbox_head", "rpn_head"):
        if head in model:
            model[head].update(in_channels=neck_channels, feat_channels=neck_channels)
    if "roi_head" in model:
        # one extractor / bbox head, or one per stage (cascades such as ReDet's RoI Transformer)
        extractors = model.roi_head.bbox_roi_extractor
        for extractor in extractors if isinstance(extractors, list) else [extractors]:
            extractor.out_channels = neck_channels
            if extractor.roi_layer.get("type") == "RiRoIAlignRotated":
                extractor.roi_layer.num_orientations = orientation
        heads = model.roi_head.bbox_head
        for head in heads if isinstance(heads, list) else [heads]:
            head.update(in_channels=neck_channels, fc_out_channels=fc_channels)
    return cfg
