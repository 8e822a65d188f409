"""Run one search method once in this fresh process and print its extra peak memory (MiB) as JSON.

Usage: python benchmarks/peak_memory.py METHOD N D K THREADS

Method: the kernel's peak resident set size (VmHWM) is reset through /proc/self/clear_refs
after the inputs exist and every library is loaded and warmed up on a tiny search; the extra
peak is VmHWM after one full-size call minus VmRSS before it (outputs included). Where the
reset is not allowed, the ru_maxrss delta is reported instead (it can only under-report when
an earlier transient allocation was larger) and "how" in the output says which.
bench_memory.py runs it with MALLOC_MMAP_THRESHOLD_ fixed, so freed large blocks leave the
resident set instead of pre-touching memory for the measured call.
"""

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest
import torch
from bench_nearest_code import inputs, searcher


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    method, n, d, k, threads = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(threads)
    tiny = searcher(method, *inputs(64, d, 16))
    tiny()
    fn = searcher(method, *inputs(n, d, k))
    before_rss = status_kib("VmRSS")
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if reset_peak():
        fn()
        extra_kib, how = status_kib("VmHWM") - before_rss, "VmHWM after clear_refs minus VmRSS"
    else:
        fn()
        extra_kib, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max, "ru_maxrss delta"
    print(json.dumps({"method": method, "extra_mib": extra_kib / 1024, "how": how, "threads": conftest.THREADS}))


if __name__ == "__main__":
    main()
