"""patch_assign (fused) against the plain composition it replaces, forward + backward.

The composition quantises every vector of every level, then selects each patch's level and
upsamples (patchvq.reference.patch_assign.patch_assign_dense), with autograd's
straight-through backward; it runs once with patchvq.nearest_code as its search (the same
search kernel the fused op uses) and once with torch's addmm + argmin (the reference search).
Shape: B=32, a 256x256 input at strides (8, 16, 32) (grids 32, 16, 8), D=64, K=512.
`fine_fraction` of the patches choose the finest level; the rest split evenly between the other two.

Run (one benchmark at a time on the machine):
  flock /tmp/patchvq-bench.lock pytest benchmarks/bench_patch_assign.py --benchmark-only \
      --benchmark-json=/tmp/patch_assign.json
  python benchmarks/bench_patch_assign.py /tmp/patch_assign.json   # the ratio table
"""

import json
import os
import sys
import time

import pytest
import torch

import patchvq
from patchvq.reference import nearest_code as reference_search
from patchvq.reference.patch_assign import patch_assign_dense

THREADS = int(os.environ.get("PATCHVQ_BENCH_THREADS", "2"))
BATCH, DIM, CODES, INPUT, STRIDES = 32, 64, 512, 256, (8, 16, 32)
FRACTIONS = (0.1, 0.5, 0.9)
METHODS = ("fused", "composition_nearest_code", "composition_addmm")
TARGET_SECONDS = 3.0


def make_inputs(fine_fraction: float, seed: int = 0):
    """Levels [B, D, 256/s, 256/s] (requiring grad), choice with exactly fine_fraction of the
    patches at level 0 and the rest alternating between levels 1 and 2, codebook [K, D], grad of z_q."""
    gen = torch.Generator().manual_seed(seed)
    levels = [torch.randn(BATCH, DIM, INPUT // s, INPUT // s, generator=gen).requires_grad_() for s in STRIDES]
    coarse = INPUT // STRIDES[-1]
    patches = BATCH * coarse * coarse
    fine = round(fine_fraction * patches)
    order = torch.randperm(patches, generator=gen)
    choice = torch.empty(patches, dtype=torch.int64)
    choice[order[:fine]] = 0
    choice[order[fine:]] = 1 + torch.arange(patches - fine) % 2
    codebook = torch.randn(CODES, DIM, generator=gen)
    grad = torch.randn(BATCH, DIM, INPUT // STRIDES[0], INPUT // STRIDES[0], generator=gen)
    return levels, choice.reshape(BATCH, coarse, coarse), codebook, grad


def step(method: str, levels, choice, codebook, grad):
    """One forward + backward of `method`, the level gradients cleared first."""
    for lv in levels:
        lv.grad = None
    if method == "fused":
        z_q = patchvq.patch_assign(levels, choice, codebook)[0]
    elif method == "composition_nearest_code":
        z_q = patch_assign_dense(levels, choice, codebook, search=patchvq.nearest_code)[0]
    else:
        z_q = patch_assign_dense(levels, choice, codebook, search=reference_search)[0]
    z_q.backward(grad)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fine_fraction", FRACTIONS)
def test_patch_assign_forward_backward(benchmark, method, fine_fraction):
    torch.set_num_threads(THREADS)
    inputs = make_inputs(fine_fraction)
    start = time.perf_counter()
    step(method, *inputs)
    once = max(time.perf_counter() - start, 1e-6)
    benchmark.group = f"patch_assign fine={fine_fraction}"
    benchmark.extra_info.update(method=method, fine_fraction=fine_fraction, threads=THREADS)
    rounds = max(3, min(30, int(TARGET_SECONDS / once)))
    benchmark.pedantic(step, args=(method, *inputs), rounds=rounds, iterations=1, warmup_rounds=0)


def ratio_table(benchmarks: list[dict]) -> list[str]:
    """Per fine fraction: fused time, each composition's time over fused, fused time over fused at 0.9."""
    times = {(b["extra_info"]["fine_fraction"], b["extra_info"]["method"]): b["stats"]["min"] for b in benchmarks}
    others = [m for m in METHODS if m != "fused"]
    lines = [
        "| fine fraction | fused (ms) | " + " | ".join(f"x vs {m}" for m in others) + " | fused / fused at 0.9 |",
        "|---" * (3 + len(others)) + "|",
    ]
    top = times.get((max(FRACTIONS), "fused"))
    for fraction in FRACTIONS:
        fused = times.get((fraction, "fused"))
        if fused is None:
            continue
        cells = [f"{times[(fraction, m)] / fused:.2f}" if (fraction, m) in times else "-" for m in others]
        share = f"{100 * fused / top:.0f} %" if top else "-"
        lines.append(f"| {fraction} | {1000 * fused:.1f} | " + " | ".join(cells) + f" | {share} |")
    return lines


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print("\n".join(ratio_table(json.load(f)["benchmarks"])))
