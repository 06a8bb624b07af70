"""Checkpoint conversion from other implementations.

:mod:`rotplugin.convert.redet`: e2cnn ReDet checkpoints (mmrotate's ``ReResNet`` / ``ReFPN``) to
:class:`~rotplugin.models.EquivariantResNet` / :class:`~rotplugin.models.EquivariantFPN` (given by the caller: this
package depends on :mod:`rotplugin.nn` only). Converting basis coefficients needs e2cnn, an optional extra
(``pip install 'rotplugin[redet]'``); it is imported only then.
"""
from .redet import (ArchitectureMismatch, ConversionReport, LayerReport, RedetConversionError, convert_redet_checkpoint,
                    convert_redet_state_dict, infer_redet_architecture, is_redet_state_dict, load_checkpoint_file,
                    sub_state_dict, unwrap_state_dict)

__all__ = [
    "ArchitectureMismatch",
    "ConversionReport",
    "LayerReport",
    "RedetConversionError",
    "convert_redet_checkpoint",
    "convert_redet_state_dict",
    "infer_redet_architecture",
    "is_redet_state_dict",
    "load_checkpoint_file",
    "sub_state_dict",
    "unwrap_state_dict",
]
