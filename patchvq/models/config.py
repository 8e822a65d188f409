"""The one configuration object of a PVQAE run, with the defaults of the method (shared design,
method.md) and our own choices where it is silent. Saved as JSON with every run."""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from patchvq.layers.patch_vq import PatchVQConfig

MODELS = ("pvqae", "vqvae", "ae", "knn")
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "none")
IMAGE_SCORES = ("max", "top1")
PRECISIONS = ("auto", "float32", "bfloat16")


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


@dataclass
class Config:
    """Every setting of a run. Groups: what model, its shape, training, the Budget Prior, scoring, knn.

    Defaults: method.md's (strides 8/16/32, d = 64, K = 512, temperature 1.0 -> 0.3, beta 0.25,
    EMA 0.99, budget 1.0 -> 0.4 over the first half, prior threshold 0.1, Gaussian sigma 4 px,
    image score = max of the map); the rest are ours, listed in the README.
    """

    model: str = "pvqae"
    backbone: str = "efficientnet-lite0"
    backbone_precision: str = "auto"
    image_size: int = 256
    strides: tuple[int, ...] = (8, 16, 32)
    code_dim: int = 64
    decoder_width: int = 64
    decoder_blocks: int = 2
    bottleneck_stride: int = 16
    patch_vq: PatchVQConfig = field(default_factory=PatchVQConfig)

    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-5
    input_noise: float = 0.1
    feature_pool: int = 1
    seed: int = 0
    val_fraction: float = 0.1
    feature_cache_mb: int = 2048
    cache: bool = False
    checkpoint_every: int = 1

    prior_dim: int = 64
    prior_layers: int = 2
    prior_heads: int = 4
    prior_epochs: int = 20
    prior_threshold: float = 0.1
    prior_surprise_weight: float = 0.0

    score_sigma: float = 4.0
    score_weights: tuple[float, float] = (1.0, 0.0)
    image_score: str = "max"
    threshold_quantile: float = 0.99

    knn_strides: tuple[int, ...] = (8, 16)
    knn_pool: int = 3
    knn_bank: int = 40000
    knn_candidates: int = 400000

    def __post_init__(self):
        if isinstance(self.patch_vq, dict):
            self.patch_vq = _build(PatchVQConfig, self.patch_vq, "patch_vq.")
        self.strides = tuple(self.strides)
        self.knn_strides = tuple(self.knn_strides)
        self.score_weights = tuple(self.score_weights)
        self.validate()

    def validate(self) -> None:
        _choice("model", self.model, MODELS)
        _choice("backbone", self.backbone, BACKBONES)
        _choice("image_score", self.image_score, IMAGE_SCORES)
        _choice("backbone_precision", self.backbone_precision, PRECISIONS)
        for name in ("image_size", "code_dim", "decoder_width", "epochs", "batch_size",
                     "prior_dim", "prior_layers", "prior_heads", "knn_bank", "knn_candidates", "knn_pool",
                     "feature_cache_mb", "checkpoint_every", "bottleneck_stride", "feature_pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config: {name} must be a positive integer, got {value!r}")
        for name in ("decoder_blocks", "prior_epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"config: {name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "weight_decay", "input_noise", "score_sigma", "prior_surprise_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ConfigError(f"config: {name} must be a finite number >= 0, got {value!r}")
        for name in ("val_fraction", "threshold_quantile", "prior_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigError(f"config: {name} must be a number strictly between 0 and 1, got {value!r}")
        if not isinstance(self.cache, bool):
            raise ConfigError(f"config: cache must be true or false, got {self.cache!r}")
        weights = self.score_weights
        if len(weights) != 2 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                                        and w != float("inf") for w in weights) or not sum(weights) > 0:
            raise ConfigError(f"config: score_weights must be two finite weights >= 0, not both 0, got {weights!r}")
        if self.prior_dim % self.prior_heads:
            raise ConfigError(f"config: prior_dim {self.prior_dim} must be a multiple of prior_heads {self.prior_heads}")
        if self.feature_pool % 2 == 0:
            raise ConfigError(f"config: feature_pool must be odd (a centred neighbourhood), got {self.feature_pool}")
        _strides("strides", self.strides)
        _strides("knn_strides", self.knn_strides)
        if self.backbone != "none" and not set(self.strides) <= {4, 8, 16, 32}:
            raise ConfigError(f"config: a pretrained backbone gives strides 4, 8, 16 and 32, got {self.strides}")
        if self.backbone != "none" and not set(self.knn_strides) <= {4, 8, 16, 32}:
            raise ConfigError(f"config: knn_strides must be among 4, 8, 16, 32, got {self.knn_strides}")
        if self.bottleneck_stride not in self.strides:
            raise ConfigError(f"config: bottleneck_stride {self.bottleneck_stride} must be one of strides {self.strides}")
        if self.model == "knn" and self.backbone == "none":
            raise ConfigError("config: the knn model needs a pretrained backbone (backbone 'none' has no features)")
        coarsest = max(self.strides + self.knn_strides)
        if self.image_size % coarsest:
            raise ConfigError(f"config: image_size {self.image_size} must be a multiple of the coarsest stride {coarsest}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        if not isinstance(values, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(values).__name__}")
        return _build(cls, values, "")

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a JSON config file (only JSON: nothing in it is executed)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"config file {path} is not readable JSON: {err}") from None
        return cls.from_dict(values)

    @classmethod
    def load(cls, source: str | Path) -> Config:
        """A config from a JSON file, or from a shipped preset (`patchvq.models.presets`) given by name
        when no file has that path."""
        from patchvq.models import presets

        path = Path(source)
        if not path.exists():
            preset = presets.preset_file(str(source))
            if preset is None:
                raise ConfigError(f"config file {path} does not exist, and no shipped preset has that name "
                                  f"(presets: {', '.join(presets.names())})")
            path = preset
        return cls.from_file(path)

    def replace(self, **changes) -> Config:
        unknown = [k for k in changes if k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise ConfigError(f"config: unknown setting(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @property
    def pixel_space(self) -> bool:
        return self.backbone == "none"


def _build(cls, values: dict, prefix: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"config: unknown setting(s) {', '.join(prefix + u for u in unknown)}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config: {err}") from None


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ConfigError(f"config: {name} must be one of {', '.join(options)}, got {value!r}")


def _strides(name: str, strides: tuple) -> None:
    ok = bool(strides) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in strides)
    if ok:
        ok = all(b > a and b % strides[0] == 0 and ((b // strides[0]) & (b // strides[0] - 1)) == 0
                 for a, b in itertools.pairwise(strides))
    if not ok:
        raise ConfigError(f"config: {name} must be ascending power-of-two multiples of the first, got {strides!r}")
