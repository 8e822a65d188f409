"""The Triton kernels' registration as patchvq_triton ops: lookup, backend routing, opcheck,
torch.compile and autograd.

On a machine without a GPU they run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py before Triton is imported); with
PATCHVQ_TEST_DEVICE=cuda on CUDA tensors. tests/test_gpu_kernels.py checks what the kernels
compute.
"""

import os

import pytest
import torch
from conftest import triton_missing

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason=str(triton_missing()))

if triton_missing() is None:
    from patchvq import reference
    from patchvq.ops import backend, triton_ops


@pytest.fixture
def device(device) -> torch.device:
    """The test device; CPU tensors only under the interpreter."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton runs CPU tensors only under TRITON_INTERPRET=1")
    return device


def op(name):
    return triton_ops.lookup(name)


def test_lookup_gives_a_registered_op_for_every_schema():
    for name in triton_ops.OPS:
        found = op(name)
        assert found is getattr(torch.ops.patchvq_triton, name).default
        assert found._schema.name == f"patchvq_triton::{name}"
    with pytest.raises(AttributeError, match="no Triton kernel"):
        triton_ops.lookup("nearest_codes")


def test_forced_backend_routes_public_functions_to_triton(device, monkeypatch):
    monkeypatch.setenv("PATCHVQ_BACKEND", "triton")
    name, fn = backend.choose("nearest_code", device)
    assert name == "triton" and fn is op("nearest_code")
    from patchvq.ops import nearest_code

    x, cb = torch.randn(9, 5, device=device), torch.randn(4, 5, device=device)
    assert torch.equal(nearest_code(x, cb)[0], reference.nearest_code(x, cb)[0])


def test_opcheck_every_op(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(21, 6, generator=g).to(device)
    cb = torch.randn(5, 6, generator=g).to(device)
    torch.library.opcheck(op("nearest_code"), (x, cb, "l2", True))
    index = torch.randint(-1, 5, (21,), generator=g).to(device)
    torch.library.opcheck(op("code_stats"), (x, index, 5))
    levels = [torch.randn(2, 6, 4, 4, generator=g).to(device), torch.randn(2, 6, 2, 2, generator=g).to(device)]
    choice = torch.randint(0, 2, (2, 2, 2), generator=g).to(device)
    torch.library.opcheck(op("patch_assign"), (levels, choice, cb, "l2", True))
    grad = torch.randn(2, 6, 4, 4, generator=g).to(device)
    torch.library.opcheck(op("patch_assign_backward"), (grad, choice, [1, 2]))


def test_torch_compile_traces_the_op_without_graph_breaks(device):
    def assign(x, cb):
        index, distance = op("nearest_code")(x, cb, "l2", True)
        return index, distance.sqrt()

    compiled = torch.compile(assign, backend="aot_eager", fullgraph=True)
    x, cb = torch.randn(13, 7, device=device), torch.randn(6, 7, device=device)
    got, want = compiled(x, cb), assign(x, cb)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_torch_compile_through_the_public_function_with_gradients(device, monkeypatch):
    monkeypatch.setenv("PATCHVQ_BACKEND", "triton")
    from patchvq.ops import nearest_code

    compiled = torch.compile(lambda x, cb: nearest_code(x, cb)[1].sum(), backend="aot_eager", fullgraph=True)
    x = torch.randn(11, 6, device=device, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(5, 6, device=device, dtype=torch.float64)
    compiled(x, cb).backward()
    index = reference.nearest_code(x.detach(), cb)[0]
    torch.testing.assert_close(x.grad, 2 * (x.detach() - cb[index]))


def test_gradients_of_the_distance_flow_through_the_registered_autograd(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    cb = torch.randn(5, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: op("nearest_code")(a, b, "l2", True)[1], (x, cb))
    assert torch.autograd.gradcheck(lambda a, b: op("nearest_code")(a, b, "cosine", True)[1], (x, cb))
