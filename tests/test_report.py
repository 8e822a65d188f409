"""`patchvq test --report`: the HTML report renders in headless Chromium with every image
loaded, escapes what it shows, and writes nothing outside its folder."""

import html
import re
import shutil

import pytest
from app_fixtures import needs_weights, synthetic_category, tiny_config
from chromium import dump_dom, find_chromium, images_loaded, screenshot

from patchvq.cli.main import main

MARKUP = '<img src=x onerror="document.body.setAttribute(\'data-pwned\',1)">&amp; b'


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """The synthetic category, one good test image renamed with markup in its name."""
    root = synthetic_category(tmp_path_factory.mktemp("synthetic"))
    copy = tmp_path_factory.mktemp("marked") / "metal"
    shutil.copytree(root, copy)
    first = min((copy / "test" / "good").glob("*.png"))
    first.rename(first.with_name(MARKUP + ".png"))
    return copy


@pytest.fixture(scope="module")
def report(category, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    config = folder / "tiny.json"
    config.write_text(tiny_config().to_json())
    assert main(["train", str(category), "--out", str(folder / "run"), "--config", str(config), "--quiet"]) == 0
    out = folder / "out"
    assert main(["test", str(category), "--run", str(folder / "run"), "--report", str(out), "--quiet",
                 "--batch-size", "4"]) == 0
    return out


@needs_weights
def test_report_files_are_complete_and_stay_inside_the_folder(report, category):
    page = (report / "index.html").read_text()
    for name in ("roc.png", "pro.png", "scores.png", "metrics.json", "scores.csv"):
        assert (report / name).stat().st_size > 0, name
    srcs = re.findall(r'src="([^"]+)"', page)
    n_test = len(list((category / "test").rglob("*.png")))
    assert len(srcs) == 3 + n_test
    for src in srcs:
        target = (report / html.unescape(src)).resolve()
        assert target.is_relative_to(report.resolve()) and target.stat().st_size > 0, src
    assert all(p.resolve().is_relative_to(report.resolve()) for p in report.rglob("*"))
    # Worst-scored first; the confusion counts and the code-allocation maps are shown.
    scores = [float(s) for s in re.findall(r"score ([0-9.e+-]+) ·", page)]
    assert scores == sorted(scores, reverse=True)
    assert "TP " in page and "TN " in page and "after Budget Prior" in page and "ground truth" in page
    # The markup in the file name is text: escaped, never markup.
    assert MARKUP not in page and html.escape(MARKUP) in page


@needs_weights
def test_report_renders_in_chromium_with_every_image_and_no_injected_script(report):
    binary = find_chromium()
    dom = dump_dom(binary, report / "index.html")
    loaded, total, failed = images_loaded(dom)
    assert total > 3 and loaded == total and failed == 0, (loaded, total, failed)
    assert not re.search(r"<body[^>]*data-pwned", dom)  # the handler in the name never ran
    assert html.escape(MARKUP, quote=False) in dom  # shown as text
    screenshot(binary, report / "index.html", report / "screenshot.png")


@needs_weights
def test_report_pages_past_the_page_size(report, category, tmp_path, monkeypatch):
    from patchvq.report import writer

    monkeypatch.setattr(writer, "PAGE_SIZE", 4)
    out = tmp_path / "paged"
    assert main(["test", str(category), "--run", str(report.parent / "run"), "--report", str(out), "--quiet"]) == 0
    n_test = len(list((category / "test").rglob("*.png")))
    pages = sorted(out.glob("*.html"))
    assert len(pages) == -(-n_test // 4)
    binary = find_chromium()
    for page in pages:
        loaded, total, failed = images_loaded(dump_dom(binary, page))
        assert loaded == total and failed == 0 and total >= 1
