"""The patchvq:: ops themselves: defined at import in one namespace, one kernel per device that
runs the chosen backend, fake kernels and autograd the same for every backend, one error type
per mistake whichever way in, and the ops modules' import structure."""

import ast
import warnings
from pathlib import Path

import pytest
import torch
from conftest import triton_missing
from test_loader import broken_compiler_env, run_python

import patchvq
from patchvq.ops import backend

OPS_DIR = Path(patchvq.__file__).parent / "ops"
OPS = ("nearest_code", "code_stats", "patch_assign", "patch_assign_backward", "topk_code", "code_logsumexp",
       "code_prob_sum")


@pytest.fixture(params=["reference", "native", "triton"])
def any_backend(request, monkeypatch) -> str:
    """Every backend this machine can run, forced through PATCHVQ_BACKEND, on CPU tensors
    (Triton under its interpreter); skipped with the reason where one cannot run."""
    name = request.param
    if name == "triton" and triton_missing():
        pytest.skip(triton_missing())
    try:
        backend.kernel(name, "nearest_code", "cpu")
    except backend.BackendUnavailable as exc:
        pytest.skip(f"{name} cannot run here: {exc}")
    monkeypatch.setenv(backend.ENV_VAR, name)
    return name


def small_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(21, 6, generator=g, dtype=dtype)
    cb = torch.randn(5, 6, generator=g, dtype=dtype)
    index = torch.randint(-1, 5, (21,), generator=g)
    levels = [torch.randn(2, 6, 4, 4, generator=g, dtype=dtype), torch.randn(2, 6, 2, 2, generator=g, dtype=dtype)]
    choice = torch.randint(0, 2, (2, 2, 2), generator=g)
    grad = torch.randn(2, 6, 4, 4, generator=g, dtype=dtype)
    return {
        "nearest_code": (x, cb, "l2", True),
        "code_stats": (x, index, 5),
        "patch_assign": (levels, choice, cb, "l2", True),
        "patch_assign_backward": (grad, choice, [1, 2]),
        "topk_code": (x, cb, 2, "l2", 0.5, 7, 1),
        "code_logsumexp": (x, cb, "dot", 0.5),
        "code_prob_sum": (x[:20], cb, 4, "l2", 0.5),
    }


def test_import_defines_every_op_without_a_compiler(tmp_path):
    code = (
        "import torch, patchvq\n"
        "from patchvq.ops import native\n"
        "for name in ('nearest_code', 'code_stats', 'patch_assign', 'patch_assign_backward', 'topk_code',\n"
        "             'code_logsumexp', 'code_prob_sum'):\n"
        "    op = getattr(torch.ops.patchvq, name).default\n"
        "    for key in ('CPU', 'CUDA', 'Meta', 'Autograd'):\n"
        "        assert op.has_kernel_for_dispatch_key(key), (name, key)\n"
        "print(native.is_loaded())\n"
    )
    result = run_python(code, tmp_path, broken_compiler_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_one_public_namespace():
    for name in OPS:
        assert getattr(torch.ops.patchvq, name).default._schema.name == f"patchvq::{name}"
    assert not hasattr(torch.ops.patchvq_triton, "nearest_code")


@pytest.mark.parametrize("op", OPS)
def test_opcheck_on_the_public_op_for_every_backend(any_backend, op):
    torch.library.opcheck(getattr(torch.ops.patchvq, op).default, small_inputs()[op])


def test_the_kernel_runs_the_chosen_backend(any_backend):
    args = small_inputs()["nearest_code"]
    assert backend.choose("nearest_code", args[0].device)[0] == any_backend
    index, distance = torch.ops.patchvq.nearest_code(*args)
    want = patchvq.reference.nearest_code(*args)
    assert torch.equal(index, want[0])
    torch.testing.assert_close(distance, want[1])


def _bad_calls():
    x, cb = torch.randn(6, 4), torch.randn(3, 4)
    index = torch.zeros(6, dtype=torch.int64)
    levels = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)]
    choice = torch.zeros(1, 2, 2, dtype=torch.int64)
    grad = torch.randn(1, 4, 4, 4)
    return [
        ("nearest_code", (x.long(), cb), TypeError, "x must be a floating"),
        ("nearest_code", (x, cb.int()), TypeError, "codebook must be a floating"),
        ("nearest_code", (x[0], cb), ValueError, "x must be 2-D"),
        ("nearest_code", (x, cb[:, :3]), ValueError, "D=4 but codebook has D=3"),
        ("nearest_code", (x, cb[:0]), ValueError, "codebook is empty"),
        ("nearest_code", (x, cb, "dot"), ValueError, "metric"),
        ("code_stats", (x, index.int(), 3), TypeError, "index must be an int64"),
        ("code_stats", (x, index[:4], 3), ValueError, r"index must be \[N\]"),
        ("code_stats", (x, index, 0), ValueError, "num_codes"),
        ("code_stats", (x.long(), index, 3), TypeError, "x must be a floating"),
        ("patch_assign", (levels, choice.float(), cb), TypeError, "choice must be an integer"),
        ("patch_assign", (levels, choice[:, :1], cb), ValueError, "choice must be"),
        ("patch_assign", ([levels[1], levels[0]], choice, cb), ValueError, "levels"),
        ("patch_assign", ([levels[0], levels[1].double()], choice, cb), TypeError, "dtype"),
        ("patch_assign", (levels, choice, cb[:, :3]), ValueError, "D="),
        ("patch_assign_backward", (grad, choice, [1, 3]), ValueError, "factors"),
        ("patch_assign_backward", (grad.long(), choice, [1, 2]), TypeError, "grad_z_q must be a floating"),
        ("patch_assign_backward", (grad, choice.float(), [1, 2]), TypeError, "choice must be an integer"),
    ]


