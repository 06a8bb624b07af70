"""Pure-PyTorch operators (no mm* imports here)."""
from .riroi_align import RiRoIAlignRotated, riroi_align_rotated

__all__ = ["RiRoIAlignRotated", "riroi_align_rotated"]
