"""Ratio tables from a pytest-benchmark JSON file: `python benchmarks/ratios.py result.json`.

Speed: for each shape, each method's best time divided by patchvq's (above 1: patchvq is
faster) and patchvq's FLOP rate as a share of the matmul roofline measured in the same run;
first from the interleaved test (all methods alternating round by round), then from the
per-method tests.
Memory: the extra peak MiB of each method from bench_memory.py.
"""

import json
import sys
from collections import defaultdict


def speed_table(benchmarks: list[dict]) -> list[str]:
    roofline = [b for b in benchmarks if b["extra_info"].get("method") == "matmul"]
    peak = max((b["extra_info"]["gflops_min_time"] for b in roofline), default=None)
    shapes: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in benchmarks:
        info = b["extra_info"]
        if "n" in info and "flops" in info and not info.get("interleaved"):
            shapes[(info["n"], info["d"], info["k"])][info["method"]] = b
    others = sorted({m for methods in shapes.values() for m in methods} - {"patchvq"})
    lines = [
        "| N | D | K | patchvq GFLOP/s | % of matmul | " + " | ".join(f"x vs {m}" for m in others) + " |",
        "|---" * (5 + len(others)) + "|",
    ]
    for (n, d, k), methods in sorted(shapes.items()):
        if "patchvq" not in methods:
            continue
        ours = methods["patchvq"]
        cells = [f"{methods[m]['stats']['min'] / ours['stats']['min']:.2f}" if m in methods else "-" for m in others]
        gflops = ours["extra_info"]["gflops_min_time"]
        share = f"{100 * gflops / peak:.0f} %" if peak else "-"
        lines.append(f"| {n} | {d} | {k} | {gflops:.0f} | {share} | " + " | ".join(cells) + " |")
    if peak:
        lines.append(f"\nmatmul roofline in this run: {peak:.0f} GFLOP/s (float32, torch.mm).")
    return lines


def interleaved_table(benchmarks: list[dict]) -> list[str]:
    """From test_interleaved: minima of one run in which all methods alternated round by round."""
    rows = [b["extra_info"] for b in benchmarks if b["extra_info"].get("interleaved")]
    if not rows:
        return []
    others = sorted({m for r in rows for m in r["min_seconds"]} - {"patchvq", "matmul"})
    lines = [
        "| N | D | K | patchvq GFLOP/s | matmul GFLOP/s | % of matmul | bf16 rows % | fallback rows % | "
        + " | ".join(f"x vs {m}" for m in others)
        + " |",
        "|---" * (8 + len(others)) + "|",
    ]
    for r in sorted(rows, key=lambda r: (r["n"], r["d"], r["k"], r["flops"])):
        best = r["min_seconds"]
        ours = r["flops"] / best["patchvq"] / 1e9
        matmul = r["matmul_flops"] / best["matmul"] / 1e9
        cells = [f"{best[m] / best['patchvq']:.2f}" if m in best else "-" for m in others]
        bf16 = f"{100 * r.get('bf16_rows', 0) / r['n']:.1f}"
        fallback = f"{100 * r.get('fallback_rows', 0) / r['n']:.1f}"
        lines.append(
            f"| {r['n']} | {r['d']} | {r['k']} | {ours:.0f} | {matmul:.0f} | {100 * ours / matmul:.0f} % | "
            f"{bf16} | {fallback} | " + " | ".join(cells) + " |"
        )
    return lines


def memory_table(benchmarks: list[dict]) -> list[str]:
    rows = [b["extra_info"] for b in benchmarks if "extra_mib" in b["extra_info"]]
    if not rows:
        return []
    lines = ["| method | N | D | K | extra peak MiB |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["d"], r["k"], r["method"])):
        lines.append(f"| {r['method']} | {r['n']} | {r['d']} | {r['k']} | {r['extra_mib']:.1f} |")
    return lines


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    benchmarks = data["benchmarks"]
    for table in (interleaved_table(benchmarks), speed_table(benchmarks)):
        if len(table) > 2:
            print("\n".join(table))
            print()
    memory = memory_table(benchmarks)
    if memory:
        print("\n".join(memory))


if __name__ == "__main__":
    main(sys.argv[1])
