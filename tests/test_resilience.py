"""Resilience and security of the engine and command line: a SIGKILL mid-epoch, corrupt or
pickled checkpoints, interrupted writes, and paths that must not leave the output folder."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from app_fixtures import needs_weights, synthetic_category, tiny_config

from patchvq.cli.main import main
from patchvq.data import open_dataset
from patchvq.engine import CheckpointError, fit
from patchvq.engine.checkpoint import atomic_write, write_json
from patchvq.engine.train import CHECKPOINT_FILE, _checkpoint_meta

ROOT = Path(__file__).resolve().parents[1]

KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from patchvq.data import open_dataset
    from patchvq.engine import fit
    from patchvq.models.config import Config
    from patchvq.models.detector import Detector

    calls = {{"n": 0}}
    real = Detector.training_loss

    def training_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, after the first epoch's checkpoint
        return real(self, *args, **kwargs)

    Detector.training_loss = training_loss
    config = Config.from_file({config!r})
    fit(open_dataset({data!r}, "mvtec", "train", image_size=config.image_size), config, {out!r}, progress=False)
""")


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return synthetic_category(tmp_path_factory.mktemp("synthetic"))


def _train(category, config, out, **kw):
    return fit(open_dataset(category, "mvtec", "train", image_size=64), config, out, progress=False, **kw)


@needs_weights
def test_sigkill_mid_epoch_leaves_a_checkpoint_that_resumes_to_the_same_weights(category, tmp_path):
    config = tiny_config(epochs=3, prior_epochs=1)
    # Every part on one thread, as the killed process: sums over other thread counts round differently.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _sigkill_and_resume(category, tmp_path, config)
    finally:
        torch.set_num_threads(threads)


def _sigkill_and_resume(category, tmp_path, config):
    whole = _train(category, config, tmp_path / "whole").detector.trainable_state()
    (tmp_path / "config.json").write_text(config.to_json())
    steps_per_epoch = -(-whole_fit_images(tmp_path / "whole") // config.batch_size)
    script = KILLER.format(root=str(ROOT), kill_at=steps_per_epoch + 2, config=str(tmp_path / "config.json"),
                           data=str(category), out=str(tmp_path / "cut"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    ckpt = tmp_path / "cut" / CHECKPOINT_FILE
    assert _checkpoint_meta(ckpt)["epoch"] == 1 and not (tmp_path / "cut" / "run.json").exists()
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    resumed = _train(category, None, tmp_path / "cut", resume=True).detector.trainable_state()
    assert resumed.keys() == whole.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def whole_fit_images(run_dir: Path) -> int:
    return json.loads((run_dir / "run.json").read_text())["info"]["fit_images"]


@needs_weights
def test_a_corrupt_or_pickled_checkpoint_is_one_clear_error_and_runs_nothing(category, tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in (pickle.dumps(Payload()), _torch_saved(Payload()), b"\x00" * 64, b""):
        (out / CHECKPOINT_FILE).write_bytes(payload)
        with pytest.raises(CheckpointError, match="checkpoint"):
            _train(category, None, out, resume=True)
        code = main(["train", str(category), "--out", str(out), "--resume", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "checkpoint" in err and "Traceback" not in err, err
        assert not marker.exists()
        assert (out / CHECKPOINT_FILE).read_bytes() == payload  # the file is left for the user to inspect


def _torch_saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"model": obj}, buffer)
    return buffer.getvalue()


def test_an_interrupted_write_keeps_the_previous_file_whole(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"previous")

    def half_then_killed(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_killed)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


@needs_weights
def test_an_interrupted_test_leaves_no_half_written_metrics(category, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _train(category, tiny_config(model="ae"), run_dir)
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text('{"previous": true}\n')
    from patchvq.engine import checkpoint

    real = checkpoint.os.fsync

    def killed(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".metrics.json."):
            raise KeyboardInterrupt
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", killed)
    assert main(["test", str(category), "--run", str(run_dir), "--report", str(report), "--quiet"]) == 130
    assert json.loads((report / "metrics.json").read_text()) == {"previous": True}
    assert not list(report.glob(".*.tmp"))
    monkeypatch.setattr(checkpoint.os, "fsync", real)
    write_json(report / "metrics.json", {"now": 1})
    assert json.loads((report / "metrics.json").read_text()) == {"now": 1}


def test_no_code_path_unpickles_a_user_file():
    """Only safetensors and JSON read what users hand us; the one torch.load reads the installed
    backbone weights with weights_only=True (no code runs)."""
    found = []
    for path in sorted((ROOT / "patchvq").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load|allow_pickle\s*=\s*True|\bUnpickler\(", code):
                found.append(f"{path.name}:{n}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, found


@pytest.mark.parametrize("name", ["../../etc/passwd.png", "..", "/abs/olute.png", "a/../../b.png", "....png",
                                  "<script>.png", "dir\\..\\x.png", "", ".hidden.png"])
def test_output_names_from_input_paths_never_leave_the_folder(tmp_path, name):
    from patchvq.cli.output import safe_name
    from patchvq.report.writer import _safe_name

    for made in (safe_name(3, name) + ".png", _safe_name(3, name)):
        assert "/" not in made and "\\" not in made and not made.startswith(".")
        assert (tmp_path / made).resolve().parent == tmp_path.resolve()
