"""The sub-commands of `patchvq`; each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from patchvq.cli import output

CONFIG_OPTIONS = {"model": "model", "backbone": "backbone", "epochs": "epochs", "image_size": "image_size",
                  "seed": "seed", "batch_size": "batch_size", "cache": "cache"}


def describe(err: BaseException) -> str:
    """One line for an error: its message, with the file for OS errors."""
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename}: no such file or folder"
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    text = " ".join(str(err).split()) or type(err).__name__
    return text.removeprefix("patchvq: ")


def _bar(quiet: bool):
    def make(**kwargs):
        return tqdm(disable=quiet, dynamic_ncols=True, leave=False, file=sys.stderr, **kwargs)

    return make


def _config(args):
    from patchvq.models.config import Config

    base = Config.load(args.config) if args.config else None
    changes = {field: getattr(args, opt) for opt, field in CONFIG_OPTIONS.items() if getattr(args, opt) is not None}
    if base is None and not changes:
        return None
    return (base or Config()).replace(**changes)


def train(args) -> int:
    from patchvq.engine import parallel

    if not parallel.launched():
        return _train(args, args.device)
    device = parallel.start(args.device)
    try:
        return _train(args, device)
    finally:
        parallel.stop()


def _train(args, device) -> int:
    from patchvq.data import open_dataset
    from patchvq.engine import fit, parallel
    from patchvq.models.config import Config

    config = _config(args)
    if config is None and not args.resume:
        config = Config()
    settings = config if config is not None else _resumed_config(args.out)
    dataset = open_dataset(args.data, args.format, "train", image_size=settings.image_size, cache=settings.cache)
    start = time.perf_counter()
    run = fit(dataset, config, args.out, resume=args.resume, device=device, progress=not args.quiet)
    minutes = (time.perf_counter() - start) / 60
    if not parallel.current().main:
        return 0
    processes = run.info["processes"]
    on = f" on {processes} processes" if processes > 1 else ""
    print(f"trained {run.config.model} ({run.config.backbone}) on {run.info['fit_images']} images{on} in "
          f"{minutes:.1f} min; threshold {run.threshold:.4g} from {run.info['val_images']} held-out good images")
    print(f"run saved in {run.directory} (model {run.info['stored_mb']:.2f} MB)")
    return 0


def _resumed_config(out: str):
    from patchvq.engine.train import resumable_state
    from patchvq.models.config import Config

    return Config.from_dict(resumable_state(out)["config"])


def test(args) -> int:
    from patchvq.data import open_dataset
    from patchvq.engine import Run, evaluate
    from patchvq.engine.checkpoint import write_json

    run = Run.load(args.run, args.device)
    report = Path(args.report) if args.report else run.directory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = open_dataset(args.data, args.format, "test", image_size=run.config.image_size,
                               channels=run.detector.image_channels)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if not dataset.has_masks:
        print("note: the dataset has no defect masks; pixel metrics will be n/a", file=sys.stderr)
    writer = None
    if args.report:
        from patchvq.report import ReportWriter

        writer = ReportWriter(report, run, title=f"{run.config.model} ({run.config.backbone}) on {args.data}")
    result = evaluate(run, dataset, batch_size=args.batch_size, progress=_bar(args.quiet),
                      on_batch=None if writer is None else writer.add)
    report.mkdir(parents=True, exist_ok=True)
    output.write_csv(report / "scores.csv", result.rows, ["path", "label", "defect", "score", "verdict"])
    metrics = dict(result.metrics, model=run.config.model, backbone=run.config.backbone, data=str(args.data))
    write_json(report / "metrics.json", metrics)
    print(f"{run.config.model} ({run.config.backbone}) on {args.data}:")
    print(output.metrics_table(result.metrics))
    print(f"metrics in {report / 'metrics.json'}, per-image scores in {report / 'scores.csv'}")
    if writer is not None:
        print(f"report in {writer.finish(result)}")
    return 0


def _collect_inputs(inputs: list[str]) -> list[Path]:
    from patchvq.data.images import is_image_file, list_images

    paths = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ValueError(f"{p}: the folder holds no image files")
            paths += found
        elif p.exists():
            if not is_image_file(p):
                raise ValueError(f"{p}: not an image file (by its extension)")
            paths.append(p)
        else:
            raise FileNotFoundError(2, "no such file or folder", str(p))
    return paths


def predict(args) -> int:
    import numpy as np

    from patchvq.data.images import read_image, resize_image
    from patchvq.engine import Run
    from patchvq.engine.evaluate import score_images

    if args.onnx:
        run = _OnnxRun(args.onnx)
    else:
        run = Run.load(args.run, args.device)
    paths = _collect_inputs(args.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (run.config.image_size, run.config.image_size)
    rows, failures = [], []
    for start in range(0, len(paths), args.batch_size):
        batch, kept = [], []
        for i, path in enumerate(paths[start : start + args.batch_size], start):
            try:
                arr = resize_image(read_image(path, run.detector.image_channels), size)
            except Exception as err:  # noqa: BLE001 - any undecodable file is reported and skipped
                failures.append((path, describe(err)))
                continue
            batch.append(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))))
            kept.append((i, path))
        if not batch:
            continue
        images = torch.stack(batch)
        scored = run.score(images) if args.onnx else score_images(run.detector, images)
        for (i, path), image, heat, s in zip(kept, images, scored.maps.cpu(), scored.scores.tolist()):
            name = output.safe_name(i, path) + ".png"
            output.write_png(out / name, output.overlay(image, heat, 0.0, max(run.threshold, 1e-12) * 1.5))
            rows.append({"path": str(path), "score": s, "verdict": "defective" if s > run.threshold else "good",
                         "overlay": name})
    output.write_csv(out / "predictions.csv", rows, ["path", "score", "verdict", "overlay"])
    bad = sum(r["verdict"] == "defective" for r in rows)
    print(f"scored {len(rows)} image(s): {bad} defective, {len(rows) - bad} good (threshold {run.threshold:.4g}); "
          f"results in {out / 'predictions.csv'}")
    for path, why in failures:
        print(f"could not score {path}: {why}", file=sys.stderr)
    return 1 if failures else 0


class _OnnxRun:
    """What predict needs of a run, from an exported ONNX model (onnxruntime only)."""

    def __init__(self, file: str):
        from types import SimpleNamespace

        from patchvq.export import OnnxScorer

        self.scorer = OnnxScorer.load(file)
        self.threshold = self.scorer.threshold
        self.config = SimpleNamespace(image_size=self.scorer.image_size)
        self.detector = SimpleNamespace(image_channels=self.scorer.image_channels)

    def score(self, images: torch.Tensor):
        from types import SimpleNamespace

        scores, maps = self.scorer(images.numpy())
        return SimpleNamespace(scores=torch.from_numpy(scores), maps=torch.from_numpy(maps))


def export(args) -> int:
    from patchvq.engine import Run
    from patchvq.export import export_onnx

    run = Run.load(args.run, "cpu")
    images = None
    if args.images:
        images = _load_images(_collect_inputs([args.images])[:8], run)
    check = export_onnx(run, args.onnx, images=images, tolerance=args.tolerance)
    print(f"exported {run.config.model} ({run.config.backbone}) to {args.onnx}: {len(check.ops)} standard ONNX "
          f"operator types")
    print(f"checked on {check.images} image(s): maps within {check.map_error:.2g} of their range "
          f"(tolerance {check.tolerance:g}), scores within {check.score_error:.2g}")
    print(f"ms per image on this CPU: onnxruntime {check.onnx_ms:.1f}, PyTorch {check.torch_ms:.1f}")
    return 0


def _load_images(paths, run) -> torch.Tensor:
    import numpy as np

    from patchvq.data.images import read_image, resize_image

    size = (run.config.image_size, run.config.image_size)
    arrays = [resize_image(read_image(p, run.detector.image_channels), size) for p in paths]
    return torch.stack([torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in arrays]).float()


def demo(args) -> int:
    from patchvq.cli.demo import run_demo

    return run_demo(Path(args.out), quiet=args.quiet)


def info(args) -> int:
    from patchvq import info as info_module

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = info_module.format_info(info_module.collect(build=not args.no_build))
    print(text)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0
