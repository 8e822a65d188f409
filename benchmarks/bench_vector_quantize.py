"""patchvq.VectorQuantize against vector_quantize_pytorch.VectorQuantize, same configuration, same run.

Run (from the repository root; the first call builds the C++ kernels):
    python -m pytest benchmarks/bench_vector_quantize.py \
        --benchmark-only -q -p no:cacheprovider

Shapes: B*N = 65536 rows (B=16, N=4096), D = 64, K in {1024, 4096}, float32, on the CPU with
PATCHVQ_BENCH_THREADS threads (default 2). Both layers with their defaults: EMA codebook, decay 0.8,
commitment weight 1, gradients by the rotation trick (the default of both), no k-means, no
dead-code revival.
Timed: a training step (forward with the EMA update, backward of output + loss into the
input) and an eval forward. Memory: the extra peak resident memory of one training step,
measured in a fresh subprocess per layer (peak RSS during the step minus RSS before it, after a
small warm-up step, with glibc mapping every large block on its own), so allocations of one run
never hide in another's and the figure follows the live tensors.
At the end a table of ratios (theirs / ours, fastest rounds) is printed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from versus_upstream import IMPLS, needs, ratio_cells, show_ratio_table, status_kib

BATCH, LENGTH, DIM = 16, 4096, 64
SIZES = (1024, 4096)
_RESULTS: dict[tuple[str, str, int], float] = {}


def make_layer(impl: str, codebook_size: int) -> torch.nn.Module:
    """The layer under test, both configured identically (see the module docstring)."""
    torch.manual_seed(0)
    common = {"dim": DIM, "codebook_size": codebook_size, "decay": 0.8, "commitment_weight": 1.0}
    if impl == "patchvq":
        from patchvq.layers import VectorQuantize

        return VectorQuantize(**common)
    import vector_quantize_pytorch

    return vector_quantize_pytorch.VectorQuantize(**common)


def make_input(length: int = LENGTH) -> torch.Tensor:
    return torch.randn(BATCH, length, DIM, generator=torch.Generator().manual_seed(1))


def train_step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """Forward in training mode (which updates the EMA codebook) and backward into the input."""
    x = x.detach().requires_grad_()
    quantized, _, loss = layer(x)
    (quantized.square().mean() + loss).backward()


def eval_forward(layer: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        layer(x)


def extra_peak_bytes(impl: str, codebook_size: int) -> int:
    """Peak resident memory of one training step beyond what the process held before it (this process)."""
    torch.set_num_threads(int(os.environ.get("PATCHVQ_BENCH_THREADS", "2")))
    layer = make_layer(impl, codebook_size).train()
    x = make_input()
    train_step(layer, make_input(64))  # loads kernels, thread pools and lazy state outside the measurement
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    train_step(layer, x)
    return (status_kib("VmHWM") - before) * 1024


def ratio_lines() -> list[str]:
    """The ratio table (theirs / ours) of whatever this run measured, as markdown lines."""
    lines = ["", "VectorQuantize, B*N = 65536, D = 64: vector_quantize_pytorch / patchvq (higher is better for us)",
             ("| K | train step (s) theirs / ours | ratio | eval forward (s) theirs / ours | ratio "
             "| extra peak memory (MB) theirs / ours | ratio |"), "|---|---|---|---|---|---|---|"]
    for k in SIZES:
        cells = [str(k), *ratio_cells(_RESULTS, k, (("train", 1.0), ("eval", 1.0), ("memory", 2.0**-20)))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


@pytest.fixture(scope="module", autouse=True)
def ratio_table(request):
    show_ratio_table(request, "patchvq-vector-quantize-ratio-table", ratio_lines)


@pytest.mark.parametrize("codebook_size", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_time(benchmark, mode, impl, codebook_size):
    """Fastest of a few rounds of a training step or an eval forward (two for the many-second case).

    The ratio table uses the fastest round: on a machine shared with other jobs it is the one
    least disturbed by them.
    """
    needs(impl)
    run = train_step if mode == "train" else eval_forward
    layer, x = make_layer(impl, codebook_size).train(mode == "train"), make_input()
    run(layer, make_input(64))
    benchmark.group = f"VectorQuantize {'train step' if mode == 'train' else 'eval forward'}, K={codebook_size}"
    slow = mode == "train" and impl == IMPLS[1] and codebook_size >= 4096
    benchmark.pedantic(run, args=(layer, x), rounds=2 if slow else 4, iterations=1)
    _RESULTS[(mode, impl, codebook_size)] = benchmark.stats.stats.min


@pytest.mark.parametrize("codebook_size", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step_extra_memory(benchmark, impl, codebook_size):
    """Runs in a fresh subprocess; the figure goes to extra_info and the ratio table, not the timing table."""
    needs(impl)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak-memory measurement needs Linux /proc/self/clear_refs")
    # glibc then maps every block of 64 KiB or more on its own and unmaps it when freed, so the
    # resident peak follows the live tensors instead of the heap's high-water mark (both layers alike).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MALLOC_MMAP_THRESHOLD_": "65536"}

    def probe() -> int:
        done = subprocess.run([sys.executable, __file__, impl, str(codebook_size)], capture_output=True, text=True,
                              env=env, check=False, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])["extra_peak_bytes"]

    benchmark.group = f"VectorQuantize memory probe subprocess, K={codebook_size} (time: the whole subprocess)"
    extra = benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info["extra_peak_mb"] = extra / 2**20
    _RESULTS[("memory", impl, codebook_size)] = float(extra)


if __name__ == "__main__":
    print(json.dumps({"extra_peak_bytes": extra_peak_bytes(sys.argv[1], int(sys.argv[2]))}))
