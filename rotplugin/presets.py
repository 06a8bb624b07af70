"""Small variants of the full configs, for CPU tests, the demo and quick benchmarks."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, DictAction

from rotplugin.equivariance import FeaturePyramid
from rotplugin.mm import register_all_modules
from rotplugin.models import EquivariantFPN, EquivariantResNet

__all__ = ["load_config", "shrink_detector_config", "add_runner_args", "runner_config", "random_backbone_neck"]


def load_config(path: str) -> Config:
    """``Config.fromfile`` (resolving ``mmrotate::`` bases) with mmrotate's and rotplugin's modules registered."""
    register_all_modules(init_default_scope=True)
    return Config.fromfile(path)


def random_backbone_neck(depth: int = 50, orientation: int = 8, flip: bool = False, width: int = 64,
                         neck_channels: Optional[int] = 256, seed: Optional[int] = None) -> FeaturePyramid:
    """A randomly initialised ``EquivariantResNet`` (``width`` stem/base channels) + ``EquivariantFPN``
    (``neck_channels`` outputs, P3-P7 with convolutions on the input, as the shipped configs; ``None``: no neck)
    in eval mode, as a :class:`~rotplugin.equivariance.FeaturePyramid`; ``seed`` seeds torch first."""
    if seed is not None:
        torch.manual_seed(seed)
    backbone = EquivariantResNet(depth=depth, orientation=orientation, flip=flip, stem_channels=width,
                                 base_channels=width).eval()
    neck = None
    if neck_channels is not None:
        neck = EquivariantFPN(in_channels=backbone.out_channels, out_channels=neck_channels, num_outs=5,
                              orientation=orientation, flip=flip, start_level=1, add_extra_convs="on_input").eval()
    return FeaturePyramid.of_modules(backbone, neck)


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


def shrink_detector_config(cfg: Config, depth: int = 18, orientation: int = 4, width: int = 16,
                           neck_channels: int = 32, fc_channels: int = 64, flip: bool = False) -> Config:
    """Make the detector of ``cfg`` small: an EquivariantResNet of ``depth`` with ``width`` base channels (C_N of
    ``orientation``, D_N with ``flip``), a neck and heads of ``neck_channels``. Works for single-stage (``bbox_head``) and two-stage (``rpn_head`` +
    ``roi_head``, also with per-stage lists of extractors / bbox heads) detectors. Returns a copy."""
    cfg = cfg.copy()
    model = cfg.model
    expansion = 1 if depth in (18, 34) else 4
    model.backbone.update(depth=depth, orientation=orientation, flip=flip, stem_channels=width, base_channels=width,
                          init_cfg=None)
    model.neck.update(in_channels=[width * expansion * 2 ** i for i in range(4)], out_channels=neck_channels,
                      orientation=orientation, flip=flip)
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
