"""Models: the frozen feature source, PVQAE and its baselines, the Budget Prior, one Config."""

from patchvq.models.config import BACKBONES, MODELS, Config, ConfigError
from patchvq.models.detector import Detector, Scored
from patchvq.models.efficientnet_lite import BackboneMissing

__all__ = ["BACKBONES", "MODELS", "BackboneMissing", "Config", "ConfigError", "Detector", "Scored"]
