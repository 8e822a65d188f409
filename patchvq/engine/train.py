"""fit: train a detector on good images, checkpointing as it goes, and fit its threshold."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from patchvq.data.split import holdout_indices
from patchvq.engine.checkpoint import CheckpointError, read_tensors, write_tensors
from patchvq.engine.evaluate import error_terms_of, score_dataset
from patchvq.engine.run import MODEL_FILE, RUN_FILE, Run, default_device
from patchvq.engine.store import TargetStore
from patchvq.models.config import Config, ConfigError
from patchvq.models.detector import Detector

CHECKPOINT_FILE = "checkpoint.safetensors"
PHASES = ("autoencoder", "prior", "done")


class RunExists(FileExistsError):
    """The output folder already holds a run or a checkpoint, and resuming was not asked for."""


def fit(dataset, config: Config | None, out: str | Path, *, resume: bool = False,
        device: torch.device | str | None = None, progress: bool = True) -> Run:
    """Train `config.model` on the good images of `dataset` (a "train" split) into the folder `out`.

    A tenth (config.val_fraction) of the images is held out, by file name: their error maps
    calibrate the per-level standardisation of the anomaly map, and their scores fit the decision
    threshold (the config.threshold_quantile quantile). Seeded by config.seed:
    the same data and config give the same weights. A checkpoint is written atomically after
    every `checkpoint_every` epochs; `resume=True` continues from it (with the config saved in
    it) and ends with the weights an uninterrupted run would have. Returns the saved Run.
    """
    out = Path(out)
    device = torch.device(device) if device is not None else default_device()
    state, tensors = _start(out, config, resume)
    config = Config.from_dict(state["config"])
    bar = _progress_factory(progress)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    fit_data, val_data = split_train_with(dataset, config.val_fraction)
    detector = Detector(config, dataset.channels).to(device)
    store = TargetStore.build(detector, fit_data, batch_size=config.batch_size, limit_mb=config.feature_cache_mb,
                              folder=out / "feature-cache", device=device, progress=bar)
    optimizer = _optimizer(detector, config, state["phase"])
    if tensors is not None:
        # After the feature pass, whose data loader draws from the global generator.
        _restore(detector, optimizer, generator, tensors)
    try:
        if config.model == "knn":
            _build_bank(detector, store, config, generator)
            state["phase"] = "done"
        else:
            if tensors is None and detector.norm is not None:
                detector.norm.fit(*store.channel_stats())
            if state["phase"] == "autoencoder":
                _train_autoencoder(detector, optimizer, store, config, state, generator, out, started, bar)
                state["phase"], state["epoch"] = "prior", 0
                optimizer = _optimizer(detector, config, "prior")
            if state["phase"] == "prior":
                if config.model == "pvqae" and config.prior_epochs > 0:
                    _train_prior(detector, optimizer, store, config, state, generator, out, started, bar)
                state["phase"] = "done"
    finally:
        store.close()

    detector.eval()
    if detector.trainable:
        detector.calibrate(error_terms_of(detector, val_data, config.batch_size, progress=bar, desc="calibration"))
    val_scores = score_dataset(detector, val_data, config.batch_size, progress=bar, desc="threshold")
    threshold = float(torch.quantile(val_scores.double(), config.threshold_quantile))
    info = dict(state.get("info", {}))
    info.update({
        "train_seconds": round(state.get("elapsed", 0.0) + time.perf_counter() - started, 2),
        "fit_images": len(fit_data),
        "val_images": len(val_data),
        "val_score_max": float(val_scores.max()),
        "stored_mb": round(detector.stored_bytes() / 2**20, 3),
        "device": str(device),
    })
    run = Run(out, config, detector, threshold, info)
    run.save()
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return run


def split_train_with(dataset, val_fraction: float) -> tuple:
    keys = [Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths]
    try:
        fit_idx, val_idx = holdout_indices(keys, val_fraction)
    except ValueError as err:
        raise ValueError(f"{dataset.root}: {err}") from None
    return dataset.subset(fit_idx, "fit"), dataset.subset(val_idx, "val")


def _start(out: Path, config: Config | None, resume: bool) -> tuple[dict, dict | None]:
    """The training state to start from: fresh, or the checkpoint's when resuming."""
    ckpt = out / CHECKPOINT_FILE
    if not resume:
        if config is None:
            raise ConfigError("fit: a config is needed to start a run")
        for name in (RUN_FILE, MODEL_FILE, CHECKPOINT_FILE):
            if (out / name).exists():
                raise RunExists(f"{out} already holds a run ({name}); resume it or choose another output folder")
        out.mkdir(parents=True, exist_ok=True)
        return {"config": config.to_dict(), "phase": "autoencoder", "epoch": 0, "elapsed": 0.0}, None
    meta = resumable_state(out)
    tensors = read_tensors(ckpt, "checkpoint")
    if config is not None and config.to_dict() != meta["config"]:
        saved = meta["config"]
        changed = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
        raise ConfigError(f"resume: the settings differ from the checkpoint's ({', '.join(changed)}); "
                          "resume without changing them")
    return meta, tensors


def resumable_state(out: str | Path) -> dict:
    """The training state saved in the checkpoint of `out` (its "config" among it), to resume from."""
    out = Path(out)
    if (out / RUN_FILE).exists() and not (out / CHECKPOINT_FILE).exists():
        raise RunExists(f"{out} holds a finished run; there is nothing to resume")
    if not (out / CHECKPOINT_FILE).exists():
        raise CheckpointError(f"{out} holds no checkpoint ({CHECKPOINT_FILE}) to resume from")
    return _checkpoint_meta(out / CHECKPOINT_FILE)


