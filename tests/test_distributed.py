"""Data-parallel training: 2 real processes on gloo (CPU) against one process on the same global batches,
and the pieces it is built from (batch slices, sliced random draws, joining a group, --cache).

The processes are spawned once per module and run every distributed fit the tests need, each
writing the trainable state it ends with (or the error it raised) for the tests to compare.
"""

import datetime
import itertools
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from app_fixtures import needs_weights, synthetic_category, tiny_config
from safetensors.torch import load_file, save_file

from patchvq.data import open_dataset
from patchvq.engine import Run, fit, parallel
from patchvq.engine import train as train_module
from patchvq.engine.store import TargetStore
from patchvq.layers import batch_shard
from patchvq.layers.patch_vq import PatchVQConfig
from patchvq.models.config import Config
from patchvq.models.detector import Detector

WORLD = 2
# Batches of 7 over the 10 fitted images: steps of 7 (split 4 + 3) and 3 (split 2 + 1), so the
# per-process loss weighting is exercised on every step.
BATCH = 7


def _exact_config(**changes) -> Config:
    """A tiny pvqae config whose every random draw has a data-parallel equivalent: no k-means
    init or dead-code revival (their row samples are drawn per process, see the README)."""
    cfg = tiny_config(batch_size=BATCH, **changes)
    return cfg.replace(patch_vq=PatchVQConfig(num_codes=32, kmeans_init=False, threshold_ema_dead_code=0.0))


def _reviving_config() -> Config:
    """Dead-code revival on every step of more codes than rank 0 holds rows, so rank 1's rows are
    taken too: they are drawn from rank 1's own generator, which a resume has to restore."""
    cfg = tiny_config(batch_size=BATCH, epochs=3)
    return cfg.replace(patch_vq=PatchVQConfig(num_codes=512, kmeans_iters=2, threshold_ema_dead_code=30.0))


def _jobs() -> dict[str, dict]:
    return {
        "exact": {"config": _exact_config().to_dict()},
        # The method's codebook: k-means init on rows gathered from both processes, revival.
        "default": {"config": tiny_config(batch_size=BATCH).to_dict()},
        "vqvae": {"config": tiny_config(model="vqvae", batch_size=BATCH).to_dict()},
        "ae": {"config": tiny_config(model="ae", batch_size=BATCH).to_dict()},
        "too_small_batch": {"config": tiny_config(batch_size=1).to_dict()},
        "dropped_tail": {"config": tiny_config(batch_size=3, prior_epochs=0).to_dict()},
        "interrupted": {"config": _reviving_config().to_dict(), "interrupt_after": 1},
        "uninterrupted": {"config": _reviving_config().to_dict()},
    }


class _Interrupted(Exception):
    pass


def _worker(rank: int, world: int, port: int, category: str, root: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # A rank that fails outside fit makes the other's collectives time out rather than hang the test.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        root = Path(root)
        data = open_dataset(category, "mvtec", "train", image_size=64)
        for name, job in _jobs().items():
            out = root / name
            config = Config.from_dict(job["config"])
            result = {}
            try:
                if "interrupt_after" in job:
                    _fit_interrupted(data, config, out, job["interrupt_after"])
                    run = fit(data, None, out, resume=True, progress=False)
                else:
                    run = fit(data, config, out, progress=False)
                save_file({k: v.contiguous() for k, v in run.detector.trainable_state().items()},
                          str(root / f"{name}.rank{rank}.safetensors"))
                result = {"threshold": run.threshold, "info": run.info}
            except ValueError as err:
                result = {"error": f"{type(err).__name__}: {err}"}
            (root / f"{name}.rank{rank}.json").write_text(json.dumps(result))
            dist.barrier()
        _save_store(data, root / f"features.rank{rank}", parallel.current())
    finally:
        dist.destroy_process_group()


def _save_store(data, folder, world) -> None:
    """The feature pass of the fitted images, in batches of 3 (the 10 images make rounds whose last
    blocks are short or empty) and on disk (no memory allowance), saved with its arrays."""
    fit_data, _ = train_module.split_train_with(data, 0.1)
    torch.manual_seed(0)
    detector = Detector(tiny_config(), data.channels)
    store = TargetStore.build(detector, fit_data, batch_size=3, limit_mb=0, folder=folder / "cache",
                              device=torch.device("cpu"), progress=train_module._progress_factory(False), world=world)
    assert store.folder is not None
    arrays = {f"level{i}": torch.from_numpy(np.array(t)) for i, t in enumerate(store.targets)}
    save_file({**arrays, "richness": store.richness}, str(folder.parent / f"{folder.name}.safetensors"))
    store.close()


def _fit_interrupted(data, config, out, after_epochs: int) -> None:
    """fit, stopped on every process right after the checkpoint of epoch `after_epochs` is written."""
    real = train_module._Loop.checkpoint

    def checkpoint(loop, detector, optimizer):
        real(loop, detector, optimizer)
        if loop.state["phase"] == "autoencoder" and loop.state["epoch"] == after_epochs:
            raise _Interrupted

    train_module._Loop.checkpoint = checkpoint
    try:
        fit(data, config, out, progress=False)
    except _Interrupted:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    finally:
        train_module._Loop.checkpoint = real


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return synthetic_category(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def distributed(category, tmp_path_factory):
    """The folder with every job's per-rank state and result from one 2-process session."""
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(category), str(root)), nprocs=WORLD, join=True)
    return root


