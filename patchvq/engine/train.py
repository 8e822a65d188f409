"""fit: train a detector on good images, checkpointing as it goes, and fit its threshold."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from patchvq.data.split import holdout_indices
from patchvq.engine import parallel
from patchvq.engine.checkpoint import CheckpointError, read_tensors, write_tensors
from patchvq.engine.evaluate import error_terms_of, score_dataset
from patchvq.engine.run import MODEL_FILE, RUN_FILE, Run, default_device
from patchvq.engine.store import TargetStore
from patchvq.layers import batch_shard
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

    Data-parallel (torch.distributed initialised with several processes, e.g. under torchrun):
    config.batch_size is the global batch. Every process walks the same shuffled order and
    takes its slice of each global batch (parallel.World.slice); the autoencoder trains under
    DistributedDataParallel with the codebook's statistics summed over processes, and each
    process's loss is weighted by its share of the batch, so the averaged gradient is the
    gradient of the global batch's mean loss and N processes reproduce one. Random draws per
    image are the global batch's (batch_shard). A last batch smaller than the number of
    processes is left out of every epoch (recorded in the run's info). Only rank 0 writes
    the checkpoint and the run; every process returns its Run (the trained weights are the
    same on all; each computes the threshold on the held-out images itself).
    """
    out = Path(out)
    world = parallel.current()
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    state, tensors = _start(out, config, resume, world)
    world.barrier()
    config = Config.from_dict(state["config"])
    if world.size > config.batch_size:
        raise ConfigError(f"batch_size {config.batch_size} is the global batch, split across the {world.size} "
                          f"processes: it must be at least {world.size}")
    bar = _progress_factory(progress and world.main)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    fit_data, val_data = split_train_with(dataset, config.val_fraction)
    detector = Detector(config, dataset.channels).to(device)
    cache = out / ("feature-cache" if world.size == 1 else f"feature-cache-rank{world.rank}")
    store = TargetStore.build(detector, fit_data, batch_size=config.batch_size,
                              limit_mb=None if config.cache else config.feature_cache_mb,
                              folder=cache, device=device, progress=bar, world=world)
    optimizer = _optimizer(detector, config, state["phase"])
    if tensors is not None:
        # After the feature pass, whose data loader draws from the global generator.
        _restore(detector, optimizer, generator, tensors, world.rank)
    loop = _Loop(out, world, generator, state, started)
    try:
        if config.model == "knn":
            _build_bank(detector, store, config, generator)
            # Every process builds the same bank; rank 0's is kept should a GPU kernel differ in the last bit.
            world.broadcast_module(detector.core)
            state["phase"] = "done"
        else:
            if tensors is None and detector.norm is not None:
                detector.norm.fit(*store.channel_stats())
            if state["phase"] == "autoencoder":
                _train_autoencoder(detector, optimizer, store, config, loop, bar)
                state["phase"], state["epoch"] = "prior", 0
                optimizer = _optimizer(detector, config, "prior")
            if state["phase"] == "prior":
                if config.model == "pvqae" and config.prior_epochs > 0:
                    _train_prior(detector, optimizer, store, config, loop, bar)
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
        "processes": world.size,
    })
    run = Run(out, config, detector, threshold, info)
    if world.main:
        run.save()
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    world.barrier()
    return run


def split_train_with(dataset, val_fraction: float) -> tuple:
    keys = [Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths]
    try:
        fit_idx, val_idx = holdout_indices(keys, val_fraction)
    except ValueError as err:
        raise ValueError(f"{dataset.root}: {err}") from None
    return dataset.subset(fit_idx, "fit"), dataset.subset(val_idx, "val")


def _start(out: Path, config: Config | None, resume: bool, world: parallel.World) -> tuple[dict, dict | None]:
    """The training state to start from: fresh, or the checkpoint's when resuming (which every
    process reads, so with several machines `out` must be a folder they share)."""
    ckpt = out / CHECKPOINT_FILE
    if not resume:
        if config is None:
            raise ConfigError("fit: a config is needed to start a run")
        for name in (RUN_FILE, MODEL_FILE, CHECKPOINT_FILE):
            if (out / name).exists():
                raise RunExists(f"{out} already holds a run ({name}); resume it or choose another output folder")
        if world.main:
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


class _Loop:
    """What the training phases share: the run folder, the processes, the training generator,
    the state saved in checkpoints and the start time."""

    def __init__(self, out: Path, world: parallel.World, generator: torch.Generator, state: dict, started: float):
        self.out, self.world, self.generator, self.state, self.started = out, world, generator, state, started

    def checkpoint(self, detector, optimizer) -> None:
        _save_checkpoint(self.out, detector, optimizer, self.generator, self.state, self.started, self.world)


def _save_checkpoint(out, detector, optimizer, generator, state, started, world: parallel.World) -> None:
    """Rank 0 writes the checkpoint; every process must call it (it gathers their RNG states)."""
    # Each process's global RNG feeds its own codebook sampling (k-means sample, revival rows),
    # so all of them are kept for an exact resume.
    rng = {"rng.torch": world.gather(torch.get_rng_state())}
    if torch.cuda.is_available():
        rng["rng.cuda"] = world.gather(torch.cuda.get_rng_state())
    if world.main:
        _write_checkpoint(out, detector, optimizer, generator, state, started, rng)
    # No process goes on before the checkpoint is whole: a failure after this point resumes from it on every process.
    world.barrier()


