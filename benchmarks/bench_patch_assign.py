"""patch_assign (fused) against the plain composition it replaces, forward + backward.

The composition quantises every vector of every level, then selects each patch's level and
upsamples (patchvq.reference.patch_assign.patch_assign_dense), with autograd's
straight-through backward; it runs once with patchvq.nearest_code as its search (the same
search kernel the fused op uses) and once with torch's addmm + argmin (the reference search).
Shape: B=32, a 256x256 input at strides (8, 16, 32) (grids 32, 16, 8), D=64, K=512.
`fine_fraction` of the patches choose the finest level; the rest split evenly between the other two.

Run (one benchmark at a time on the machine):
  python -m pytest benchmarks/bench_patch_assign.py --benchmark-only \
      --benchmark-json=/tmp/patch_assign.json
  python benchmarks/bench_patch_assign.py /tmp/patch_assign.json   # the ratio table
"""

import json
import os
import sys
import time

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


CASES = [(fraction, method) for fraction in FRACTIONS for method in METHODS]


def test_patch_assign_forward_backward(benchmark):
    """One benchmark round runs every (fine fraction, method) case once, in rotating order, so load
    from other processes hits all cases alike; extra_info holds each case's median time and the
    median over rounds of ratios taken within a round (paired), which the table reports."""
    torch.set_num_threads(THREADS)
    inputs = {fraction: make_inputs(fraction) for fraction in FRACTIONS}
    start = time.perf_counter()
    for fraction, method in CASES:
        step(method, *inputs[fraction])
    once = max(time.perf_counter() - start, 1e-6)
    rounds = max(5, min(40, int(TARGET_SECONDS * len(CASES) / once)))
    times = {case: [] for case in CASES}
    counter = iter(range(10**9))

    def one_round():
        shift = next(counter) % len(CASES)
        for fraction, method in CASES[shift:] + CASES[:shift]:
            begin = time.perf_counter()
            step(method, *inputs[fraction])
            times[(fraction, method)].append(time.perf_counter() - begin)

    benchmark.group = "patch_assign forward + backward"
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    seconds = {case: torch.tensor(values) for case, values in times.items()}
    top = seconds[(max(FRACTIONS), "fused")]
    info = {"threads": THREADS, "rounds": rounds}
    for (fraction, method), t in seconds.items():
        fused = seconds[(fraction, "fused")]
        info[f"{fraction}/{method}/median_s"] = t.median().item()
        info[f"{fraction}/{method}/over_fused"] = (t / fused).median().item()
    for fraction in FRACTIONS:
        info[f"{fraction}/fused/over_fused_at_top"] = (seconds[(fraction, "fused")] / top).median().item()
    benchmark.extra_info.update(info)


def ratio_table(info: dict) -> list[str]:
    """Per fine fraction: fused median time, each composition's time over fused and fused's time
    over fused at the largest fraction (medians over rounds of ratios within a round)."""
    others = [m for m in METHODS if m != "fused"]
    lines = [
        "| fine fraction | fused median (ms) | "
        + " | ".join(f"{m} / fused" for m in others)
        + f" | fused / fused at {max(FRACTIONS)} |",
        "|---" * (3 + len(others)) + "|",
    ]
    for fraction in FRACTIONS:
        cells = [f"{info[f'{fraction}/{m}/over_fused']:.2f}" for m in others]
        share = f"{100 * info[f'{fraction}/fused/over_fused_at_top']:.0f} %"
        median = 1000 * info[f"{fraction}/fused/median_s"]
        lines.append(f"| {fraction} | {median:.1f} | " + " | ".join(cells) + f" | {share} |")
    lines.append(f"\n{info['threads']} threads, {info['rounds']} rounds.")
    return lines


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print("\n".join(ratio_table(json.load(f)["benchmarks"][0]["extra_info"])))
