"""The patchvq:: ops, defined when patchvq is imported (nothing is compiled for that).

Each op has one schema, one fake kernel (patchvq/ops/fake.py), one autograd registration
(patchvq/ops/gradients.py) and one kernel for CPU and CUDA tensors that checks its arguments
and runs the backend chosen for the device (patchvq/ops/backend.py): the compiled kernels
(private namespace patchvq_native), Triton (patchvq/ops/triton_backend.py) or the reference.
So torch.ops.patchvq.<op> exists right after import, torch.compile traces it as one op, and
torch.library.opcheck sees the same op whichever backend runs.
"""

import torch

from patchvq.ops import backend, fake, gradients, inputs, validate

NAMESPACE = "patchvq"
SCHEMAS = {
    "nearest_code": '(Tensor x, Tensor codebook, str metric="l2", bool check_finite=True) '
    "-> (Tensor index, Tensor distance)",
    "code_stats": "(Tensor x, Tensor index, int num_codes) -> (Tensor count, Tensor sum)",
    "patch_assign": '(Tensor[] levels, Tensor choice, Tensor codebook, str metric="l2", bool check_finite=True) '
    "-> (Tensor z_q, Tensor[] index, Tensor distance)",
    "patch_assign_backward": "(Tensor grad_z_q, Tensor choice, int[] factors) -> Tensor[]",
    "topk_code": '(Tensor x, Tensor codebook, int k=1, str metric="l2", float temperature=0., int seed=0, '
    "int offset=0) -> Tensor",
    "code_logsumexp": '(Tensor x, Tensor codebook, str metric="l2", float scale=1.) -> Tensor',
    "code_prob_sum": '(Tensor x, Tensor codebook, int group=1, str metric="l2", float scale=1.) -> Tensor',
}
DEVICES = ("cpu", "cuda")


def nearest_code(x, codebook, metric="l2", check_finite=True):
    validate.nearest_code(x, codebook, metric)
    return backend.implementation("nearest_code", x.device)(x, codebook, metric, check_finite)


def code_stats(x, index, num_codes):
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


def patch_assign(levels, choice, codebook, metric="l2", check_finite=True):
    validate.patch_levels(levels, choice, codebook, metric)
    run = backend.implementation("patch_assign", codebook.device)
    z_q, indices, distance = run(list(levels), choice.to(torch.int64), codebook, metric, check_finite)
    # Contiguous, as the fake kernel says (the reference builds z_q through permuted views).
    return z_q.contiguous(), [i.contiguous() for i in indices], distance.contiguous()


def patch_assign_backward(grad_z_q, choice, factors):
    validate.backward_arguments(grad_z_q, choice, factors)
    run = backend.implementation("patch_assign_backward", grad_z_q.device)
    return run(grad_z_q, choice.to(torch.int64), list(factors))


def _check_finite(x, codebook):
    """NaN or Inf in the inputs of topk_code / code_logsumexp / code_prob_sum is an error (one
    pass over each; on a GPU a device-side check, no synchronisation)."""
    inputs.check_finite(x, "x")
    inputs.check_finite(codebook, "codebook")


def topk_code(x, codebook, k=1, metric="l2", temperature=0.0, seed=0, offset=0):
    validate.topk_code(x, codebook, k, metric, temperature, seed, offset)
    _check_finite(x, codebook)
    return backend.implementation("topk_code", x.device)(x, codebook, k, metric, temperature, seed, offset)


def code_logsumexp(x, codebook, metric="l2", scale=1.0):
    validate.code_logsumexp(x, codebook, metric, scale)
    _check_finite(x, codebook)
    return backend.implementation("code_logsumexp", x.device)(x, codebook, metric, scale)


def code_prob_sum(x, codebook, group=1, metric="l2", scale=1.0):
    validate.code_prob_sum(x, codebook, group, metric, scale)
    _check_finite(x, codebook)
    return backend.implementation("code_prob_sum", x.device)(x, codebook, group, metric, scale)


_KERNELS = {
    "nearest_code": (nearest_code, fake.nearest_code, gradients.nearest_code_backward, gradients.nearest_code_setup),
    "code_stats": (code_stats, fake.code_stats, gradients.code_stats_backward, gradients.code_stats_setup),
    "patch_assign": (patch_assign, fake.patch_assign, gradients.patch_assign_backward, gradients.patch_assign_setup),
    "patch_assign_backward": (
        patch_assign_backward, fake.patch_assign_backward, gradients.backward_backward, gradients.backward_setup,
    ),
    "topk_code": (topk_code, fake.topk_code, gradients.topk_code_backward, gradients.topk_code_setup),
    "code_logsumexp": (
        code_logsumexp, fake.code_logsumexp, gradients.code_logsumexp_backward, gradients.code_logsumexp_setup,
    ),
    "code_prob_sum": (
        code_prob_sum, fake.code_prob_sum, gradients.code_prob_sum_backward, gradients.code_prob_sum_setup,
    ),
}


def _define() -> None:
    lib = torch.library.Library(NAMESPACE, "DEF")
    for name, schema in SCHEMAS.items():
        kernel, fake_kernel, backward, setup = _KERNELS[name]
        qualname = f"{NAMESPACE}::{name}"
        lib.define(name + schema)
        torch.library.register_kernel(qualname, DEVICES, kernel, lib=lib)
        torch.library.register_fake(qualname, fake_kernel, lib=lib)
        torch.library.register_autograd(qualname, backward, setup_context=setup, lib=lib)
    _LIBRARIES.append(lib)


_LIBRARIES: list[torch.library.Library] = []  # keeps the registrations alive
_define()