@pytest.mark.parametrize("op, args, error, words", _bad_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_one_error_type_per_mistake_whichever_way_in(op, args, error, words):
    entries = [getattr(torch.ops.patchvq, op)]
    if op != "patch_assign_backward":
        public = getattr(patchvq, op)
        entries.append(public)
    for entry in entries:
        with pytest.raises(error, match=words):
            entry(*args)


def _bad_values():
    x, cb = torch.randn(6, 4), torch.randn(3, 4)
    levels = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)]
    nan_x = x.clone()
    nan_x[2, 1] = float("nan")
    inf_cb = cb.clone()
    inf_cb[1, 0] = float("inf")
    nan_levels = [levels[0].clone(), levels[1]]
    nan_levels[0][0, 1, 1, 1] = float("nan")
    return [
        ("nearest_code", (nan_x, cb), "x contains NaN or Inf"),
        ("nearest_code", (x, inf_cb), "codebook contains NaN or Inf"),
        ("code_stats", (x, torch.tensor([0, 1, 7, 2, -1, 0]), 3), "num_codes"),
        ("patch_assign", (levels, torch.full((1, 2, 2), 2), cb), "choice"),
        ("patch_assign", (levels, torch.full((1, 2, 2), -1), cb), "choice"),
        ("patch_assign", (nan_levels, torch.zeros(1, 2, 2, dtype=torch.int64), cb), "NaN or Inf"),
    ]


