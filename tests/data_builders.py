"""Writing small dataset folders of any layout for the loader tests (helpers; no tests here)."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(40, 30), mode="RGB", seed=0) -> Path:
    """An image file of ``size`` = (width, height) in PIL ``mode``, format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
    img.save(path)
    return path


def write_mask(path: Path, size=(40, 30), box=(5, 5, 15, 12), value=255) -> Path:
    """A mask file of ``size`` = (width, height): ``value`` inside ``box`` = (x0, y0, x1, y1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    Image.fromarray(arr).save(path)
    return path


def truncate(path: Path) -> Path:
    """Cut a file to half its length, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def mvtec(root: Path, defects=("crack", "hole"), n_train=4, n_good=2, n_defect=2) -> Path:
    """A small MVTec AD category with images of mixed sizes and modes."""
    modes = ["RGB", "L", "RGBA", "P", "I;16"]
    for i in range(n_train):
        write_image(root / "train" / "good" / f"{i:03d}.png", (40 + i, 30), modes[i % len(modes)], seed=i)
    for i in range(n_good):
        write_image(root / "test" / "good" / f"{i:03d}.png", seed=100 + i)
    for d in defects:
        for i in range(n_defect):
            write_image(root / "test" / d / f"{i:03d}.png", seed=200 + i)
            write_mask(root / "ground_truth" / d / f"{i:03d}_mask.png")
    return root


def btad(root: Path) -> Path:
    """A small BTAD product: .bmp images, masks .png and .bmp, matched by stem."""
    for i in range(3):
        write_image(root / "train" / "ok" / f"{i:04d}.bmp", seed=i)
    write_image(root / "test" / "ok" / "0000.bmp", seed=10)
    write_image(root / "test" / "ko" / "0000.bmp", seed=11)
    write_image(root / "test" / "ko" / "0001.png", seed=12)
    write_mask(root / "ground_truth" / "ko" / "0000.png")
    write_mask(root / "ground_truth" / "ko" / "0001.bmp")
    return root
