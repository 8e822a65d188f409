"""patchvq.ResidualVQ and multi-head VectorQuantize against vector_quantize_pytorch's, same configuration, same run.

Run (from the repository root; the first call builds the C++ kernels):
    python -m pytest benchmarks/bench_residual_vq.py --benchmark-only -q -p no:cacheprovider

Cases, float32 on the CPU with PATCHVQ_BENCH_THREADS threads (default 2), both libraries with
their defaults (EMA codebooks, decay 0.8, commitment weight 1, the rotation trick on):
  rvq:   ResidualVQ, 8 quantizers, K = 1024, D = 128, B*N = 32768 (B = 8, N = 4096).
  heads: VectorQuantize with 8 heads sharing one codebook, dim 256 (codebook_dim 32 per head),
         K = 1024, B*N = 8192 (65536 head rows).
Timed: a training step (forward with the EMA updates, backward into the input of <output, g> plus
the summed losses, g a fixed tensor standing for the gradient from the model above), fastest of a
few rounds. Memory: the extra peak resident memory of one training step in
a fresh subprocess (peak RSS minus RSS before it, after a small warm-up step, glibc mapping every
large block on its own so the peak follows the live tensors). A ratio table (theirs / ours) is
printed at the end.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from versus_upstream import IMPLS, needs, ratio_cells, show_ratio_table, status_kib

CASES = {
    "rvq": dict(batch=8, length=4096, dim=128),
    "heads": dict(batch=2, length=4096, dim=256),
}
_RESULTS: dict[tuple[str, str, str], float] = {}


def make_layer(impl: str, case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if impl == "patchvq":
        import patchvq as lib
    else:
        import vector_quantize_pytorch as lib
    if case == "rvq":
        return lib.ResidualVQ(dim=128, num_quantizers=8, codebook_size=1024)
    return lib.VectorQuantize(dim=256, codebook_size=1024, codebook_dim=32, heads=8)


def make_input(case: str, length: int | None = None) -> torch.Tensor:
    c = CASES[case]
    return torch.randn(c["batch"], length or c["length"], c["dim"], generator=torch.Generator().manual_seed(1))


def train_step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """Forward in training mode, then backward of <quantized, g> + sum of the losses into x, where g (made
    beforehand, like x) stands for the gradient a model above the quantizer would send."""
    x = x.detach().requires_grad_()
    quantized, _, loss = layer(x)
    ((quantized * _upstream_gradient(x)).sum() + loss.sum()).backward()


_GRADIENTS: dict[tuple, torch.Tensor] = {}


def _upstream_gradient(x: torch.Tensor) -> torch.Tensor:
    key = tuple(x.shape)
    if key not in _GRADIENTS:
        _GRADIENTS[key] = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) / x[0].numel()
    return _GRADIENTS[key]


def extra_peak_bytes(impl: str, case: str) -> int:
    torch.set_num_threads(int(os.environ.get("PATCHVQ_BENCH_THREADS", "2")))
    layer = make_layer(impl, case).train()
    x = make_input(case)
    _upstream_gradient(x)
    train_step(layer, make_input(case, 64))
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    train_step(layer, x)
    return (status_kib("VmHWM") - before) * 1024


def ratio_lines() -> list[str]:
    lines = ["", "ResidualVQ / multi-head VectorQuantize: vector_quantize_pytorch / patchvq (higher is better for us)",
             "| case | train step (s) theirs / ours | ratio | extra peak memory (MB) theirs / ours | ratio |",
             "|---|---|---|---|---|"]
    for case in CASES:
        cells = [case, *ratio_cells(_RESULTS, case, (("train", 1.0), ("memory", 2.0**-20)))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


@pytest.fixture(scope="module", autouse=True)
def ratio_table(request):
    show_ratio_table(request, "patchvq-residual-vq-ratio-table", ratio_lines)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_train_time(benchmark, impl, case):
    needs(impl)
    layer, x = make_layer(impl, case).train(), make_input(case)
    train_step(layer, make_input(case, 64))
    benchmark.group = f"{case} train step"
    benchmark.pedantic(train_step, args=(layer, x), rounds=2 if impl == IMPLS[1] else 4, iterations=1)
    _RESULTS[("train", impl, case)] = benchmark.stats.stats.min


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_extra_memory(benchmark, impl, case):
    needs(impl)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak-memory measurement needs Linux /proc/self/clear_refs")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MALLOC_MMAP_THRESHOLD_": "65536"}

    def probe() -> int:
        done = subprocess.run([sys.executable, __file__, impl, case], capture_output=True, text=True, env=env,
                              check=False, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])["extra_peak_bytes"]

    benchmark.group = f"{case} memory probe subprocess (time: the whole subprocess)"
    extra = benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info["extra_peak_mb"] = extra / 2**20
    _RESULTS[("memory", impl, case)] = float(extra)


if __name__ == "__main__":
    print(json.dumps({"extra_peak_bytes": extra_peak_bytes(sys.argv[1], sys.argv[2])}))
