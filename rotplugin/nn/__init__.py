"""Equivariant layers on plain tensors (escnn + torch; no mm* imports)."""
from .field_layers import (FieldBatchNorm, FieldConv, export_module, make_gspace, regular_field_type,
                           trivial_field_type)

__all__ = ["FieldConv", "FieldBatchNorm", "export_module", "make_gspace", "regular_field_type",
           "trivial_field_type"]
