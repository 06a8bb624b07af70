"""Registered mmengine hooks."""
from .tta_hook import FeatureRotationTTAHook

__all__ = ["FeatureRotationTTAHook"]
