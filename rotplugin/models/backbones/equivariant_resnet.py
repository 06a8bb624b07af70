"""EquivariantResNet: the ReResNet of ReDet written with escnn, outputs as plain tensors of regular fields."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rotplugin.canvas import check_equivariant_canvas
from rotplugin.convert.redet import (convert_redet_state_dict, is_redet_state_dict, load_checkpoint_file,
                                     sub_state_dict, unwrap_state_dict)
from rotplugin.nn.field_layers import (FieldBatchNorm, FieldConv, export_module, make_gspace, regular_field_type,
                                       trivial_field_type)
from rotplugin.registry import MODELS


class _FieldBlock(nn.Module):
    """Shared forward of the residual blocks: ``relu(body(x) + shortcut(x))`` with optional checkpointing."""

    expansion = 1
    with_cp = False

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def inner(t):
            identity = t if self.downsample is None else self.downsample(t)
            return self._residual(t) + identity

        out = cp.checkpoint(inner, x, use_reentrant=False) if self.with_cp and x.requires_grad else inner(x)
        return self.relu(out)


class BasicFieldBlock(_FieldBlock):
    expansion = 1

    def __init__(self, in_type, planes_type, out_type, stride=1, downsample=None, with_cp=False):
        super().__init__()
        self.conv1 = FieldConv(in_type, planes_type, 3, stride=stride)
        self.norm1 = FieldBatchNorm(planes_type)
        self.conv2 = FieldConv(planes_type, out_type, 3)
        self.norm2 = FieldBatchNorm(out_type)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    def _residual(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(out))


class BottleneckFieldBlock(_FieldBlock):
    """ResNet bottleneck (``style='pytorch'``: the stride sits on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, in_type, planes_type, out_type, stride=1, downsample=None, with_cp=False):
        super().__init__()
        self.conv1 = FieldConv(in_type, planes_type, 1)
        self.norm1 = FieldBatchNorm(planes_type)
        self.conv2 = FieldConv(planes_type, planes_type, 3, stride=stride)
        self.norm2 = FieldBatchNorm(planes_type)
        self.conv3 = FieldConv(planes_type, out_type, 1)
        self.norm3 = FieldBatchNorm(out_type)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    def _residual(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        return self.norm3(self.conv3(out))


@MODELS.register_module()
class EquivariantResNet(BaseModule):
    """Rotation-equivariant ResNet (ReDet's ReResNet) on escnn.

    The input is ``in_channels`` trivial (scalar) fields; every later feature is a stack of regular fields of
    C_N (``orientation=N``) or D_N (``flip=True``) with the channel counts of a ResNet (256/512/1024/2048 for
    depth 50), i.e. ``channels / |G|`` fields of ``|G|`` consecutive channels each. Outputs are plain tensors, so any
    mmdet neck can follow; ``out_field_types[i]`` and ``out_strides[i]`` describe output ``i``.

    On an equivariant canvas (side ≡ 1 mod 32, see :mod:`rotplugin.canvas`) the outputs of a rotated input equal the
    passive rotation of the outputs for multiples of 90° (and the mirrors of D_N) up to float rounding.

    Args:
        depth: 18, 34, 50, 101 or 152.
        orientation: N of the group C_N / D_N.
        flip: use D_N (rotations and mirrors) instead of C_N.
        in_channels: channels of the input image (trivial fields).
        stem_channels, base_channels: channels after the stem / of the first stage's 3x3 convs.
        out_indices: stages whose outputs are returned (0..3).
        frozen_stages: stages (with the stem) whose parameters are frozen and kept in eval mode; -1 freezes none.
        norm_eval: keep all batch norms in eval mode while training.
        with_cp: gradient checkpointing of the residual blocks.
        require_equivariant_canvas: raise unless the input's sides are ≡ 1 (mod 32).
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=...)`` also accepts an e2cnn ReDet
            checkpoint (mmrotate's ``ReResNet``, bare or inside a detector with ``backbone.`` keys): it is converted
            on the fly (:mod:`rotplugin.convert.redet`, needs e2cnn for train-mode checkpoints).
    """

    arch_settings = {
        18: (BasicFieldBlock, (2, 2, 2, 2)),
        34: (BasicFieldBlock, (3, 4, 6, 3)),
        50: (BottleneckFieldBlock, (3, 4, 6, 3)),
        101: (BottleneckFieldBlock, (3, 4, 23, 3)),
        152: (BottleneckFieldBlock, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int = 50, orientation: int = 8, flip: bool = False, in_channels: int = 3,
                 stem_channels: int = 64, base_channels: int = 64, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2), out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 require_equivariant_canvas: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if depth not in self.arch_settings:
            raise KeyError(f"EquivariantResNet: invalid depth {depth!r}; choose one of {sorted(self.arch_settings)}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"EquivariantResNet: num_stages must be in 1..4, got {num_stages}")
        if not out_indices or max(out_indices) >= num_stages or min(out_indices) < 0:
            raise ValueError(f"EquivariantResNet: out_indices {tuple(out_indices)} must lie in 0..{num_stages - 1}")
        self.depth, self.orientation, self.flip = depth, orientation, flip
        self.in_channels = in_channels
        self.out_indices = tuple(out_indices)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.require_equivariant_canvas = require_equivariant_canvas
        self.gspace = make_gspace(orientation, flip)
        block, stage_blocks = self.arch_settings[depth]
        stage_blocks = stage_blocks[:num_stages]

        self.in_type = trivial_field_type(self.gspace, in_channels)
        stem_type = regular_field_type(self.gspace, stem_channels, "EquivariantResNet stem_channels")
        self.conv1 = FieldConv(self.in_type, stem_type, 7, stride=2)
        self.norm1 = FieldBatchNorm(stem_type)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.res_layers: List[str] = []
        self.out_field_types, self.out_strides, self.out_channels = [], [], []
        in_type, total_stride = stem_type, 4
        for i, num_blocks in enumerate(stage_blocks):
            planes = base_channels * 2 ** i
            planes_type = regular_field_type(self.gspace, planes, f"EquivariantResNet stage {i + 1}")
            out_type = regular_field_type(self.gspace, planes * block.expansion, f"EquivariantResNet stage {i + 1}")
            layers = []
            for j in range(num_blocks):
                stride = strides[i] if j == 0 else 1
                downsample = None
                if stride != 1 or in_type.size != out_type.size:
                    downsample = nn.Sequential(FieldConv(in_type, out_type, 1, stride=stride),
                                               FieldBatchNorm(out_type))
                layers.append(block(in_type, planes_type, out_type, stride, downsample, with_cp))
                in_type = out_type
            total_stride *= strides[i]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.res_layers.append(name)
            if i in self.out_indices:
                self.out_field_types.append(out_type)
                self.out_strides.append(total_stride)
                self.out_channels.append(out_type.size)
        self.max_stride = total_stride
        self._freeze_stages()

    def init_weights(self):
        """mmengine's ``init_weights``; a ``Pretrained`` checkpoint that is an e2cnn ReDet checkpoint (detected by its
        key names) is converted to escnn's basis and loaded (strictly: missing / unexpected keys raise)."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get("type") == "Pretrained"]
        if self._is_init or len(pretrained) != 1:
            return super().init_weights()
        cfg = pretrained[0]
        state_dict = unwrap_state_dict(load_checkpoint_file(cfg["checkpoint"], cfg.get("map_location", "cpu")))
        prefix = cfg.get("prefix")
        if prefix is not None and not prefix.endswith("."):
            prefix += "."
        if not is_redet_state_dict(state_dict, prefix):
            return super().init_weights()
        print_log(f"EquivariantResNet: {cfg['checkpoint']} is an e2cnn ReDet checkpoint; converting its backbone to "
                  f"escnn on the fly", logger="current")
        converted, report = convert_redet_state_dict(state_dict, self, prefix=prefix, parts=("backbone",))
        others = [c for c in cfgs if c is not cfg]
        if others:  # the other initialisers first, as mmengine does (the checkpoint then overwrites them)
            init_cfg, self.init_cfg = self.init_cfg, others
            try:
                super().init_weights()
            finally:
                self.init_cfg = init_cfg
        self.load_state_dict(sub_state_dict(converted, report.parts["backbone"]), strict=True)
        summary = report.summary()
        print_log(f"EquivariantResNet: loaded {summary['conv_layers']} converted convolutions and "
                  f"{summary['bn_layers']} batch norms (max relative filter residual "
                  f"{summary['max_filter_residual']:.1e})", logger="current")
        self._is_init = True

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"EquivariantResNet expects images of shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if self.require_equivariant_canvas:
            check_equivariant_canvas(x.shape[-2:], self.max_stride, "EquivariantResNet input")
        x = self.maxpool(self.relu(self.norm1(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            for m in (self.conv1, self.norm1):
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            m = getattr(self, f"layer{i}")
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def export(self) -> nn.Module:
        """A plain-PyTorch copy (``nn.Conv2d`` / ``nn.BatchNorm2d``) with equal outputs in eval mode."""
        return export_module(self)
