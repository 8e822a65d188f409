"""Headless Chromium for the report tests: found, or installed with apt-get (Debian's
`chromium`), or the tests are skipped with the reason."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def find_chromium() -> str:
    """The chromium binary; installs Debian's package when missing; pytest.skip when impossible."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root (apt-get install chromium)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=True)
        subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, timeout=1200, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"chromium is not installed and could not be installed: {err}")
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("apt-get install chromium did not provide a chromium binary")
    return found


def run(binary: str, url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True,
                              text=True, timeout=timeout, check=False)


def dump_dom(binary: str, page: Path, *, height: int = 20000, budget_ms: int = 5000) -> str:
    """The DOM of `page` after loading (a tall window, so lazy images are in view and load)."""
    result = run(binary, page.resolve().as_uri(), f"--window-size=1400,{height}",
                 f"--virtual-time-budget={budget_ms}", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(binary: str, page: Path, png: Path, *, height: int = 2400) -> None:
    result = run(binary, page.resolve().as_uri(), f"--window-size=1400,{height}", "--virtual-time-budget=3000",
                 f"--screenshot={png}")
    assert png.exists() and png.stat().st_size > 0, result.stderr[-2000:]


def images_loaded(dom: str) -> tuple[int, int, int]:
    """(loaded, total, failed) as the report's script wrote them into <body data-images>."""
    m = re.search(r'data-images="(\d+)/(\d+) failed (\d+)"', dom)
    assert m, "the report's image counter did not run: " + dom[:500]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))
