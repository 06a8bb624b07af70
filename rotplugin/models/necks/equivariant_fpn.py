"""EquivariantFPN: mmdet's FPN with steerable convolutions, on plain tensors of regular fields."""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from rotplugin.canvas import check_equivariant_canvas
from rotplugin.nn.field_layers import FieldConv, export_module, make_gspace, regular_field_type
from rotplugin.registry import MODELS

UPSAMPLE_MODES = ("bilinear", "nearest")


@MODELS.register_module()
class EquivariantFPN(BaseModule):
    """Feature pyramid over regular fields: lateral 1x1, top-down sum, 3x3 output convs, extra levels.

    Inputs are the backbone's tensors (``in_channels[i]`` channels = regular fields of the same group); outputs are
    ``num_outs`` tensors of ``out_channels`` channels (``out_channels / |G|`` regular fields), strides doubling from
    the first used input. Arguments follow mmdet's ``FPN``, with its checks: inputs ``start_level`` to ``end_level``
    *inclusive* are used (``end_level=-1``: up to the last input); extra levels (``num_outs`` beyond the used inputs)
    only when the last input is used. Additionally:

    Args:
        orientation, flip: the group (C_N, or D_N with ``flip=True``); must match the backbone.
        in_strides: stride of each input (default 4, 8, 16, 32).
        upsample_mode: ``'bilinear'`` (``align_corners=True`` to the lateral's size, exact equivariance on an
            equivariant canvas: it samples the coarse grid at the fine grid's image positions) or ``'nearest'``
            (ReDet's ReFPN, only approximately equivariant).
        require_equivariant_canvas: raise unless the first input level and thus the canvas are equivariant for
            the largest output stride.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, orientation: int = 8,
                 flip: bool = False, start_level: int = 0, end_level: int = -1,
                 add_extra_convs: Union[bool, str] = False, relu_before_extra_convs: bool = False,
                 in_strides: Sequence[int] = (4, 8, 16, 32), upsample_mode: str = "bilinear",
                 require_equivariant_canvas: bool = False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"EquivariantFPN: upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in (False, "on_input", "on_lateral", "on_output"):
            raise ValueError(f"EquivariantFPN: add_extra_convs must be False, True, 'on_input', 'on_lateral' or "
                             f"'on_output', got {add_extra_convs!r}")
        self.gspace = make_gspace(orientation, flip)
        self.in_channels = list(in_channels)
        self.num_ins = len(in_channels)
        # mmdet's FPN: end_level is the last used input (inclusive), -1 (or the last input) meaning the last input,
        # which alone allows extra levels; backbone_end_level is the exclusive end
        if end_level == -1 or end_level == self.num_ins - 1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError(f"EquivariantFPN: num_outs ({num_outs}) < number of used inputs "
                                 f"({self.num_ins - start_level})")
        else:
            self.backbone_end_level = end_level + 1
            if not end_level < self.num_ins:
                raise ValueError(f"EquivariantFPN: end_level ({end_level}) must be -1 or < number of inputs "
                                 f"({self.num_ins})")
            if num_outs != end_level - start_level + 1:
                raise ValueError(f"EquivariantFPN: with end_level ({end_level}) before the last input, num_outs "
                                 f"({num_outs}) must be end_level - start_level + 1 ({end_level - start_level + 1})"
                                 f": no extra levels")
        if not 0 <= start_level < self.backbone_end_level:  # mmdet would build no laterals and fail in forward
            raise ValueError(f"EquivariantFPN: need 0 <= start_level ({start_level}) <= end_level ({end_level}, "
                             f"last used input {self.backbone_end_level - 1})")
        used = self.backbone_end_level - start_level
        self.start_level, self.end_level, self.num_outs = start_level, end_level, num_outs
        self.add_extra_convs, self.relu_before_extra_convs = add_extra_convs, relu_before_extra_convs
        self.upsample_mode = upsample_mode
        self.require_equivariant_canvas = require_equivariant_canvas

        in_types = [regular_field_type(self.gspace, c, f"EquivariantFPN in_channels[{i}]")
                    for i, c in enumerate(in_channels)]
        self.out_type = regular_field_type(self.gspace, out_channels, "EquivariantFPN out_channels")
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(
            FieldConv(in_types[i], self.out_type, 1, bias=True, gain=1.0)
            for i in range(start_level, self.backbone_end_level))
        self.fpn_convs = nn.ModuleList(
            FieldConv(self.out_type, self.out_type, 3, bias=True, gain=1.0) for _ in range(used))
        extra = num_outs - used
        if add_extra_convs and extra > 0:
            for i in range(extra):
                on_input = i == 0 and add_extra_convs == "on_input"
                src = in_types[self.backbone_end_level - 1] if on_input else self.out_type
                self.fpn_convs.append(FieldConv(src, self.out_type, 3, stride=2, bias=True, gain=1.0))
        first_stride = in_strides[start_level]
        self.out_strides = [first_stride * 2 ** i for i in range(num_outs)]
        self.out_field_types = [self.out_type] * num_outs
        self.max_stride = self.out_strides[-1]

    def _upsample(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.upsample_mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return F.interpolate(x, size=size, mode="nearest")

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple:
        if len(inputs) != self.num_ins:
            raise ValueError(f"EquivariantFPN expects {self.num_ins} inputs, got {len(inputs)}")
        for i, (x, c) in enumerate(zip(inputs, self.in_channels)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"EquivariantFPN input {i} must have {c} channels, got shape {tuple(x.shape)}")
        if self.require_equivariant_canvas:
            first = inputs[self.start_level]
            canvas = [(n - 1) * self.out_strides[0] + 1 for n in first.shape[-2:]]
            check_equivariant_canvas(canvas, self.max_stride, "EquivariantFPN canvas")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._upsample(laterals[i], laterals[i - 1].shape[-2:])
        used = len(laterals)
        outs: List[torch.Tensor] = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                src = {"on_input": inputs[self.backbone_end_level - 1], "on_lateral": laterals[-1],
                       "on_output": outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[used](src))
                for i in range(used + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return tuple(outs)

    def export(self) -> nn.Module:
        """A plain-PyTorch copy with equal outputs (see :func:`rotplugin.nn.field_layers.export_module`)."""
        return export_module(self)
