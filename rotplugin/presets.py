"""Small variants of the full configs, for CPU tests, the demo and quick benchmarks."""
from __future__ import annotations

from mmengine.config import Config

__all__ = ["load_config", "shrink_detector_config"]


def load_config(path: str) -> Config:
    """``Config.fromfile`` (resolving ``mmrotate::`` bases) with mmrotate's modules registered."""
    from mmrotate.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return Config.fromfile(path)


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
