"""Mixed precision for the detectors: box coding, losses and RoI pooling in float32 under autocast.

Under ``torch.autocast`` (mmengine's ``AmpOptimWrapper``) convolutions and linear layers give float16 (CUDA) or
bfloat16 (CPU) outputs, and everything after the heads' last layers would follow in that dtype: box decoding, the
losses, NMS. float16 holds a 1024-pixel coordinate to 0.5 px, bfloat16 to 4 px, and numpy has no bfloat16
(mmrotate's ``qbox2rbox`` goes through numpy). mmdet 2.x kept these parts in float32 with ``force_fp32``; mmdet 3.x
dropped it. :func:`float32_box_coding` restores that on a built detector, without touching its weights:

* every dense head (RPN included) and RoI box head gives float32 outputs (its layers still run under autocast);
* every RoI extractor pools in float32 with autocast off and hands back the features' own dtype (mmdet 2.x's
  ``SingleRoIExtractor``: ``force_fp32(apply_to=('feats',), out_fp16=True)``).

The patches are instance attributes (``forward``), so state dicts, checkpoints and exports are unchanged;
:func:`restore_box_coding` removes them. Outside autocast they change nothing (the tensors are float32 already).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["float32_box_coding", "restore_box_coding"]

_MARK = "_rotplugin_float32"


def _to_float32(obj):
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_float32(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_float32(v) for k, v in obj.items()}
    return obj


def _float32_outputs(forward):
    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        return _to_float32(forward(*args, **kwargs))
    return wrapped


def _float32_pooling(forward):
    @functools.wraps(forward)
    def wrapped(feats, rois, *args, **kwargs):
        dtype = feats[0].dtype
        device = feats[0].device.type
        with torch.autocast(device, enabled=False):
            out = forward(_to_float32(feats), rois.float(), *args, **kwargs)
        return out.to(dtype)
    return wrapped


def _kind(module: nn.Module):
    from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    from mmdet.models.roi_heads.bbox_heads import BBoxHead
    from mmdet.models.roi_heads.roi_extractors.base_roi_extractor import BaseRoIExtractor

    if isinstance(module, (BaseDenseHead, BBoxHead)):
        return _float32_outputs
    if isinstance(module, BaseRoIExtractor):
        return _float32_pooling
    return None


def float32_box_coding(model: nn.Module) -> int:
    """Patch ``model``'s heads and RoI extractors as the module docstring says; returns how many modules were
    patched (0 for a model without any). Patching twice is a no-op."""
    count = 0
    for module in model.modules():
        wrap = _kind(module)
        if wrap is None:
            continue
        if not getattr(module, _MARK, False):
            module.forward = wrap(type(module).forward.__get__(module))
            setattr(module, _MARK, True)
        count += 1
    return count


def restore_box_coding(model: nn.Module) -> None:
    """Undo :func:`float32_box_coding`."""
    for module in model.modules():
        if module.__dict__.pop(_MARK, False):
            module.__dict__.pop("forward", None)
