"""The `patchvq` command line: the happy path once, and every error path as one line, no traceback."""

import csv
import json
import subprocess
import sys

import pytest
from app_fixtures import needs_weights, synthetic_category, tiny_config

from patchvq.cli.main import main


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return synthetic_category(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def run_dir(category, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.json"
    config.write_text(tiny_config(model="ae").to_json())
    out = folder / "run"
    assert main(["train", str(category), "--out", str(out), "--config", str(config), "--quiet"]) == 0
    return out


def _fails(capsys, argv, *, match: str) -> str:
    code = main(argv) if argv else None
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def _fails_in_parser(capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and match in err, err
    assert "Traceback" not in err
    return err


@needs_weights
def test_train_test_predict_happy_path(category, run_dir, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["test", str(category), "--run", str(run_dir), "--report", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "image AUROC" in out and "pixel AUROC" in out and "ms per image" in out
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "ap", "precision", "recall", "ms_per_image"):
        assert key in metrics
    assert metrics["images"] == metrics["good"] + metrics["defective"]

    images = category / "test" / "good"
    assert main(["predict", str(images), "--run", str(run_dir), "--out", str(tmp_path / "pred")]) == 0
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == len(list(images.glob("*.png")))
    assert {r["verdict"] for r in rows} <= {"good", "defective"}
    assert all((tmp_path / "pred" / r["overlay"]).stat().st_size > 0 for r in rows)


@needs_weights
def test_predict_scores_the_readable_images_and_lists_the_rest(category, run_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((category / "test" / "good").glob("*.png"))[:2]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.bmp").write_text("not an image")
    code = main(["predict", str(folder), "--run", str(run_dir), "--out", str(tmp_path / "pred")])
    captured = capsys.readouterr()
    assert code == 1
    assert "scored 2 image(s)" in captured.out
    assert "Traceback" not in captured.err
    for name in ("broken.png", "empty.jpg", "text.bmp"):
        assert f"could not score {folder / name}" in captured.err
    assert len(list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))) == 2


@needs_weights
def test_test_without_masks_reports_null_pixel_metrics(category, run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "nomasks"
    shutil.copytree(category, copy)
    shutil.rmtree(copy / "ground_truth")
    assert main(["test", str(copy), "--run", str(run_dir), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "pixel metrics will be n/a" in captured.err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None and metrics["image_auroc"] is not None


def test_parser_errors_are_one_line(capsys):
    _fails_in_parser(capsys, [], "required")
    _fails_in_parser(capsys, ["train"], "required")
    _fails_in_parser(capsys, ["train", "x", "--out", "y", "--epochs", "-1"], "non-negative")
    _fails_in_parser(capsys, ["train", "x", "--out", "y", "--image-size", "big"], "positive integer")
    _fails_in_parser(capsys, ["train", "x", "--out", "y", "--model", "gan"], "invalid choice")
    _fails_in_parser(capsys, ["test", "x", "--run", "y", "--bogus"], "unrecognized arguments")


def test_bad_paths_and_files_are_one_line(category, tmp_path, capsys):
    _fails(capsys, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"], match="missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    _fails(capsys, ["train", str(category), "--out", str(tmp_path / "o"), "--config", str(bad)], match="bad.json")
    bad.write_text('{"epoch": 3}')
    _fails(capsys, ["train", str(category), "--out", str(tmp_path / "o"), "--config", str(bad)], match="epoch")
    _fails(capsys, ["train", str(category), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "nope.json")],
           match="does not exist")
    _fails(capsys, ["train", str(category), "--out", str(tmp_path / "o"), "--config", "mtsd-large"],
           match="no shipped preset has that name")
    _fails(capsys, ["train", str(category), "--out", str(tmp_path / "o2"), "--resume"], match="checkpoint")
    _fails(capsys, ["test", str(category), "--run", str(tmp_path / "norun")], match="does not exist")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.json").write_text("garbage")
    _fails(capsys, ["test", str(category), "--run", str(tmp_path / "corrupt")], match="corrupt")
    _fails(capsys, ["predict", str(tmp_path / "none.png"), "--run", str(tmp_path / "corrupt"), "--out",
                    str(tmp_path / "p")], match="corrupt")


@needs_weights
def test_run_folders_are_never_overwritten(category, run_dir, tmp_path, capsys):
    before = (run_dir / "model.safetensors").read_bytes()
    _fails(capsys, ["train", str(category), "--out", str(run_dir), "--epochs", "1"], match="already holds a run")
    assert (run_dir / "model.safetensors").read_bytes() == before
    _fails(capsys, ["train", str(category), "--out", str(run_dir), "--resume"], match="nothing to resume")
    _fails(capsys, ["predict", str(tmp_path / "none.png"), "--run", str(run_dir), "--out", str(tmp_path / "p")],
           match="none.png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _fails(capsys, ["predict", str(text), "--run", str(run_dir), "--out", str(tmp_path / "p")], match="not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, ["predict", str(empty), "--run", str(run_dir), "--out", str(tmp_path / "p")], match="no image")
    _fails(capsys, ["test", str(empty), "--run", str(run_dir)], match="empty")


def test_the_entry_point_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "patchvq", "train", "/nonexistent/data", "--out", "/tmp/x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("patchvq: error:") and "Traceback" not in result.stderr
    helped = subprocess.run([sys.executable, "-m", "patchvq", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    for command in ("train", "test", "predict", "demo", "info"):
        assert command in helped.stdout
