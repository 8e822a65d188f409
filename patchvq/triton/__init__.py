"""Triton kernels of the patchvq ops, each beside its launcher; torch and triton only.

On a GPU each kernel is autotuned over a few launch configurations sized for recent NVIDIA
parts (A100/H100/H200); under the Triton interpreter (TRITON_INTERPRET=1, CPU tensors) one
small configuration keeps the tests quick. The interpreter must be chosen before this
package is imported, since kernels are bound to it when they are defined.
"""

import os

import triton

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def launch_configs(gpu: list[triton.Config], interpreted: triton.Config) -> list[triton.Config]:
    """The autotuning candidates: all of `gpu` on a device, only `interpreted` under the interpreter."""
    return [interpreted] if INTERPRETED else gpu