@pytest.mark.parametrize("op, args, words", _bad_values(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_bad_value_is_a_value_error_on_every_backend(any_backend, op, args, words):
    for entry in (getattr(torch.ops.patchvq, op), getattr(patchvq, op)):
        with pytest.raises(ValueError, match=words):
            entry(*args)


@pytest.mark.parametrize("op", OPS)
def test_meta_and_fake_tensors_never_read_a_value(op):
    args = small_inputs()[op]

    def to(device_or_mode, value):
        if isinstance(value, torch.Tensor):
            return device_or_mode(value)
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            return [device_or_mode(v) for v in value]
        return value

    real = getattr(torch.ops.patchvq, op)(*args)
    meta = getattr(torch.ops.patchvq, op)(*[to(lambda t: t.to("meta"), a) for a in args])
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = getattr(torch.ops.patchvq, op)(*[to(mode.from_tensor, a) for a in args])
    flat = lambda out: [t for o in (out if isinstance(out, tuple) else [out]) for t in (o if isinstance(o, list) else [o])]
    for r, m, f in zip(flat(real), flat(meta), flat(fake)):
        assert m.device.type == "meta" and m.shape == r.shape and m.dtype == r.dtype
        assert f.shape == r.shape and f.dtype == r.dtype
    if op in ("nearest_code", "code_stats", "patch_assign"):
        positional = args if op == "code_stats" else args[:-1]  # check_finite is keyword-only there
        public = getattr(patchvq, op)(*[to(lambda t: t.to("meta"), a) for a in positional])
        assert all(t.device.type == "meta" for t in flat(public))


def test_code_stats_outputs_never_require_grad(any_backend):
    x, index, k = small_inputs(torch.float64)["code_stats"]
    x.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for entry in (patchvq.code_stats, torch.ops.patchvq.code_stats):
            count, total = entry(x, index, k)
            assert not count.requires_grad and not total.requires_grad
            assert count.grad_fn is None and total.grad_fn is None
    # Through a graph that does need x's gradient, the statistics contribute none.
    loss = (x * 2).sum() + total.sum()
    loss.backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_straight_through_backward_calls_the_public_backward_op(any_backend):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    levels, choice, cb, metric, check = small_inputs(torch.float64)["patch_assign"]
    levels = [lv.requires_grad_() for lv in levels]
    z_q = torch.ops.patchvq.patch_assign(levels, choice, cb, metric, check)[0]
    with Record() as record:
        grads = torch.autograd.grad(z_q.sum(), levels)
    assert "patchvq.patch_assign_backward.default" in record.names
    # Each chosen vector gets the number of fine cells it covers; vectors not chosen get zero.
    assert torch.equal(grads[0][:, 0], (choice == 0).repeat_interleave(2, 1).repeat_interleave(2, 2).double())
    assert torch.equal(grads[1][:, 0], 4.0 * (choice == 1).double())


def test_backward_op_has_its_own_gradient():
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g, requires_grad=True)
    choice = torch.randint(0, 3, (2, 2, 2), generator=g)
    assert torch.autograd.gradcheck(lambda t: torch.ops.patchvq.patch_assign_backward(t, choice, [1, 2, 4]), (grad,))


def test_torch_compile_sees_one_op_whatever_the_backend(any_backend):
    def step(x, cb):
        index, distance = patchvq.nearest_code(x, cb)
        return index, distance.sqrt()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x, cb = small_inputs()["nearest_code"][:2]
    got, want = compiled(x, cb), step(x, cb)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---- structure of patchvq/ops ------------------------------------------------------------


def _imports(path: Path) -> list[str]:
    """Modules of ours that `path` imports, at any depth of the file (deferred imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [node.module] + names
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m for m in found if m.startswith("patchvq")]


def test_ops_modules_import_downwards_only():
    modules = {p.stem for p in OPS_DIR.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        text = (OPS_DIR / f"{name}.py").read_text()
        assert "importlib" not in text, f"patchvq/ops/{name}.py uses importlib"
        graph[name] = {m.split(".")[2] for m in _imports(OPS_DIR / f"{name}.py") if m.startswith("patchvq.ops.")}
        graph[name] &= modules

    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle in patchvq/ops: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for nxt in graph[node]:
            visit(nxt, trail + [node])
        state[node] = "done"

    for name in modules:
        visit(name, [])


def test_no_function_shadows_its_module_and_fast_paths_keep_off_the_reference():
    from patchvq import ops

    modules = {p.stem for p in OPS_DIR.glob("*.py")}
    for public in ops.__all__:
        assert public not in modules, f"patchvq.ops.{public} is both a function and a module"
    for path in OPS_DIR.glob("*.py"):
        if path.stem == "backend":  # picks the reference as a backend: the one allowed use
            continue
        bad = [m for m in _imports(path) if m.startswith("patchvq.reference")]
        assert not bad, f"patchvq/ops/{path.name} imports {bad}"
