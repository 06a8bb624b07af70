"""Registered mmengine hooks, model wrappers and metrics."""
from .atomic_dump import AtomicDumpResults
from .progress import ProgressBarHook
from .cpu_distributed import CPUDistributedDataParallel, end_torchrun_worker, finish_distributed, init_cpu_distributed
from .rank_check import RankConsistencyHook, state_digests
from .feature_views_hook import FeatureRotationViewsHook
from .float32_box_coding_hook import Float32BoxCodingHook
from .rotation_tta_hook import RotationTTAHook

__all__ = ["RotationTTAHook", "FeatureRotationViewsHook", "Float32BoxCodingHook", "CPUDistributedDataParallel",
           "finish_distributed", "end_torchrun_worker", "init_cpu_distributed", "RankConsistencyHook", "state_digests",
           "AtomicDumpResults", "ProgressBarHook"]