def _state(root, name: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(root / f"{name}.rank{rank}.safetensors"))


def _result(root, name: str, rank: int) -> dict:
    return json.loads((root / f"{name}.rank{rank}.json").read_text())


def _assert_ranks_identical(root, name: str) -> None:
    first, second = _state(root, name, 0), _state(root, name, 1)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{name}: {key} differs between the ranks"


@needs_weights
def test_both_ranks_end_with_identical_weights_and_codebooks(distributed):
    for name in ("exact", "default"):
        _assert_ranks_identical(distributed, name)
        state = _state(distributed, name, 0)
        assert bool(state["core.quantizer.codebook.initialised"])
        assert _result(distributed, name, 0)["info"]["processes"] == WORLD
    for name in ("vqvae", "ae"):
        _assert_ranks_identical(distributed, name)
    # The method's codebook was initialised by k-means (not the random init) and then updated.
    codes = _state(distributed, "default", 0)["core.quantizer.codebook.weight"]
    assert torch.isfinite(codes).all() and codes.abs().sum() > 0


@needs_weights
def test_two_processes_match_one_process_on_the_same_global_batch(distributed, category, tmp_path):
    data = open_dataset(category, "mvtec", "train", image_size=64)
    single = fit(data, _exact_config(), tmp_path / "single", progress=False)
    expected = single.detector.trainable_state()
    got = _state(distributed, "exact", 0)
    assert got.keys() == expected.keys()
    steps = single.config.epochs * 2
    # float32 sums taken in another order (gradients, codebook statistics, loss means) differ in the last
    # bits; Adam scales every step to about lr whatever the gradient's size, so a weight drifts by at most
    # a small fraction of lr per step. A thousandth of lr per step bounds the measured drift (2e-4) with
    # margin; a wrong split (no share weighting, the same noise on both halves) moves weights by ~lr per step.
    # Large buffers (the codebook's EMA counts and sums) also get 1e-5 relative: float32 sums of a few hundred
    # rows in another order.
    # The Budget Prior is compared by what it predicts, not by its weights: the key bias of its
    # attention has no true gradient (softmax ignores a constant added to every key), so Adam
    # turns that gradient's rounding noise into steps of up to lr, in any direction.
    atol, rtol = steps * single.config.lr * 1e-3, 1e-5
    diffs = {}
    for key, value in expected.items():
        if key.startswith("prior."):
            continue
        if value.is_floating_point():
            diffs[key] = float(((got[key] - value).abs() - rtol * value.abs()).max())
        else:
            assert torch.equal(got[key], value), key
    worst = max(diffs, key=diffs.get)
    print(f"largest difference 2 processes vs 1 after {steps} steps, beyond rtol: {diffs[worst]:.3g} ({worst}), "
          f"atol {atol:.3g}")
    assert diffs[worst] <= atol, (worst, diffs[worst])
    result = _result(distributed, "exact", 0)
    assert result["threshold"] == pytest.approx(single.threshold, rel=1e-3)
    # The run rank 0 saved is the one it returned.
    loaded = Run.load(distributed / "exact").detector
    saved = loaded.trainable_state()
    assert all(torch.equal(saved[k], got[k]) for k in got)
    grid = single.config.image_size // single.config.strides[-1]
    codes = torch.randint(single.config.patch_vq.num_codes, (8, grid, grid), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (loaded.prior.prior(codes) - single.detector.prior.prior(codes)).abs().max()
    assert gap <= 1e-4, f"the Budget Priors of 2 processes and of 1 differ by {float(gap):.3g} in probability"


@pytest.mark.slow  # a single-process feature pass besides the shared 2-process session
@needs_weights
def test_the_feature_pass_shared_by_two_processes_gives_each_every_image(distributed, category, tmp_path):
    data = open_dataset(category, "mvtec", "train", image_size=64)
    fit_data, _ = train_module.split_train_with(data, 0.1)
    torch.manual_seed(0)
    detector = Detector(tiny_config(), data.channels)
    store = TargetStore.build(detector, fit_data, batch_size=4, limit_mb=None, folder=tmp_path / "unused",
                              device=torch.device("cpu"), progress=train_module._progress_factory(False))
    assert store.folder is None and not (tmp_path / "unused").exists()
    expected = {f"level{i}": t for i, t in enumerate(store.targets)}
    expected["richness"] = store.richness
    for rank in range(WORLD):
        got = load_file(str(distributed / f"features.rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value), (rank, key)
        # The memory-mapped files are removed with the store.
        assert not (distributed / f"features.rank{rank}" / "cache").exists()


@needs_weights
def test_resume_of_a_two_process_run_ends_like_an_uninterrupted_one(distributed):
    _assert_ranks_identical(distributed, "interrupted")
    resumed, whole = _state(distributed, "interrupted", 0), _state(distributed, "uninterrupted", 0)
    assert int(whole["core.quantizer.codebook.revived"]) > 0
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


@needs_weights
def test_a_batch_smaller_than_the_world_is_one_clear_error(distributed):
    for rank in range(WORLD):
        error = _result(distributed, "too_small_batch", rank)["error"]
        assert error.startswith("ConfigError") and "global batch" in error and "at least 2" in error


@needs_weights
def test_a_last_batch_smaller_than_the_world_is_left_out_and_recorded(distributed):
    info = _result(distributed, "dropped_tail", 0)["info"]
    assert info["dropped_per_epoch"] == 1 and info["fit_images"] == 10
    _assert_ranks_identical(distributed, "dropped_tail")


@pytest.mark.slow  # starts torchrun and two fresh interpreters
@needs_weights
def test_the_command_line_trains_under_torchrun(category, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(tiny_config(epochs=1, prior_epochs=1).to_json())
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               "-m", "patchvq", "train", str(category), "--out", str(out), "--config", str(config),
               "--batch-size", "6", "--device", "cpu", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained pvqae") == 1 and f"on {WORLD} processes" in done.stdout
    run = Run.load(out)
    assert run.info["processes"] == WORLD and run.config.batch_size == 6 and run.config.epochs == 1
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "run.json"]


# Without processes: the pieces the data-parallel run is built from.


@pytest.mark.parametrize(("size", "total"), [(1, 1), (1, 7), (2, 2), (2, 7), (3, 7), (8, 8), (8, 23)])
def test_the_slices_of_a_batch_cover_it_in_rank_order_and_differ_by_at_most_one(size, total):
    slices = [parallel.World(rank, size).slice(total) for rank in range(size)]
    assert slices[0][0] == 0 and slices[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    lengths = [stop - start for start, stop in slices]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 1


def test_draws_inside_a_batch_slice_are_the_whole_batch_draws_cut_to_it():
    like = torch.zeros(7, 3, 4, 4)
    with batch_shard.split(0, 7, 7, seed=5):
        whole = [batch_shard.normal_like(like), batch_shard.exponential_like(like)]
    parts = []
    for start, stop in [(0, 4), (4, 7)]:
        with batch_shard.split(start, stop, 7, seed=5):
            rows = like[start:stop]
            parts.append([batch_shard.normal_like(rows), batch_shard.exponential_like(rows)])
    for k in range(2):
        assert torch.equal(torch.cat([parts[0][k], parts[1][k]]), whole[k])
    # Successive draws of a step differ; another seed draws other values.
    assert not torch.equal(whole[0], whole[1].log())
    with batch_shard.split(0, 7, 7, seed=6):
        assert not torch.equal(batch_shard.normal_like(like), whole[0])
    # Outside a slice, the generator given (or the global one) draws for the rows given.
    g = torch.Generator().manual_seed(1)
    assert torch.equal(batch_shard.normal_like(like, g), torch.randn(like.shape, generator=torch.Generator().manual_seed(1)))


def test_a_batch_slice_rejects_a_draw_of_another_size_and_nesting():
    with batch_shard.split(2, 5, 7, seed=0):
        with pytest.raises(ValueError, match="3 rows"):
            batch_shard.normal_like(torch.zeros(4, 2))
        with pytest.raises(RuntimeError, match="nest"), batch_shard.split(0, 1, 1, seed=0):
            pass
    with pytest.raises(ValueError, match="start < stop"), batch_shard.split(3, 3, 7, seed=0):
        pass
    assert batch_shard._active is None


def test_joining_a_process_group_needs_the_launchers_variables(monkeypatch):
    for name in parallel.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel.launched()
    with pytest.raises(RuntimeError, match="torchrun"):
        parallel.start(None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not parallel.launched()


@needs_weights
def test_train_cache_keeps_the_images_and_features_in_memory(category, tmp_path, monkeypatch):
    import patchvq.data
    from patchvq.cli.main import main

    opened = []
    real = patchvq.data.open_dataset

    def open_dataset(*args, **kwargs):
        opened.append(kwargs.get("cache"))
        return real(*args, **kwargs)

    monkeypatch.setattr(patchvq.data, "open_dataset", open_dataset)
    config = tmp_path / "tiny.json"
    config.write_text(tiny_config(model="ae", epochs=1).to_json())
    assert main(["train", str(category), "--out", str(tmp_path / "run"), "--config", str(config), "--cache",
                 "--batch-size", "5", "--quiet"]) == 0
    run = Run.load(tmp_path / "run")
    assert run.config.cache and run.config.batch_size == 5 and opened == [True]
    assert main(["train", str(category), "--out", str(tmp_path / "plain"), "--config", str(config), "--quiet"]) == 0
    assert not Run.load(tmp_path / "plain").config.cache and opened == [True, False]
