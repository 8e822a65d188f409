"""The engine end to end on a tiny configuration: fit, score, evaluate, resume, determinism, files."""

import json

import pytest
import torch
from app_fixtures import needs_weights, synthetic_category, tiny_config

from patchvq.data import open_dataset
from patchvq.engine import CheckpointError, Run, RunExists, evaluate, fit, score
from patchvq.engine.train import CHECKPOINT_FILE


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return synthetic_category(tmp_path_factory.mktemp("synthetic"))


def _train(category, config, out, **kw):
    data = open_dataset(category, "mvtec", "train", image_size=64 if config is None else config.image_size)
    return fit(data, config, out, progress=False, **kw)


def _weights(run: Run) -> dict:
    return run.detector.trainable_state()


@needs_weights
@pytest.mark.parametrize("model", ["pvqae", "vqvae", "ae", "knn"])
def test_each_model_trains_and_scores_end_to_end(category, tmp_path, model):
    config = tiny_config(model=model)
    run = _train(category, config, tmp_path / "run")
    assert (tmp_path / "run" / "run.json").exists() and (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    loaded = Run.load(tmp_path / "run")
    test = open_dataset(category, "mvtec", "test", image_size=config.image_size)
    result = evaluate(loaded, test)
    m = result.metrics
    assert m["images"] == len(test) and m["good"] + m["defective"] == len(test)
    assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["pixel_auroc"] <= 1.0 and 0.0 <= m["aupro"] <= 1.0
    assert sum(m["confusion"].values()) == len(test)
    images = torch.stack([test[i]["image"] for i in range(3)])
    scores, maps, levels = score(loaded, images)
    assert scores.shape == (3,) and maps.shape == (3, 64, 64) and torch.isfinite(maps).all()
    assert (levels is not None) == (model == "pvqae")
    torch.testing.assert_close(scores, score(run, images)[0])
    # The image score is the maximum of the smoothed map (method.md's choice).
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))


@needs_weights
def test_threshold_comes_from_held_out_good_images_only(category, tmp_path):
    run = _train(category, tiny_config(model="ae"), tmp_path / "run")
    assert run.info["val_images"] >= 1 and run.info["fit_images"] + run.info["val_images"] == 12
    val = open_dataset(category, "mvtec", "val", image_size=64)
    scores = score(run, torch.stack([val[i]["image"] for i in range(len(val))]))[0]
    expected = torch.quantile(scores.double(), run.config.threshold_quantile)
    assert run.threshold == pytest.approx(float(expected), rel=1e-5)


@needs_weights
def test_training_is_deterministic_for_a_seed(category, tmp_path):
    a = _weights(_train(category, tiny_config(), tmp_path / "a"))
    b = _weights(_train(category, tiny_config(), tmp_path / "b"))
    c = _weights(_train(category, tiny_config(seed=1), tmp_path / "c"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@needs_weights
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(category, tmp_path, monkeypatch):
    config = tiny_config(epochs=3, prior_epochs=2)
    whole = _weights(_train(category, config, tmp_path / "whole"))

    import patchvq.engine.train as train_module

    calls = {"n": 0}
    real = train_module._save_checkpoint

    def crash_after_second(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stands in for a kill after the second checkpoint

    monkeypatch.setattr(train_module, "_save_checkpoint", crash_after_second)
    with pytest.raises(KeyboardInterrupt):
        _train(category, config, tmp_path / "cut")
    monkeypatch.setattr(train_module, "_save_checkpoint", real)
    assert (tmp_path / "cut" / CHECKPOINT_FILE).exists() and not (tmp_path / "cut" / "run.json").exists()
    with pytest.raises(RunExists):
        _train(category, config, tmp_path / "cut")
    resumed = _weights(_train(category, None, tmp_path / "cut", resume=True))
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


@needs_weights
def test_resume_refuses_changed_settings_and_missing_checkpoints(category, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _train(category, None, tmp_path / "none", resume=True)
    _train(category, tiny_config(model="ae"), tmp_path / "done")
    with pytest.raises(RunExists, match="nothing to resume"):
        _train(category, None, tmp_path / "done", resume=True)


@needs_weights
def test_corrupt_or_pickled_files_are_refused_without_running_them(category, tmp_path):
    run_dir = tmp_path / "run"
    _train(category, tiny_config(model="ae"), run_dir)
    good_model = (run_dir / "model.safetensors").read_bytes()

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    (run_dir / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        Run.load(run_dir)
    assert not marker.exists()

    (run_dir / "model.safetensors").write_bytes(good_model[: len(good_model) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Run.load(run_dir)

    (run_dir / "model.safetensors").write_bytes(good_model)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="run.json is corrupt"):
        Run.load(run_dir)
    meta["config"]["model"] = "pvqae"
    (run_dir / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        Run.load(run_dir)


@needs_weights
def test_score_rejects_images_of_the_wrong_shape(category, tmp_path):
    run = _train(category, tiny_config(model="knn"), tmp_path / "run")
    with pytest.raises(ValueError, match=r"\[B, C, 64, 64\]"):
        score(run, torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        score(run, torch.rand(2, 2, 64, 64))


@needs_weights
def test_knn_bank_is_a_greedy_coreset_of_training_features(category, tmp_path):
    run = _train(category, tiny_config(model="knn", knn_bank=150), tmp_path / "run")
    bank = run.detector.core.bank
    assert bank.shape[0] == 150
    assert torch.cdist(bank, bank).add(torch.eye(150) * 1e9).min() > 0  # no duplicates


def test_pixel_space_models_train_without_weights(category, tmp_path):
    config = tiny_config(backbone="none", model="pvqae")
    run = _train(category, config, tmp_path / "run")
    test = open_dataset(category, "mvtec", "test", image_size=64)
    out = evaluate(run, test).metrics
    assert 0.0 <= out["image_auroc"] <= 1.0
