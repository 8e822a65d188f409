"""Reading images and masks from disk and bringing them to the model's input size.

Images come in any size and mode (grayscale, RGB, palette, 16-bit, with alpha); they are
returned as float arrays in [0, 1] with a fixed channel count. Masks are binarised
(value above half of the file's range is defect) before they are resized with nearest
neighbour, so a resized mask only ever holds 0 and 1.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
Size = tuple[int, int]  # (height, width)


def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose extension (any case) is an image format."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def is_broken_link(path: Path) -> bool:
    """True for a visible symbolic link whose target cannot be reached (dangling, or a loop
    such as a link to itself)."""
    if path.name.startswith("."):
        return False
    try:
        if not path.is_symlink():
            return False
        path.stat()
    except OSError:
        return True
    return False


def list_images(folder: Path, ignored: list[Path] | None = None, broken: list[Path] | None = None) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name (no recursion).

    Visible files that are not images of a supported format are appended to ``ignored``
    (when given) so that the caller can say so, and symbolic links that lead nowhere
    (dangling or looping) to ``broken``; hidden files and the operating systems' folder
    files (Thumbs.db, desktop.ini) are passed over.
    """
    images = []
    for p in folder.iterdir():
        if is_image_file(p):
            images.append(p)
        elif broken is not None and is_broken_link(p):
            broken.append(p)
        elif ignored is not None and p.is_file() and not p.name.startswith(".") and p.name.lower() not in _SYSTEM_FILES:
            ignored.append(p)
    return sorted(images, key=lambda p: p.name)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def as_size(image_size: int | tuple[int, int] | None) -> Size | None:
    """Normalise ``image_size`` (an int for a square, ``(height, width)``, or None) to (h, w)."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if _is_int(image_size) else image_size
    if (
        isinstance(pair, (str, bytes))
        or not isinstance(pair, Iterable)
        or len(pair := tuple(pair)) != 2
        or not all(_is_int(v) for v in pair)
    ):
        raise ValueError(
            f"image_size must be an int (a square), a (height, width) pair of ints, or None to keep each "
            f"image's size; got {image_size!r}"
        )
    h, w = int(pair[0]), int(pair[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _open_loaded(path: Path) -> Image.Image:
    """Open and fully decode a file, so truncated or corrupt data fails here. An image whose
    header claims more pixels than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
    raises ValueError naming its size."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.mode != "P" else img.convert("RGBA")
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{exc} Raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted and really this large"
        ) from exc


def _to_unit_float(img: Image.Image) -> np.ndarray:
    """An (H, W) or (H, W, C) float32 array in [0, 1] from any PIL mode."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if img.mode == "1":
        return np.asarray(img, dtype=np.float32)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode not in ("LA", "La") else "L")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: Path, channels: int) -> np.ndarray:
    """Decode ``path`` to a float32 (H, W, channels) array in [0, 1].

    Grayscale becomes colour by repeating the channel; colour becomes grayscale by
    ITU-R 601 luminance (what PIL's ``convert("L")`` uses). Alpha is dropped.
    """
    arr = _to_unit_float(_open_loaded(path))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr[:, :, :3] if arr.shape[2] >= 3 else arr[:, :, :1]
    if channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 1 and arr.shape[2] == 3:
        arr = (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask file to a bool (H, W) array: True where the value exceeds half its range.

    For 8-bit masks that is value > 127; colour masks use their brightest channel.
    """
    arr = _to_unit_float(_open_loaded(path))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > (127.5 / 255.0)


def image_size_of(path: Path) -> Size:
    """(height, width) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from exc


def resize_image(arr: np.ndarray, size: Size | None) -> np.ndarray:
    """Resize a float (H, W, C) array to ``size`` = (h, w), bilinear with antialiasing."""
    if size is None or arr.shape[:2] == size:
        return arr
    h, w = size
    planes = []
    for c in range(arr.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(arr[:, :, c], dtype=np.float32))
        planes.append(np.asarray(plane.resize((w, h), Image.Resampling.BILINEAR)))
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0)


def resize_mask(mask: np.ndarray, size: Size | None) -> np.ndarray:
    """Resize a bool (H, W) mask to ``size`` = (h, w) with nearest neighbour."""
    if size is None or mask.shape == size:
        return mask
    h, w = size
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)) > 127
