"""Batch padding to an equivariant canvas (see :mod:`rotplugin.canvas`)."""
from __future__ import annotations

import torch.nn.functional as F
from mmdet.models.data_preprocessors import DetDataPreprocessor

from rotplugin.canvas import equivariant_canvas_shape
from rotplugin.registry import MODELS


@MODELS.register_module()
class EquivariantDetDataPreprocessor(DetDataPreprocessor):
    """mmdet's ``DetDataPreprocessor`` that pads every batch to an *equivariant canvas*.

    The canvas is the smallest ``(H, W)`` not smaller than the batch's largest image with ``H ≡ W ≡ 1 (mod
    max_stride)`` (1025 for 1024 patches), padded at the bottom and right like mmdet. ``max_stride`` must be the
    largest stride in the model (128 with P7, 64 with P6, 32 for the backbone alone) so that every strided layer
    samples a grid symmetric about the canvas centre. ``batch_input_shape`` and ``pad_shape`` of the data samples
    record the canvas.
    """

    def __init__(self, *args, max_stride: int = 128, pad_size_divisor: int = 1, **kwargs):
        if pad_size_divisor != 1:
            raise ValueError("EquivariantDetDataPreprocessor pads to an equivariant canvas (size ≡ 1 mod "
                             f"max_stride); pad_size_divisor must stay 1, got {pad_size_divisor}")
        if not isinstance(max_stride, int) or max_stride < 1:
            raise ValueError(f"EquivariantDetDataPreprocessor: max_stride must be a positive integer, got "
                             f"{max_stride!r}")
        super().__init__(*args, pad_size_divisor=1, **kwargs)
        self.max_stride = max_stride

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data=data, training=training)
        inputs = data["inputs"]
        h, w = inputs.shape[-2:]
        canvas = equivariant_canvas_shape((h, w), self.max_stride)
        if canvas != (h, w):
            inputs = F.pad(inputs, (0, canvas[1] - w, 0, canvas[0] - h), value=float(self.pad_value))
            data["inputs"] = inputs
        if data.get("data_samples") is not None:
            for sample in data["data_samples"]:
                sample.set_metainfo({"batch_input_shape": canvas, "pad_shape": canvas})
        return data
