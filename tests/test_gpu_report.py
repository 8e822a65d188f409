"""The GPU benchmark's report (benchmarks/bench_gpu.py), built from result rows without a GPU: the
table a GPU run writes must come out right for complete, failed and skipped cases alike, since a
crash there would stop the run it reports on."""

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
_SPEC = importlib.util.spec_from_file_location("bench_gpu", _PATH)
bench_gpu = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_gpu)

META = {"device": "NVIDIA H200", "torch": "2.13.0", "capability": "9.0"}


def search_row(impl, ms, dtype="bfloat16", d=64, k=8192, agree=None):
    row = {"section": "nearest_code", "impl": impl, "dtype": dtype, "N": bench_gpu.N, "D": d, "K": k, "ms": ms}
    if agree is not None:
        row["agree_with_fp32_mm"] = agree
    return row


def table_line(text: str, prefix: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, text
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_ratios_use_the_faster_of_our_kernels():
    rows = [search_row("ours_cuda", 3.0, agree=1.0), search_row("ours_triton", 2.0, agree=0.99999),
            search_row("cdist_argmin", 25.0), search_row("mm_argmin", 9.0), search_row("matmul", 4.0)]
    cells = table_line(bench_gpu.markdown(META, rows), "| bfloat16 | 64 | 8192 |")
    assert cells[3:8] == ["3.00", "2.00", "25.00", "9.00", "4.00"]
    assert cells[8] == "12.5x"  # cdist / best ours = 25 / 2
    assert cells[9] == "0.50"  # best ours / matmul = 2 / 4
    assert cells[10] == "1.00000/0.99999"


def test_failures_and_skips_are_listed_and_leave_dashes():
    rows = [
        {"section": "nearest_code", "impl": "ours_cuda", "dtype": "float32", "N": bench_gpu.N, "D": 256, "K": 1024,
         "error": "NativeUnavailable: no CUDA extension"},
        search_row("ours_triton", 1.5, dtype="float32", d=256, k=1024, agree=1.0),
        search_row("cdist_argmin", 6.0, dtype="float32", d=256, k=1024),
        {"section": "nearest_code", "dtype": "float32", "D": 256, "K": 8192, "skipped": "time budget spent"},
        {"section": "vq_train_step", "impl": "vector_quantize_pytorch", "rows": 1 << 20, "D": 64, "K": 1024,
         "skipped": "not importable here: No module named 'vector_quantize_pytorch'"},
        {"section": "vq_train_step", "impl": "patchvq", "rows": 1 << 20, "D": 64, "K": 1024, "ms": 12.25},
    ]
    text = bench_gpu.markdown(META, rows)
    cells = table_line(text, "| float32 | 256 | 1024 |")
    assert cells[3] == "error" and cells[4] == "1.50" and cells[7] == "-"
    assert cells[8] == "4.0x" and cells[9] == "-"  # no matmul measured: no roofline ratio
    assert "NativeUnavailable: no CUDA extension" in text
    assert "time budget spent" in text and "not importable here" in text
    assert "| 1024 | patchvq | 12.25 |" in text


def test_recorder_writes_json_and_markdown_after_every_row(tmp_path):
    rec = bench_gpu.Recorder(tmp_path / "out", dict(META))
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"] == []
    rec.add(**search_row("matmul", 4.0))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"][0]["ms"] == pytest.approx(4.0)
    assert "| bfloat16 | 64 | 8192 |" in (tmp_path / "out" / "results.md").read_text()