def _checkpoint_meta(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
        if meta.get("phase") not in PHASES or not isinstance(meta.get("config"), dict):
            raise ValueError("no training state")
        return meta
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (KeyError, ValueError, OSError, json.JSONDecodeError, SafetensorError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt ({err})") from None


def _optimizer(detector: Detector, config: Config, phase: str) -> torch.optim.Optimizer | None:
    if not detector.trainable:
        return None
    module = detector.prior if phase == "prior" and config.model == "pvqae" else detector.core
    return torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _save_checkpoint(out, detector, optimizer, generator, state, started) -> None:
    tensors = {f"model.{k}": v for k, v in detector.trainable_state().items()}
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, values in sd["state"].items():
            for name, value in values.items():
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
        groups = sd["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = dict(state, optimizer_groups=groups, elapsed=state.get("elapsed", 0.0) + time.perf_counter() - started)
    write_tensors(out / CHECKPOINT_FILE, tensors, metadata={"state": json.dumps(meta)})


def _restore(detector, optimizer, generator, tensors: dict) -> None:
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        detector.load_trainable_state(model)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint does not fit its model: {err}") from None
    if optimizer is not None:
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        sd = optimizer.state_dict()
        sd["state"] = state
        optimizer.load_state_dict(sd)
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _train_autoencoder(detector, optimizer, store, config, state, generator, out, started, bar) -> None:
    n = len(store)
    per_epoch = max(1, math.ceil(n / config.batch_size))
    total = config.epochs * per_epoch
    device = next(detector.buffers()).device
    detector.core.train()
    with bar(total=total, initial=state["epoch"] * per_epoch, desc=config.model, unit="step") as pbar:
        for epoch in range(state["epoch"], config.epochs):
            order = torch.randperm(n, generator=generator)
            for b in range(per_epoch):
                step = epoch * per_epoch + b
                detector.core.set_progress(step / total)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                targets, richness = store.batch(order[b * config.batch_size : (b + 1) * config.batch_size], device)
                loss, parts = detector.training_loss(targets, richness, config.input_noise, generator)
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"training diverged at step {step} (loss {float(loss)}); lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if config.model == "pvqae":
                    parts["perplexity"] = detector.core.quantizer.usage()["perplexity"]
                pbar.set_postfix({k: f"{v:.3g}" for k, v in parts.items()}, refresh=False)
                pbar.update(1)
            state["epoch"] = epoch + 1
            state.setdefault("info", {})["last_loss"] = parts
            if state["epoch"] % config.checkpoint_every == 0 or state["epoch"] == config.epochs:
                _save_checkpoint(out, detector, optimizer, generator, state, started)
    detector.core.eval()


@torch.no_grad()
def _routing(detector, store, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse codes and router level maps [N, Hc, Wc] of the stored images, in eval mode."""
    device = next(detector.buffers()).device
    detector.core.eval()
    codes, levels = [], []
    for start in range(0, len(store), config.batch_size):
        targets, _ = store.batch(torch.arange(start, min(start + config.batch_size, len(store))), device)
        rec = detector.core(detector.inputs(targets))
        codes.append(rec.coarse_codes.cpu())
        levels.append(rec.level_map.cpu())
    return torch.cat(codes), torch.cat(levels)


def _train_prior(detector, optimizer, store, config, state, generator, out, started, bar) -> None:
    device = next(detector.buffers()).device
    codes, levels = _routing(detector, store, config)
    n = codes.shape[0]
    batch = max(config.batch_size, 32)
    per_epoch = max(1, math.ceil(n / batch))
    detector.prior.train()
    with bar(total=config.prior_epochs * per_epoch, initial=state["epoch"] * per_epoch, desc="budget prior",
             unit="step") as pbar:
        for epoch in range(state["epoch"], config.prior_epochs):
            order = torch.randperm(n, generator=generator)
            for b in range(per_epoch):
                idx = order[b * batch : (b + 1) * batch]
                loss = detector.prior.loss(codes[idx].to(device), levels[idx].to(device), generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                pbar.set_postfix({"ce": f"{float(loss.detach()):.3g}"}, refresh=False)
                pbar.update(1)
            state["epoch"] = epoch + 1
            if state["epoch"] % config.checkpoint_every == 0 or state["epoch"] == config.prior_epochs:
                detector.prior_ready.fill_(True)
                _save_checkpoint(out, detector, optimizer, generator, state, started)
    detector.prior.eval()
    detector.prior_ready.fill_(True)
    share = torch.bincount(levels.flatten(), minlength=len(config.strides)).float()
    state.setdefault("info", {})["train_level_share"] = (share / share.sum()).tolist()


def _build_bank(detector, store, config, generator) -> None:
    from patchvq.models.knn import embed

    rows = []
    for start in range(0, len(store), config.batch_size):
        targets, _ = store.batch(torch.arange(start, min(start + config.batch_size, len(store))), torch.device("cpu"))
        e = embed(targets, config.knn_pool)
        rows.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
    rows = torch.cat(rows)
    if rows.shape[0] > config.knn_candidates:
        rows = rows[torch.randperm(rows.shape[0], generator=generator)[: config.knn_candidates]]
    device = next(detector.buffers()).device
    detector.core.build(rows.to(device), generator)


def _progress_factory(enabled: bool):
    def make(**kwargs):
        return tqdm(disable=not enabled, dynamic_ncols=True, leave=False, **kwargs)

    return make
