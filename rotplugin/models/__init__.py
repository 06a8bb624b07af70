"""Registered mmrotate components (importing this module registers them)."""
from .backbones.equivariant_resnet import EquivariantResNet
from .data_preprocessor import EquivariantDetDataPreprocessor
from .necks.equivariant_fpn import EquivariantFPN

__all__ = ["EquivariantResNet", "EquivariantFPN", "EquivariantDetDataPreprocessor"]
