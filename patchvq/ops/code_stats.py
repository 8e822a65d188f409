"""Public code_stats: per-code counts and sums for EMA updates, without an N x K one-hot."""

import torch

from patchvq.ops import backend, native, validate


def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count float[K], sum float[K, D]) of the rows of x[N, D] assigned to each code by index int64[N].

    A negative index leaves its row out (masked positions). Outputs are float32 (float64 for
    float64 x). No gradient flows through the statistics. The GPU kernels add with atomics, so
    their sums agree with the reference to rounding and may differ in the last bits from run to
    run; under `torch.use_deterministic_algorithms(True)` GPU tensors take the reference instead
    (torch's deterministic index_add_), bit-reproducible, and a forced fast backend is an error.
    """
    validate.code_stats(x, index, num_codes)
    if needs_reproducible_sums(x.device):
        if backend.forced() not in (None, "reference"):
            raise RuntimeError(
                f"patchvq: code_stats on {x.device.type} with {backend.ENV_VAR}={backend.forced()} adds with "
                "atomics and is not deterministic, but torch.use_deterministic_algorithms(True) is set; unset "
                f"{backend.ENV_VAR} (the reference then runs) or allow nondeterministic algorithms"
            )
        return backend.reference("code_stats")(x, index, num_codes)
    return backend.implementation("code_stats", x.device)(x, index, num_codes)


def needs_reproducible_sums(device: torch.device) -> bool:
    """True where the fast kernels' sums are not reproducible (GPUs: atomics) and torch has been
    asked for deterministic algorithms."""
    return device.type != "cpu" and torch.are_deterministic_algorithms_enabled()


def fake(x, index, num_codes):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(num_codes, dtype=acc), x.new_empty(num_codes, x.shape[1], dtype=acc)


@native.on_load
def _register() -> None:
    torch.library.register_fake("patchvq::code_stats", fake)
