"""`export_onnx(run, file)`: one image [1, C, S, S] in [0, 1] -> (score [1], map [1, S, S]).

The graph has static shapes (one image per call; `OnnxScorer` feeds a batch one by one).

The graph is traced from the run's detector with the custom ops routed to standard operators
(`standard_ops`); for pvqae the Budget Prior's allocation is applied unconditionally (the
re-decoding PyTorch skips when the prior changes nothing gives the same result). The run's
threshold, image size and channels travel in the model's metadata, so `OnnxScorer` needs
nothing but the file and onnxruntime. The export then checks itself: onnxruntime's maps must
be within `tolerance` x (the PyTorch map's range) of PyTorch's on the check images.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchvq.export.standard_ops import standard_operators

TOLERANCE = 1e-4
OPSET = 17


class ExportError(ValueError):
    """The export failed or did not match PyTorch."""


class ScoringModel(nn.Module):
    """The detector's scoring path as one module: images -> (scores, maps)."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor):
        d = self.detector
        out = d.score_targets(d.targets(images), (d.config.image_size,) * 2)
        return out.scores, out.maps


@dataclass
class ExportCheck:
    """What the self-check measured: the largest map difference relative to the map's range, the
    largest score difference relative to the score, and ms per image of each runtime."""

    images: int
    map_error: float
    score_error: float
    tolerance: float
    onnx_ms: float
    torch_ms: float
    ops: list[str]


def _check_images(run, count: int) -> torch.Tensor:
    """Deterministic smooth random images at the run's size (when no real ones are given)."""
    g = torch.Generator().manual_seed(0)
    s, c = run.config.image_size, run.detector.image_channels
    low = torch.rand(count, c, max(2, s // 8), max(2, s // 8), generator=g)
    return torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)


def export_onnx(run, file: str | Path, *, images: torch.Tensor | None = None, tolerance: float = TOLERANCE,
                repeats: int = 3) -> ExportCheck:
    """Write the scoring model of `run` to `file` and check it with onnxruntime (ExportError if
    the maps differ beyond `tolerance` relative to their range). The file is written only
    when the check passes. The backbone runs in float32 in the graph and in the check (a run
    that scores in bfloat16 on this machine differs from the export by that rounding)."""
    detector = run.detector.cpu().eval()
    precision = getattr(detector.source, "precision", "float32")
    detector.source.precision = "float32"  # ONNX runtimes run the backbone in float32; so does the check
    try:
        return _export(run, detector, Path(file), images, tolerance, repeats)
    finally:
        detector.source.precision = precision


def _export(run, detector, file: Path, images, tolerance: float, repeats: int) -> ExportCheck:
    import onnx

    from patchvq.engine.checkpoint import atomic_write
    from patchvq.engine.evaluate import score_images

    model = ScoringModel(detector).eval()
    if images is None:
        images = _check_images(run, 4)
    images = images.float().cpu()
    example = images[:1]  # one image per call: every shape in the graph is static
    tmp = file.with_name(f".{file.name}.export")
    import warnings

    with torch.no_grad(), standard_operators(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["scores", "maps"],
                              opset_version=OPSET, dynamo=False)
        except Exception as err:  # noqa: BLE001 - any exporter failure is one error naming the model
            tmp.unlink(missing_ok=True)
            raise ExportError(f"could not export {run.config.model} ({run.config.backbone}) to ONNX: {err}") from None
    try:
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph)
        ops = sorted({n.op_type for n in graph.graph.node})
        custom = sorted({n.domain for n in graph.graph.node if n.domain not in ("", "ai.onnx")})
        if custom:
            raise ExportError(f"the exported graph uses non-standard operator domains {custom}")
        meta = {"threshold": float(run.threshold), "image_size": int(run.config.image_size),
                "image_channels": int(detector.image_channels), "model": run.config.model,
                "backbone": run.config.backbone, "format": "patchvq-onnx/1"}
        graph.metadata_props.clear()
        for k, v in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = k, json.dumps(v)
        data = graph.SerializeToString()
    finally:
        tmp.unlink(missing_ok=True)

    scorer = OnnxScorer.from_bytes(data)
    with torch.no_grad():
        ref = score_images(detector, images)
        start = time.perf_counter()
        for _ in range(repeats):
            score_images(detector, images)
        torch_ms = 1000 * (time.perf_counter() - start) / (repeats * len(images))
    scores, maps = scorer(images.numpy())
    start = time.perf_counter()
    for _ in range(repeats):
        scorer(images.numpy())
    onnx_ms = 1000 * (time.perf_counter() - start) / (repeats * len(images))
    ref_maps, ref_scores = ref.maps.numpy(), ref.scores.numpy()
    span = (ref_maps.reshape(len(images), -1).max(1) - ref_maps.reshape(len(images), -1).min(1)).clip(1e-12)
    map_error = float((np.abs(maps - ref_maps).reshape(len(images), -1).max(1) / span).max())
    score_error = float((np.abs(scores - ref_scores) / np.abs(ref_scores).clip(1e-12)).max())
    check = ExportCheck(len(images), map_error, score_error, tolerance, onnx_ms, torch_ms, ops)
    if not map_error <= tolerance:
        raise ExportError(f"the ONNX maps differ from PyTorch's by {map_error:.3g} of the map's range "
                          f"(tolerance {tolerance:g}); the file was not written")
    atomic_write(file, lambda f: f.write(data))
    return check


class OnnxScorer:
    """Scores images with onnxruntime alone: `scorer(images float32 [B, C, S, S])` -> (scores, maps)."""

    def __init__(self, session, meta: dict):
        self.session = session
        self.meta = meta
        self.threshold = float(meta["threshold"])
        self.image_size = int(meta["image_size"])
        self.image_channels = int(meta["image_channels"])

    @classmethod
    def from_bytes(cls, data: bytes) -> OnnxScorer:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        raw = session.get_modelmeta().custom_metadata_map
        try:
            meta = {k: json.loads(v) for k, v in raw.items()}
            if meta.get("format") != "patchvq-onnx/1":
                raise KeyError("format")
        except (KeyError, ValueError) as err:
            raise ExportError(f"not a patchvq ONNX export (metadata {err} missing or invalid)") from None
        return cls(session, meta)

    @classmethod
    def load(cls, file: str | Path) -> OnnxScorer:
        path = Path(file)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(2, "no such file or folder", str(path)) from None
        try:
            return cls.from_bytes(data)
        except ExportError as err:
            raise ExportError(f"{path}: {err}") from None
        except Exception as err:  # noqa: BLE001 - onnxruntime's parse errors name no file
            raise ExportError(f"{path}: not a readable ONNX model ({' '.join(str(err).split())[:200]})") from None

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, np.float32)
        outs = [self.session.run(["scores", "maps"], {"images": images[i : i + 1]}) for i in range(len(images))]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
