"""Checkpoint conversion from other implementations.

:mod:`rotplugin.convert.redet`: e2cnn ReDet checkpoints (mmrotate's ``ReResNet`` / ``ReFPN``) to
:class:`~rotplugin.models.EquivariantResNet` / :class:`~rotplugin.models.EquivariantFPN`. Converting basis
coefficients needs e2cnn, an optional extra (``pip install 'rotplugin[redet]'``); it is imported only then.
"""
from .redet import (ConversionReport, LayerReport, RedetConversionError, convert_redet_checkpoint,
                    convert_redet_state_dict, is_redet_state_dict, load_checkpoint_file, unwrap_state_dict)

__all__ = [
    "ConversionReport",
    "LayerReport",
    "RedetConversionError",
    "convert_redet_checkpoint",
    "convert_redet_state_dict",
    "is_redet_state_dict",
    "load_checkpoint_file",
    "unwrap_state_dict",
]
