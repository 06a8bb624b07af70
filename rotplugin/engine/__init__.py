"""Registered mmengine hooks."""
from .cpu_distributed import CPUDistributedDataParallel, init_cpu_distributed
from .tta_hook import FeatureRotationTTAHook

__all__ = ["FeatureRotationTTAHook", "CPUDistributedDataParallel", "init_cpu_distributed"]
