"""The Triton backend behind the public patchvq:: ops: routing, opcheck, torch.compile and autograd.

The Triton kernels are no op of their own: with PATCHVQ_BACKEND=triton the CPU/CUDA kernel of
torch.ops.patchvq.<op> runs them. On a machine without a GPU they run on CPU tensors under the
Triton interpreter (TRITON_INTERPRET=1, set by conftest.py before Triton is imported); with
PATCHVQ_TEST_DEVICE=cuda on CUDA tensors. tests/test_gpu_kernels.py checks what they compute.
"""

import os

import pytest
import torch
from conftest import triton_missing

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason=str(triton_missing()))

if triton_missing() is None:
    import patchvq
    from patchvq import reference
    from patchvq.ops import backend, triton_backend


@pytest.fixture
def device(device, monkeypatch) -> torch.device:
    """The test device, with the Triton backend forced; CPU tensors only under the interpreter."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton runs CPU tensors only under TRITON_INTERPRET=1")
    monkeypatch.setenv("PATCHVQ_BACKEND", "triton")
    return device


def test_forced_backend_routes_the_public_op_to_triton(device):
    for name in backend.OPS:
        chosen, fn = backend.choose(name, device)
        assert chosen == "triton" and fn is getattr(triton_backend, name)
    x, cb = torch.randn(9, 5, device=device), torch.randn(4, 5, device=device)
    assert torch.equal(patchvq.nearest_code(x, cb)[0], reference.nearest_code(x, cb)[0])
    assert torch.equal(torch.ops.patchvq.nearest_code(x, cb)[0], reference.nearest_code(x, cb)[0])
    assert not hasattr(torch.ops, "patchvq_triton") or not hasattr(torch.ops.patchvq_triton, "nearest_code")


def test_opcheck_every_op(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(21, 6, generator=g).to(device)
    cb = torch.randn(5, 6, generator=g).to(device)
    torch.library.opcheck(torch.ops.patchvq.nearest_code.default, (x, cb, "l2", True))
    index = torch.randint(-1, 5, (21,), generator=g).to(device)
    torch.library.opcheck(torch.ops.patchvq.code_stats.default, (x, index, 5))
    levels = [torch.randn(2, 6, 4, 4, generator=g).to(device), torch.randn(2, 6, 2, 2, generator=g).to(device)]
    choice = torch.randint(0, 2, (2, 2, 2), generator=g).to(device)
    torch.library.opcheck(torch.ops.patchvq.patch_assign.default, (levels, choice, cb, "l2", True))
    grad = torch.randn(2, 6, 4, 4, generator=g).to(device)
    torch.library.opcheck(torch.ops.patchvq.patch_assign_backward.default, (grad, choice, [1, 2]))


def test_torch_compile_traces_the_op_without_graph_breaks(device):
    def assign(x, cb):
        index, distance = torch.ops.patchvq.nearest_code(x, cb, "l2", True)
        return index, distance.sqrt()

    compiled = torch.compile(assign, backend="aot_eager", fullgraph=True)
    x, cb = torch.randn(13, 7, device=device), torch.randn(6, 7, device=device)
    got, want = compiled(x, cb), assign(x, cb)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_torch_compile_through_the_public_function_with_gradients(device):
    compiled = torch.compile(lambda x, cb: patchvq.nearest_code(x, cb)[1].sum(), backend="aot_eager", fullgraph=True)
    x = torch.randn(11, 6, device=device, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(5, 6, device=device, dtype=torch.float64)
    compiled(x, cb).backward()
    index = reference.nearest_code(x.detach(), cb)[0]
    torch.testing.assert_close(x.grad, 2 * (x.detach() - cb[index]))


@pytest.mark.slow
def test_gradients_of_the_distance_flow_through_the_registered_autograd(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    cb = torch.randn(5, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: patchvq.nearest_code(a, b, "l2")[1], (x, cb))
    assert torch.autograd.gradcheck(lambda a, b: patchvq.nearest_code(a, b, "cosine")[1], (x, cb))


def test_distance_gradient_matches_the_closed_form(device):
    """The quick check kept in the default run: d/dx ||x - e||^2 = 2 (x - e) for the winning e."""
    x = torch.randn(9, 4, dtype=torch.float64, device=device, requires_grad=True)
    cb = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    index, distance = patchvq.nearest_code(x, cb)
    distance.sum().backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - cb.detach()[index]))
    want = torch.zeros_like(cb).index_add_(0, index, -2 * (x.detach() - cb.detach()[index]))
    torch.testing.assert_close(cb.grad, want)
