"""What this installation of patchvq can run: versions, compiler, SIMD, CUDA, Triton, backends."""

import importlib.util
import platform
import shutil
import subprocess

import torch

from patchvq.ops import backend, native

OPS = ("nearest_code", "code_stats", "patch_assign", "topk_code", "code_logsumexp", "code_prob_sum")


def cpu_features() -> list[str]:
    """The SIMD extensions this CPU reports (Linux /proc/cpuinfo), widest first."""
    wanted = ["avx512_bf16", "amx_tile", "avx512f", "avx2", "fma", "neon", "asimd"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return []
    return [w for w in wanted if w in flags]


def compiler() -> str:
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        return "none found"
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cxx} (unusable: {exc})"
    return out.splitlines()[0] if out else cxx


def triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


def collect(build: bool = True) -> dict:
    """Everything `python -m patchvq info` shows. build=True builds the kernels to report on them."""
    # Imported here: the models layer itself imports this module (cpu_features), so a top-level
    # import of a model module would point the dependency back up.
    from patchvq.models import presets

    info = {
        "patchvq": importlib.import_module("patchvq").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compiler": compiler(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_features": ", ".join(cpu_features()) or "none detected",
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else f"not available (torch CUDA {torch.version.cuda})",
        "triton": triton_version() or "not installed",
        "backend_switch": backend.forced() or "auto",
        "presets": ", ".join(presets.names()) or "none",
    }
    if build:
        try:
            info["native_build"] = dict(native.cpu_extension().build_info())
        except native.NativeUnavailable as exc:
            info["native_build"] = f"unavailable: {exc}"
    if not build:
        return info
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for op in OPS:
            try:
                name = backend.choose(op, torch.device(device))[0]
            except Exception as exc:  # noqa: BLE001 - info reports every failure instead of stopping
                name = f"error: {exc}"
            info[f"backend[{op}, {device}]"] = name
    return info


def format_info(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {str(v).strip().splitlines()[0] if str(v).strip() else v}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
