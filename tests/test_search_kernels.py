"""The AVX2 and portable micro-kernels, each built on purpose for an older target (-march) in a
fresh subprocess and checked against the float64 oracle. Slow: each builds the extension."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK_BUILD = textwrap.dedent(
    """
    import sys
    import torch
    from patchvq.ops import sources

    march, expected = sys.argv[1], sys.argv[2]
    native_flags = sources.cpu_cflags()
    sources.cpu_cflags = lambda: [march if f.startswith("-march=") else f for f in native_flags]

    import patchvq
    from patchvq.ops import native
    from search_oracle import assert_nearest, exact_distances

    simd = native.cpu_extension().build_info()["simd"]
    assert simd == expected, f"built {simd!r}, wanted {expected!r}"
    g = torch.Generator().manual_seed(0)
    for n, k, d in [(0, 3, 4), (1, 1, 1), (13, 17, 5), (50, 33, 31), (97, 70, 64)]:
        for metric in ("l2", "cosine"):
            x = torch.randn(n, d * 2, generator=g)[:, ::2]
            codebook = torch.randn(k, d, generator=g) * 100
            index, distance = patchvq.nearest_code(x, codebook, metric)
            assert_nearest(index, distance, x, codebook, metric)
            index64, distance64 = patchvq.nearest_code(x.double(), codebook.double(), metric)
            assert_nearest(index64, distance64, x.double(), codebook.double(), metric, torch.float64)
    base = torch.randint(-2, 3, (20, 6), generator=g).float()
    codebook = torch.cat([base, base.flip(0), base])
    x = torch.randint(-3, 4, (150, 6), generator=g).float()
    assert torch.equal(patchvq.nearest_code(x, codebook)[0], exact_distances(x, codebook, "l2").argmin(1))
    # The search frame: a large common offset, and values near the ends of the range.
    x, codebook = 1000 + torch.rand(200, 64, generator=g), 1000 + torch.rand(40, 64, generator=g)
    index, distance = patchvq.nearest_code(x, codebook)
    assert_nearest(index, distance, x, codebook)
    for scale, dtype in ((1e20, torch.float32), (1e-20, torch.float32), (1e200, torch.float64)):
        x = (torch.randn(50, 16, generator=g, dtype=torch.float64) * scale).to(dtype)
        codebook = (torch.randn(20, 16, generator=g, dtype=torch.float64) * scale).to(dtype)
        expected = exact_distances(x.double() / scale, codebook.double() / scale, "l2").argmin(1)
        assert torch.equal(patchvq.nearest_code(x, codebook)[0], expected), scale
    # topk_code, code_logsumexp and code_prob_sum on the tile kernel of this target: integer inputs score exactly.
    from patchvq.reference import code_softmax as ref

    x = torch.randint(-3, 4, (61, 9), generator=g).float()
    codebook = torch.randint(-3, 4, (75, 9), generator=g).float()
    for metric in ("l2", "dot"):
        for k, temperature in ((1, 0.0), (5, 0.0), (1, 1.5), (3, 0.7)):
            got = patchvq.topk_code(x, codebook, k, metric, temperature=temperature, seed=3, offset=1)
            assert torch.equal(got, ref.topk_code(x, codebook, k, metric, temperature, 3, 1)), (metric, k)
        for dtype in (torch.float32, torch.float64):
            got = patchvq.code_logsumexp(x.to(dtype), codebook.to(dtype), metric, 0.3)
            want = ref.code_logsumexp(x.double(), codebook.double(), metric, 0.3)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
            got = patchvq.code_prob_sum(x[:60].to(dtype), codebook.to(dtype), 4, metric, 0.3)
            want = ref.code_prob_sum(x[:60].double(), codebook.double(), 4, metric, 0.3)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    print("checked", simd)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86-64 -march targets")
@pytest.mark.parametrize(
    ("march", "expected"),
    [("-march=skylake-avx512", "avx512"), ("-march=haswell", "avx2"), ("-march=x86-64", "scalar")],
)
def test_micro_kernel_built_for_an_older_target(tmp_path, march, expected):
    env = dict(os.environ)
    env.pop("PATCHVQ_BACKEND", None)
    env["PATCHVQ_BACKEND"] = "native"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "extensions")
    result = subprocess.run(
        [sys.executable, "-c", CHECK_BUILD, march, expected],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checked {expected}" in result.stdout
