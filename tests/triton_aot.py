"""Ahead-of-time compilation of every Triton kernel for NVIDIA targets, without a GPU.

Each kernel is compiled (Triton's own AOT path: ASTSource + triton.compile for a GPUTarget, down
to a cubin through the ptxas Triton ships) for every launch configuration it can be given on a
GPU: the autotuning candidates its prune hook keeps for each dtype, its heuristics, and the
launchers' fixed tiles; each with the argument specialisations a launch on contiguous tensors
gets (pointers and multiples of 16 marked divisible by 16, unit strides constant) and once
without them (strided inputs). For each it reports registers, spill memory, shared memory and
whether the code multiplies on tensor cores, so compile errors, spills and oversized tiles show
here rather than on the first GPU run.

The Triton interpreter must be off (TRITON_INTERPRET unset) before patchvq.triton is imported:
run this as a script, `python tests/triton_aot.py --arch 80 90 [--json FILE]`.
"""

import argparse
import contextlib
import io
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# A few words spilled (outside the hot loop, typically) cost nothing measurable; more means a tile
# too large for the register file.
SPILL_ALLOWANCE = 32
# Largest shared memory one block may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

_TYPE_NAMES = {
    torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1",
}


@dataclass(frozen=True)
class Pointer:
    """A tensor argument: its element type (the data pointer is taken as 16-byte aligned when aligned)."""

    dtype: torch.dtype


@dataclass
class Specialization:
    """One kernel compiled with one set of arguments (Python values as a launch would pass them)."""

    name: str
    kernel: object
    args: dict
    num_warps: int
    num_stages: int = 3
    aligned: bool = True
    tensor_cores: bool | None = None  # True: must use them; False: must not; None: either
    tags: dict = field(default_factory=dict)


def jit_function(kernel) -> triton.runtime.jit.JITFunction:
    """The JITFunction under a kernel's autotune and heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def heuristic_values(kernel, args: dict) -> dict:
    """The values the kernel's @triton.heuristics wrappers derive from args, in launch order."""
    derived = dict(args)
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        if isinstance(kernel, triton.runtime.autotuner.Heuristics):
            for name, rule in kernel.values.items():
                derived[name] = rule(derived)
        kernel = kernel.fn
    return {k: v for k, v in derived.items() if k not in args}


