"""Embedded MoE checkpoints built locally from a seed (no model hub needed)."""

from .build import build, model_dir
from .presets import DEFAULT_MODEL, PRESETS, get_preset

__all__ = ["build", "model_dir", "DEFAULT_MODEL", "PRESETS", "get_preset"]
