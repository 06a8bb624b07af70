"""Registered mmrotate components. :mod:`rotplugin.mm` imports the submodules (importing one registers its
components); names here load their submodule on first use, so that importing one submodule (e.g.
:mod:`rotplugin.models.roi_extractors`, which an exported stock config keeps) loads neither escnn nor the others."""
import importlib

_WHERE = {
    "CircumscribedHBoxOverlaps2D": "iou_calculators",
    "EquivariantResNet": "backbones.equivariant_resnet",
    "EquivariantFPN": "necks.equivariant_fpn",
    "EquivariantDetDataPreprocessor": "data_preprocessor",
    "FeatureRotationNeck": "necks.feature_rotation_neck",
    "FeatureRotationTTAModel": "tta",
    "ImageRotationTTAModel": "tta",
    "PrunedNMSShared2FCBBoxHead": "pruned_nms_heads",
    "RiRoIExtractor": "roi_extractors",
}
SUBMODULES = tuple(sorted(set(_WHERE.values())))

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def import_all() -> None:
    """Import (and so register) every component."""
    for sub in SUBMODULES:
        importlib.import_module(f"{__name__}.{sub}")
