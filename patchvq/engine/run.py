"""A run: a trained detector, its config, its decision threshold and what training recorded,
stored in a folder as `run.json` (config and state, JSON) and `model.safetensors` (tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from patchvq.engine.checkpoint import CheckpointError, read_json, read_tensors, write_json, write_tensors
from patchvq.models.config import Config, ConfigError
from patchvq.models.detector import Detector

RUN_FILE = "run.json"
MODEL_FILE = "model.safetensors"
FORMAT = "patchvq-run/1"


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Run:
    """A trained detector. `threshold`: image scores above it are called defective (fitted on
    held-out good training images only). `info`: what training recorded (times, sizes, counts)."""

    directory: Path
    config: Config
    detector: Detector
    threshold: float
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(iter(self.detector.buffers())).device

    def save(self) -> None:
        """Write model.safetensors, then run.json (each atomically; run.json marks the run complete)."""
        write_tensors(self.directory / MODEL_FILE, self.detector.trainable_state())
        write_json(self.directory / RUN_FILE, {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "image_channels": self.detector.image_channels,
            "threshold": self.threshold,
            "info": self.info,
        })

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str | None = None) -> Run:
        """Load a complete run folder; CheckpointError names what is missing or corrupt."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"run folder {directory} does not exist")
        meta = read_json(directory / RUN_FILE, "run file")
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"run file {directory / RUN_FILE} is not a {FORMAT} file (format {meta.get('format')!r})")
        try:
            config = Config.from_dict(meta["config"])
            channels = int(meta["image_channels"])
            threshold = float(meta["threshold"])
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise CheckpointError(f"run file {directory / RUN_FILE} is corrupt: {err}") from None
        detector = Detector(config, channels)
        try:
            detector.load_trainable_state(read_tensors(directory / MODEL_FILE, "model file"))
        except (ValueError, RuntimeError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"model file {directory / MODEL_FILE} does not fit its run.json: {err}") from None
        detector.to(device or default_device()).eval()
        return cls(directory, config, detector, threshold, dict(meta.get("info", {})))
