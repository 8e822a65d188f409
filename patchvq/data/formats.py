"""Recognising a folder's layout and opening it: the one entry point ``open_dataset``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .btad import BTADDataset
from .errors import DatasetError, check_on_error
from .folder import FolderDataset
from .layout import LayoutDataset, subfolders
from .mtsd import MTSDDataset
from .mvtec import MVTecDataset
from .split import DEFAULT_VAL_FRACTION, SPLITS

log = logging.getLogger("patchvq.data")

FORMATS: dict[str, type[LayoutDataset]] = {
    "mvtec": MVTecDataset,
    "btad": BTADDataset,
    "mtsd": MTSDDataset,
    "folder": FolderDataset,
}

LAYOUTS = """  mvtec:  train/good/, test/good/, test/<defect>/, ground_truth/<defect>/<name>_mask.png
  btad:   train/ok/, test/ok/, test/ko/, ground_truth/ko/<name>.png|.bmp
  mtsd:   MT_<Class>/Imgs/<name>.jpg with <name>.png masks (MT_Free = good)
  folder: good/, <defect>/ ..., optional masks/<defect>/<name>_mask.png"""


def _matches(root: Path) -> list[str]:
    found = []
    if (root / "train" / "good").is_dir():
        found.append("mvtec")
    if (root / "train" / "ok").is_dir() or (root / "test" / "ko").is_dir():
        found.append("btad")
    if any((d / "Imgs").is_dir() for d in root.glob("MT_*")):
        found.append("mtsd")
    if (root / "good").is_dir() and not (root / "train").is_dir():
        found.append("folder")
    return found


def detect_format(root: str | Path) -> str:
    """The name of the layout of ``root``: ``"mvtec"``, ``"btad"``, ``"mtsd"`` or ``"folder"``.

    Raises a DatasetError when no layout or more than one fits; when ``root`` holds several
    datasets (for example all MVTec categories), the error names them.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder path (str or pathlib.Path), got {root!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder", [root])
    found = _matches(root)
    if len(found) == 1:
        return found[0]
    if found:
        raise DatasetError(f"{root} fits more than one layout ({', '.join(found)}); pass format= to choose", [root])
    children = [(d.name, _matches(d)) for d in subfolders(root)]
    children = [(name, m[0]) for name, m in children if len(m) == 1]
    if children:
        listed = ", ".join(f"{name} ({fmt})" for name, fmt in children[:12])
        more = f" and {len(children) - 12} more" if len(children) > 12 else ""
        raise DatasetError(
            f"{root} holds several datasets rather than one: {listed}{more}; "
            f"open one of them, e.g. {root / children[0][0]}",
            [root],
        )
    seen = ", ".join(d.name + "/" for d in subfolders(root)[:12]) or "no subfolders"
    raise DatasetError(f"{root} matches no known layout (it holds {seen}). Layouts recognised:\n{LAYOUTS}", [root])


def open_dataset(
    root: str | Path,
    format: str = "auto",
    split: str = "train",
    image_size: int | tuple[int, int] | None = 256,
    *,
    channels: int = 3,
    on_error: str = "raise",
    verify: bool = True,
    cache: bool = False,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    workers: int | None = None,
) -> LayoutDataset:
    """Open the images under ``root`` as a torch Dataset (see AnomalyDataset for the items).

    ``format``: ``"auto"`` (recognise the layout; the choice is logged on the
    ``patchvq.data`` logger and kept in ``dataset.format``), ``"mvtec"``, ``"btad"``,
    ``"mtsd"`` or ``"folder"``. ``split``: ``"train"`` (every training good image),
    ``"test"`` (good and defect images), or ``"fit"`` / ``"val"``, the deterministic
    partition of ``"train"`` whose ``"val"`` part (``val_fraction`` of it) is kept out of
    training for fitting a decision threshold. ``image_size``: an int (square) or
    ``(height, width)`` every image is resized to (bilinear; masks nearest), or None to keep
    each image's size. ``channels``: 3 (grayscale repeated) or 1 (colour as luminance).
    ``on_error``: ``"raise"`` a DatasetError naming every unusable file (no mask for a
    defect image, unreadable or truncated image or mask, mask size differing from its
    image, empty folder), or ``"skip"`` them with a SkippedFilesWarning listing each one.
    Structural problems (missing folders, an empty split, a test set lacking good or defect
    images) always raise. ``verify``: decode every file now rather than when first read.
    ``cache``: keep the resized tensors in memory. ``workers``: threads used to decode.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder path (str or pathlib.Path), got {root!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    check_on_error(on_error)
    if not isinstance(format, str):
        raise ValueError(f"format must be 'auto' or one of {sorted(FORMATS)} (a str), got {format!r}")
    name = format.lower()
    if name == "auto":
        name = detect_format(root)
        log.info("%s: recognised the %s layout", root, name)
    if name not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {sorted(FORMATS)}, got {format!r}")
    return FORMATS[name](
        root,
        split,
        image_size,
        channels=channels,
        on_error=on_error,
        verify=verify,
        cache=cache,
        val_fraction=val_fraction,
        workers=workers,
    )
