"""Registered mmrotate components (importing this module registers them)."""
from .backbones.equivariant_resnet import EquivariantResNet
from .data_preprocessor import EquivariantDetDataPreprocessor
from .iou_calculators import CircumscribedHBoxOverlaps2D
from .necks.equivariant_fpn import EquivariantFPN
from .necks.feature_rotation_neck import FeatureRotationNeck
from .pruned_nms_heads import PrunedNMSShared2FCBBoxHead
from .roi_extractors import RiRoIExtractor
from .tta import FeatureRotationTTAModel, ImageRotationTTAModel

__all__ = ["CircumscribedHBoxOverlaps2D", "EquivariantResNet", "EquivariantFPN", "EquivariantDetDataPreprocessor",
           "FeatureRotationNeck", "FeatureRotationTTAModel", "ImageRotationTTAModel", "PrunedNMSShared2FCBBoxHead",
           "RiRoIExtractor"]
