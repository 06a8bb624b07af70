"""FeatureRotationNeck: an equivariant neck that knows its fields and strides and can rotate its pyramid."""
from __future__ import annotations

from typing import Optional, Sequence

from mmengine.model import BaseModule

from rotplugin.fields import rotate_pyramid
from rotplugin.registry import MODELS


@MODELS.register_module()
class FeatureRotationNeck(BaseModule):
    """Wraps an equivariant neck (default :class:`EquivariantFPN`) and exposes the passive rotation of its output.

    ``forward`` returns the inner neck's plain tensors, rotated by ``angle`` degrees about the canvas centre when
    ``angle`` is not 0 (with ``angle=0`` it returns them untouched: no cost). ``rotate(feats, angle, canvas_size)``
    rotates a whole pyramid; ``out_field_types`` / ``out_strides`` describe every level (as the inner neck's).

    Args:
        neck: config (or module) of the inner equivariant neck.
        angle: rotation applied in ``forward`` (degrees; see :mod:`rotplugin.canvas` for the sign).
        fibre_interp: rule for angles between orientation steps (:func:`rotplugin.fields.fibre_operator`).
    """

    def __init__(self, neck, angle: float = 0.0, fibre_interp: Optional[str] = None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.neck = MODELS.build(neck) if isinstance(neck, dict) else neck
        for attr in ("out_field_types", "out_strides"):
            if not hasattr(self.neck, attr):
                raise ValueError(f"FeatureRotationNeck needs an equivariant neck declaring {attr}; "
                                 f"{type(self.neck).__name__} does not")
        self.angle = float(angle)
        self.fibre_interp = fibre_interp

    @property
    def out_field_types(self):
        return self.neck.out_field_types

    @property
    def out_strides(self):
        return self.neck.out_strides

    @property
    def max_stride(self):
        return max(self.out_strides)

    def rotate(self, feats: Sequence, angle: float, canvas_size: Optional[Sequence[int]] = None) -> tuple:
        """Passive rotation of every level; ``canvas_size`` is the input canvas ``(H, W)`` (default: the canvas
        whose first level's middle pixel is the centre, i.e. an equivariant canvas)."""
        if canvas_size is None:
            h, w = feats[0].shape[-2:]
            s = self.out_strides[0]
            canvas_size = ((h - 1) * s + 1, (w - 1) * s + 1)
        return tuple(rotate_pyramid(feats, self.out_field_types, self.out_strides, angle, canvas_size=canvas_size,
                                    fibre_interp=self.fibre_interp))

    def forward(self, inputs):
        return self.rotate(self.neck(inputs), self.angle)

    def export(self):
        return self.neck.export()
