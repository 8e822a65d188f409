"""What the benchmarks against vector-quantize-pytorch share: the two implementations, the skip
when upstream is missing, the resident-memory reading, and the ratio table printed at the end."""

import re
from pathlib import Path

import pytest

IMPLS = ("patchvq", "vector_quantize_pytorch")


def needs(impl: str) -> None:
    """Skip, saying how to install it, when `impl` is upstream and it is not installed."""
    if impl == IMPLS[1]:
        pytest.importorskip("vector_quantize_pytorch", reason="install the bench extra: pip install -e .[bench]")


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def ratio_cells(results: dict, case, measures) -> list[str]:
    """'theirs / ours' and 'ratio' cells of one row, for each (what, scale) in measures."""
    cells = []
    for what, scale in measures:
        theirs, ours = results.get((what, IMPLS[1], case)), results.get((what, IMPLS[0], case))
        if theirs is None or ours is None:
            cells += ["not run", ""]
            continue
        cells += [f"{theirs * scale:.3g} / {ours * scale:.3g}", f"{theirs / max(ours, 1e-12):.1f}x"]
    return cells


class _RatioTable:
    """Prints a ratio table in pytest's terminal summary, after the benchmark tables."""

    def __init__(self, lines):
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter):
        for line in self.lines():
            terminalreporter.write_line(line)


def show_ratio_table(request, name: str, lines) -> None:
    """Register (once per run) the printing of lines() at the end of the run."""
    if not request.config.pluginmanager.has_plugin(name):
        request.config.pluginmanager.register(_RatioTable(lines), name)
