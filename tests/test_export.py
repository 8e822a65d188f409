"""`patchvq export --onnx`: a graph of standard operators that matches PyTorch, checked by
itself, and `predict --onnx` scoring with onnxruntime alone."""

import csv

import pytest
from app_fixtures import needs_weights, synthetic_category, tiny_config

from patchvq.cli.main import main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return synthetic_category(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def run_dir(category, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    (folder / "tiny.json").write_text(tiny_config(model="ae", backbone_precision="float32").to_json())
    assert main(["train", str(category), "--out", str(folder / "run"), "--config", str(folder / "tiny.json"),
                 "--quiet"]) == 0
    return folder / "run"


@needs_weights
def test_export_matches_pytorch_and_predict_runs_on_onnxruntime(category, run_dir, tmp_path, capsys):
    import onnx

    model = tmp_path / "model.onnx"
    images = category / "test" / "good"
    assert main(["export", "--run", str(run_dir), "--onnx", str(model), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "ms per image" in out and "onnxruntime" in out
    graph = onnx.load(str(model))
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}

    assert main(["predict", str(images), "--run", str(run_dir), "--out", str(tmp_path / "torch")]) == 0
    assert main(["predict", str(images), "--onnx", str(model), "--out", str(tmp_path / "onnx")]) == 0
    torch_rows = list(csv.DictReader((tmp_path / "torch" / "predictions.csv").open()))
    onnx_rows = list(csv.DictReader((tmp_path / "onnx" / "predictions.csv").open()))
    assert [r["path"] for r in torch_rows] == [r["path"] for r in onnx_rows]
    for a, b in zip(torch_rows, onnx_rows):
        assert float(b["score"]) == pytest.approx(float(a["score"]), rel=1e-4)


@needs_weights
def test_export_fails_and_writes_nothing_beyond_the_tolerance(run_dir, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    assert main(["export", "--run", str(run_dir), "--onnx", str(model), "--tolerance", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differ from PyTorch" in err, err
    assert not model.exists() and not list(tmp_path.iterdir())


def test_predict_refuses_a_file_that_is_not_an_export(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "x.png"), "--onnx", str(bad), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.onnx" in err, err


@needs_weights
@pytest.mark.parametrize("model", ["pvqae", "vqvae", "knn"])
def test_every_model_exports_with_standard_operators_within_tolerance(category, tmp_path, model):
    from patchvq.data import open_dataset
    from patchvq.engine import fit
    from patchvq.export import export_onnx

    config = tiny_config(model=model, epochs=1, prior_epochs=1)
    run = fit(open_dataset(category, "mvtec", "train", image_size=64), config, tmp_path / "run", progress=False)
    if model == "pvqae":
        assert bool(run.detector.prior_ready)  # the Budget Prior is part of the graph
    check = export_onnx(run, tmp_path / "model.onnx", repeats=1)
    assert check.map_error <= 1e-4 and check.score_error <= 1e-4
    assert (tmp_path / "model.onnx").stat().st_size > 0
