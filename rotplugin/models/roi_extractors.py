"""RoI extractor for ReDet-style heads that runs rotplugin's pure-PyTorch ``RiRoIAlignRotated``."""
from __future__ import annotations

from mmrotate.models.roi_heads.roi_extractors import RotatedSingleRoIExtractor
from torch import nn

from rotplugin.ops import RiRoIAlignRotated
from rotplugin.registry import MODELS

__all__ = ["RiRoIExtractor"]


@MODELS.register_module()
class RiRoIExtractor(RotatedSingleRoIExtractor):
    """mmrotate's ``RotatedSingleRoIExtractor`` (FPN level mapping, same arguments) whose
    ``roi_layer=dict(type='RiRoIAlignRotated', ...)`` builds :class:`rotplugin.ops.RiRoIAlignRotated` (pure PyTorch,
    CPU and CUDA) instead of ``mmcv.ops.RiRoIAlignRotated`` (CUDA only).

    mmrotate's extractor looks ``roi_layer['type']`` up in ``mmcv.ops`` by name rather than in a registry, so a
    config cannot swap the operator there; use this extractor instead (ReDet's second-stage extractor). Other
    ``roi_layer`` types (a class, or a name in ``mmcv.ops``) are built as mmrotate does.
    """

    def build_roi_layers(self, layer_cfg, featmap_strides):
        cfg = dict(layer_cfg)
        layer_type = cfg.pop("type")
        if layer_type in ("RiRoIAlignRotated", RiRoIAlignRotated):
            layer_cls = RiRoIAlignRotated
        elif isinstance(layer_type, type):
            layer_cls = layer_type
        else:
            return super().build_roi_layers(layer_cfg, featmap_strides)
        return nn.ModuleList([layer_cls(spatial_scale=1 / s, **cfg) for s in featmap_strides])