def _write_checkpoint(out, detector, optimizer, generator, state, started, rng: dict) -> None:
    tensors = {f"model.{k}": v for k, v in detector.trainable_state().items()}
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, values in sd["state"].items():
            for name, value in values.items():
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
        groups = sd["param_groups"]
    for name, states in rng.items():
        tensors[name] = states[0]
        tensors.update({f"{name}.rank{r}": s for r, s in enumerate(states[1:], 1)})
    tensors["rng.generator"] = generator.get_state()
    meta = dict(state, optimizer_groups=groups, elapsed=state.get("elapsed", 0.0) + time.perf_counter() - started)
    write_tensors(out / CHECKPOINT_FILE, tensors, metadata={"state": json.dumps(meta)})


def _restore(detector, optimizer, generator, tensors: dict, rank: int) -> None:
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
    # A process that the checkpoint has no state for (more processes than when it was written) takes rank 0's.
    torch.set_rng_state(tensors.get(f"rng.torch.rank{rank}", tensors["rng.torch"]))
    generator.set_state(tensors["rng.generator"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors.get(f"rng.cuda.rank{rank}", tensors["rng.cuda"]))


def _train_autoencoder(detector, optimizer, store, config, loop: _Loop, bar) -> None:
    world, state, generator = loop.world, loop.state, loop.generator
    n, size = len(store), config.batch_size
    if n < world.size:
        raise ValueError(f"{n} training image(s) cannot be shared by {world.size} processes")
    # Every process needs at least one image of every step: a smaller last batch is left out.
    dropped = n % size if n % size < world.size else 0
    per_epoch = math.ceil((n - dropped) / size)
    total = config.epochs * per_epoch
    if dropped:
        state.setdefault("info", {})["dropped_per_epoch"] = dropped
        if world.main and state["epoch"] == 0:
            warnings.warn(f"the last batch of each epoch ({dropped} of {n} images) is smaller than the {world.size} "
                          "processes and is left out; the order changes every epoch, so every image is still used",
                          stacklevel=3)
    device = next(detector.buffers()).device
    model = detector.core
    if world.size > 1:
        # The codebook keeps its buffers identical on every process (its statistics are summed over them),
        # so DDP only averages gradients. vqvae and ae read only the bottleneck level: the projections of
        # the other levels get no gradient.
        model = DistributedDataParallel(detector.core, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False, find_unused_parameters=config.model != "pvqae")
    detector.core.train()
    with bar(total=total, initial=state["epoch"] * per_epoch, desc=config.model, unit="step") as pbar:
        for epoch in range(state["epoch"], config.epochs):
            order = torch.randperm(n, generator=generator)
            for b in range(per_epoch):
                step = epoch * per_epoch + b
                detector.core.set_progress(step / total)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                index = order[b * size : (b + 1) * size]
                start, stop = world.slice(len(index))
                seed = int(torch.randint(2**62, (), generator=generator))
                with batch_shard.split(start, stop, len(index), seed):
                    targets, richness = store.batch(index[start:stop], device)
                    loss, parts = detector.training_loss(targets, richness, config.input_noise, generator, core=model)
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"training diverged at step {step} (loss {float(loss)}); lower lr")
                optimizer.zero_grad(set_to_none=True)
                # The loss is a mean over this process's images and DDP averages gradients over processes:
                # weighting by the share of the batch makes that the gradient of the batch's mean loss.
                (loss * ((stop - start) * world.size / len(index))).backward()
                optimizer.step()
                if config.model == "pvqae":
                    parts["perplexity"] = detector.core.quantizer.usage()["perplexity"]
                pbar.set_postfix({k: f"{v:.3g}" for k, v in parts.items()}, refresh=False)
                pbar.update(1)
            state["epoch"] = epoch + 1
            state.setdefault("info", {})["last_loss"] = _batch_mean(parts, stop - start, len(index), world)
            if state["epoch"] % config.checkpoint_every == 0 or state["epoch"] == config.epochs:
                loop.checkpoint(detector, optimizer)
    detector.core.eval()


def _batch_mean(parts: dict[str, float], count: int, total: int, world: parallel.World) -> dict[str, float]:
    """The loss parts of the whole batch: each process's means weighted by its share of the batch."""
    values = world.sum(torch.tensor(list(parts.values()), dtype=torch.float64) * count / total)
    return dict(zip(parts, values.tolist()))


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


def _train_prior(detector, optimizer, store, config, loop: _Loop, bar) -> None:
    """The Budget Prior on the routed codes of every stored image. It is small, so every process
    trains it whole on the same data; rank 0's is then kept by all."""
    state, generator = loop.state, loop.generator
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
                loop.checkpoint(detector, optimizer)
    detector.prior.eval()
    detector.prior_ready.fill_(True)
    # GPU kernels need not repeat a result to the last bit; the processes keep rank 0's prior.
    loop.world.broadcast_module(detector.prior)
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
