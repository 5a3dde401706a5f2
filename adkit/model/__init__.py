"""The AD transformer, its rolling key/value cache and hook points, checkpoints, training and evaluation.

>>> from adkit.model import ADTransformer, ModelConfig, load
>>> model = load("runs/quick")  # safetensors + model.json, never unpickled
"""

from adkit.config import ModelConfig
from adkit.model.cache import KVCache
from adkit.model.checkpoint import CheckpointError, load, save
from adkit.model.hooks import ActivationCache, HookPoint
from adkit.model.transformer import ADTransformer, window_mask

__all__ = ["ADTransformer", "ActivationCache", "CheckpointError", "HookPoint", "KVCache", "ModelConfig", "load",
           "save", "window_mask"]