def signature(spec: Specialization) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as a launch specialises the arguments: constexpr parameters,
    integers equal to 1 and flags become constants; pointers and integers divisible by 16 are
    marked so (unless the specialisation is the unaligned one)."""
    fn = jit_function(spec.kernel)
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = spec.args[name]
        if fn.params[i].is_constexpr or isinstance(value, (bool, tl.dtype)) or (spec.aligned and value == 1):
            sig[name], constexprs[name] = "constexpr", value
        elif isinstance(value, Pointer):
            sig[name] = "*" + _TYPE_NAMES[value.dtype]
            if spec.aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            sig[name] = "fp32"
        elif isinstance(value, int):
            sig[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if spec.aligned and value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"{spec.name}: cannot type argument {name}={value!r}")
    return sig, constexprs, attrs


def resource_usage(ptxas_log: str) -> dict:
    """Registers, stack frame and spill bytes from the ptxas log (`-v`) of one kernel."""
    usage = {"registers": int(re.search(r"Used (\d+) registers", ptxas_log).group(1))}
    for key, pattern in (("stack", r"(\d+) bytes stack frame"), ("spill_stores", r"(\d+) bytes spill stores"),
                         ("spill_loads", r"(\d+) bytes spill loads")):
        usage[key] = int(re.search(pattern, ptxas_log).group(1))
    return usage


def compile_one(spec: Specialization, arch: int) -> dict:
    """Compile spec for sm_<arch>; the report row (with "error" when it does not compile)."""
    row = {"name": spec.name, "arch": arch, "num_warps": spec.num_warps, "num_stages": spec.num_stages,
           "aligned": spec.aligned, "tensor_cores_expected": spec.tensor_cores, **spec.tags}
    try:
        sig, constexprs, attrs = signature(spec)
        source = ASTSource(fn=jit_function(spec.kernel), signature=sig, constexprs=constexprs, attrs=attrs)
        target = GPUTarget("cuda", arch, 32)
        options = triton.compiler.make_backend(target).parse_options(
            {"num_warps": spec.num_warps, "num_stages": spec.num_stages})
        log = io.StringIO()
        with contextlib.redirect_stdout(log), knobs.nvidia.scope(), knobs.compilation.scope():
            knobs.nvidia.dump_ptxas_log = True  # Triton prints the log of its own ptxas run,
            knobs.compilation.always_compile = True  # which a cached kernel would skip
            compiled = triton.compile(source, target=target, options=options.__dict__)
    except Exception as exc:  # noqa: BLE001 - the report names every failure
        row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
        return row
    ptx = compiled.asm["ptx"]
    row.update(resource_usage(log.getvalue()))
    row["shared"] = compiled.metadata.shared
    row["tensor_cores"] = bool(re.search(r"\b(w?gmma|mma)\.", ptx))
    row["tf32"] = ".tf32" in ptx
    return row


def search_specializations() -> list[Specialization]:
    """nearest_code's search kernel: every autotuning candidate for each dtype and row width
    (resident rows, chunked rows, a width no multiple of 16), row-gathered and strided once
    each; and its winner-distance kernel."""
    from patchvq.triton import nearest_code as module

    kernel = module._search_kernel
    specs = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        acc = tl.float64 if dtype == torch.float64 else tl.float32
        acc_torch = torch.float64 if dtype == torch.float64 else torch.float32
        for d in (64, 128, 200, 256, 512):
            n, k = 1 << 20, 8192
            args = {
                "x_ptr": Pointer(dtype), "row_offset_ptr": Pointer(torch.int64), "codebook_ptr": Pointer(dtype),
                "code_norm_ptr": Pointer(acc_torch), "frame_ptr": Pointer(acc_torch), "index_ptr": Pointer(torch.int64),
                "best_ptr": Pointer(acc_torch),
                "N": n, "K": k, "D": d, "SIZE_CLASS": module.size_class(n, k),
                "stride_xn": d, "stride_xd": 1, "stride_ck": d, "stride_cd": 1,
                "GATHER": False, "ACC": acc, "UPCAST": False, "FMA_DOT": dtype == torch.float64,
                "NAN_TO_INF": False, "FRAME": dtype in (torch.float32, torch.float64),
            }
            configs = kernel.early_config_prune(kernel.configs, args)
            for c, config in enumerate(configs):
                launch = {**args, **config.kwargs}
                launch.update(heuristic_values(kernel, launch))
                tags = {"dtype": str(dtype).removeprefix("torch."), "D": d, **config.kwargs}
                tensor_cores = dtype in (torch.bfloat16, torch.float16) or (False if dtype == torch.float32 else None)
                variants = [("", launch, True)]
                if c == 0 and d == 64:
                    variants += [("gather", {**launch, "GATHER": True}, True),
                                 ("strided", {**launch, "stride_xn": 3 * d + 1, "stride_xd": 3}, False)]
                for variant, variant_args, aligned in variants:
                    specs.append(Specialization(
                        f"nearest_code.search{'.' + variant if variant else ''}", kernel, variant_args,
                        config.num_warps, config.num_stages, aligned, tensor_cores,
                        {**tags, "variant": variant or "contiguous"},
                    ))
        if dtype in (torch.float32, torch.float64):
            specs.append(Specialization(
                "nearest_code.far_rows", module._far_rows_kernel,
                {"x_ptr": Pointer(dtype), "row_offset_ptr": Pointer(torch.int64), "codebook_ptr": Pointer(dtype),
                 "frame_ptr": Pointer(acc_torch), "best_ptr": Pointer(acc_torch), "index_ptr": Pointer(torch.int64),
                 "N": 1 << 20, "K": 8192, "D": 64, "stride_xn": 64, "stride_xd": 1, "stride_ck": 64, "stride_cd": 1,
                 "GATHER": False, "ACC": acc, "BLOCK_M": 64, "BLOCK_D": 64},
                num_warps=4, tensor_cores=False, tags={"dtype": str(dtype).removeprefix("torch.")},
            ))
        specs.append(Specialization(
            "nearest_code.winner_distance", module._winner_distance_kernel,
            {"x_ptr": Pointer(dtype), "row_offset_ptr": Pointer(torch.int64), "codebook_ptr": Pointer(dtype),
             "index_ptr": Pointer(torch.int64), "distance_ptr": Pointer(acc_torch), "N": 1 << 20, "D": 64,
             "stride_xn": 64, "stride_xd": 1, "stride_ck": 64, "stride_cd": 1,
             "GATHER": False, "COSINE": False, "ACC": acc, **module.winner_distance_blocks(64)},
            num_warps=4, tensor_cores=False, tags={"dtype": str(dtype).removeprefix("torch.")},
        ))
    return specs


def code_stats_specializations() -> list[Specialization]:
    from patchvq.triton import code_stats as module

    specs = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for d in (64, 200):
            specs.append(Specialization(
                "code_stats", module._code_stats_kernel,
                {"x_ptr": Pointer(dtype), "index_ptr": Pointer(torch.int64), "count_ptr": Pointer(acc),
                 "sum_ptr": Pointer(acc), "N": 1 << 20, "D": d, "stride_xn": d, "stride_xd": 1,
                 "ACC": tl.float64 if acc == torch.float64 else tl.float32, **module.blocks(d)},
                num_warps=4, tensor_cores=False, tags={"dtype": str(dtype).removeprefix("torch."), "D": d},
            ))
    return specs


def patch_assign_specializations() -> list[Specialization]:
    from patchvq.triton import patch_assign as module

    grid = {"B": 8, "D": 64, "H": 64, "W": 64, "Hl": 32, "Wl": 32, "Hc": 8, "Wc": 8, "level": 2, "factor": 2,
            "patch": 8}
    specs = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        name = str(dtype).removeprefix("torch.")
        specs.append(Specialization(
            "patch_assign.paint", module._paint_kernel,
            {"z_q_ptr": Pointer(dtype), "distance_ptr": Pointer(acc), "choice_ptr": Pointer(torch.int64),
             "index_ptr": Pointer(torch.int64), "level_distance_ptr": Pointer(acc), "codebook_ptr": Pointer(dtype),
             **grid, "stride_ck": 64, "stride_cd": 1, **module.paint_blocks(64)},
            num_warps=4, tensor_cores=False, tags={"dtype": name},
        ))
        specs.append(Specialization(
            "patch_assign.backward", module._backward_kernel,
            {"grad_ptr": Pointer(dtype), "choice_ptr": Pointer(torch.int64), "out_ptr": Pointer(dtype), **grid,
             "ACC": tl.float64 if acc == torch.float64 else tl.float32, "BLOCK": module.BACKWARD_BLOCK},
            num_warps=4, tensor_cores=False, tags={"dtype": name},
        ))
    return specs


def code_softmax_specializations() -> list[Specialization]:
    """topk_code (plain and Gumbel-perturbed), code_logsumexp and code_prob_sum at the launchers'
    GPU tile, for both accumulation types (inputs arrive cast to them) and both metrics."""
    from patchvq.triton import code_softmax as module

    specs = []
    for acc in (torch.float32, torch.float64):
        block_m, block_n, block_d, warps = module._GPU_TILE[acc]
        tl_acc = tl.float64 if acc == torch.float64 else tl.float32
        for dot in (False, True):
            common = {"x_ptr": Pointer(acc), "cb_ptr": Pointer(acc), "cn_ptr": Pointer(acc), "N": 1 << 20, "K": 8192,
                      "D": 64, "stride_xn": 64, "stride_xd": 1, "stride_ck": 64, "stride_cd": 1, "ACC": tl_acc,
                      "DOT": dot, "FMA_DOT": acc == torch.float64, "BLOCK_M": block_m, "BLOCK_N": block_n,
                      "BLOCK_D": block_d}
            tags = {"dtype": str(acc).removeprefix("torch."), "metric": "dot" if dot else "l2"}
            specs.append(Specialization(
                "code_softmax.logsumexp", module._logsumexp_kernel,
                {**common, "out_ptr": Pointer(acc), "scale": 0.5}, warps, tensor_cores=False, tags=tags))
            specs.append(Specialization(
                "code_softmax.prob_sum", module._prob_sum_kernel,
                {**common, "lse_ptr": Pointer(acc), "out_ptr": Pointer(acc), "group": 16, "scale": 0.5}, warps,
                tensor_cores=False, tags=tags))
            for noisy in (False, True):
                specs.append(Specialization(
                    "code_softmax.topk", module._topk_kernel,
                    {**common, "index_ptr": Pointer(torch.int64), "k": 4, "inverse_t": 2.0, "seed_lo": 305419896,
                     "seed_hi": 7, "offset_lo": 64, "offset_hi": 3, "NOISY": noisy}, warps, tensor_cores=False,
                    tags={**tags, "noisy": int(noisy)}))
    return specs


def specializations() -> list[Specialization]:
    """Every kernel of patchvq.triton in every configuration a GPU launch can give it."""
    return (search_specializations() + code_stats_specializations() + patch_assign_specializations()
            + code_softmax_specializations())


def uncovered_kernels() -> list[str]:
    """Kernels of patchvq.triton (module attributes named *_kernel) that no specialisation compiles."""
    import importlib
    import pkgutil

    import patchvq.triton

    covered = {jit_function(spec.kernel) for spec in specializations()}
    missing = []
    for info in pkgutil.iter_modules(patchvq.triton.__path__):
        module = importlib.import_module(f"patchvq.triton.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and not isinstance(value, type) and jit_function(value) not in covered:
                missing.append(f"{info.name}.{name}")
    return missing


def problems(row: dict) -> list[str]:
    """What is wrong with one compiled kernel: no cubin, spills, too much shared memory, or
    multiplications on the wrong units (TF32 anywhere, tensor cores where products must be IEEE)."""
    if "error" in row:
        return [f"does not compile: {row['error']}"]
    found = []
    if max(row["spill_stores"], row["spill_loads"]) > SPILL_ALLOWANCE:
        found.append(f"spills ({row['spill_stores']} bytes stored, {row['spill_loads']} loaded, "
                     f"{row['registers']} registers)")
    limit = SHARED_LIMIT.get(row["arch"])
    if limit is not None and row["shared"] > limit:
        found.append(f"needs {row['shared']} bytes of shared memory, sm_{row['arch']} allows {limit}")
    if row["tf32"]:
        found.append("multiplies in TF32")
    expected = row["tensor_cores_expected"]
    if expected is not None and row["tensor_cores"] != expected:
        found.append("does not use tensor cores" if expected else "uses tensor cores")
    return found


def _compile_job(job: tuple[int, int]) -> dict:
    index, arch = job
    return compile_one(specializations()[index], arch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    parser.add_argument("--json", type=Path, help="write every report row here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("triton_aot.py compiles for GPUs: unset TRITON_INTERPRET")
    missing = uncovered_kernels()
    if missing:
        print(f"kernels without a specialisation here: {', '.join(missing)}")
    jobs = [(i, arch) for arch in args.arch for i in range(len(specializations()))]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_compile_job, jobs))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = 0
    for row in rows:
        issues = problems(row)
        failed += bool(issues)
        resources = "" if "error" in row else f"{row['registers']:3d} regs {row['shared']:6d} B shared"
        label = " ".join(f"{k}={row[k]}" for k in row if k not in {"name", "arch", "error"} and not isinstance(
            row[k], bool) and k not in {"registers", "stack", "spill_stores", "spill_loads", "shared", "tensor_cores_expected"})
        print(f"sm_{row['arch']} {row['name']:38s} {resources} {label}" + ("  <- " + "; ".join(issues) if issues else ""))
    print(f"{len(rows)} kernels compiled for sm_{', sm_'.join(map(str, args.arch))}: {failed} with problems")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
