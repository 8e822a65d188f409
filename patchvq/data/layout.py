"""What every folder layout shares: resolving the split, collecting and checking samples."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

from .errors import DatasetError, Problems, SkippedFilesWarning, check_on_error, warn_user
from .images import is_broken_link, list_images
from .records import GOOD, AnomalyDataset, Sample
from .split import DEFAULT_VAL_FRACTION, SPLITS, holdout_indices

log = logging.getLogger("patchvq.data")


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise a DatasetError saying what was expected."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: expected the folder {path}", [path])
    return path


def subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


class Collector:
    """Gathers samples, per-file problems and ignored non-image files while a layout is read."""

    def __init__(self) -> None:
        self.problems = Problems()
        self.ignored: list[Path] = []

    def _broken(self, links: list[Path]) -> None:
        for link in links:
            self.problems.add(link, "symbolic link that leads nowhere (its target is missing, or it loops)")

    def images(self, folder: Path) -> list[Path]:
        """The images in ``folder``; an empty folder and links that lead nowhere are recorded as problems."""
        broken: list[Path] = []
        found = list_images(folder, self.ignored, broken)
        self._broken(broken)
        if not found:
            self.problems.add(folder, "folder holds no images")
        return found

    def subfolders(self, folder: Path) -> list[Path]:
        """subfolders(folder), recording links in it that lead nowhere (e.g. a folder linked to itself)."""
        self._broken(sorted((p for p in folder.iterdir() if is_broken_link(p)), key=lambda p: p.name))
        return subfolders(folder)

    def good(self, folder: Path) -> list[Sample]:
        """A Sample (label 0, all-zero mask) for every image in ``folder``."""
        return [Sample(p, 0, GOOD) for p in self.images(folder)]

    def defects(self, folder: Path, defect: str, mask_dir: Path | None, suffixes: tuple[str, ...]) -> list[Sample]:
        """A Sample (label 1) for every image in ``folder``, its mask looked up in ``mask_dir``.

        The mask of ``<stem>.<ext>`` is ``<mask_dir>/<stem><suffix>.<any image ext>`` for the
        first suffix in ``suffixes`` that has one. ``mask_dir=None`` means the layout has no
        masks: the samples get ``has_mask=False``. An image without a mask file, or with
        two candidates, is recorded as a problem.
        """
        images = self.images(folder)
        if mask_dir is None:
            return [Sample(p, 1, defect, None, has_mask=False) for p in images]
        index: dict[str, list[Path]] = {}
        if mask_dir.is_dir():
            for m in list_images(mask_dir):
                index.setdefault(m.stem, []).append(m)
        out = []
        for p in images:
            found = next((index[p.stem + s] for s in suffixes if p.stem + s in index), None)
            if found is None:
                where = f"in {mask_dir}" if mask_dir.is_dir() else f"(the mask folder {mask_dir} does not exist)"
                names = " or ".join(f"{p.stem}{s}.<ext>" for s in suffixes)
                self.problems.add(p, f"defect image without a mask: no {names} {where}")
            elif len(found) > 1:
                self.problems.add(p, "more than one mask file: " + ", ".join(str(m) for m in found))
            else:
                out.append(Sample(p, 1, defect, found[0]))
        return out


class LayoutDataset(AnomalyDataset, ABC):
    """An AnomalyDataset read from a folder layout; subclasses say how to collect its samples.

    ``split`` is ``"train"`` (every training good image), ``"test"`` (good and defect images),
    or ``"fit"`` / ``"val"``: a deterministic partition of ``"train"`` in which ``"val"``
    holds ``val_fraction`` of the images (see ``split.holdout_indices``), for fitting a
    decision threshold on good images the model was not trained on.
    """

    FORMAT = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int | tuple[int, int] | None = 256,
        *,
        channels: int = 3,
        on_error: str = "raise",
        verify: bool = True,
        cache: bool = False,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        workers: int | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        check_on_error(on_error)
        root = Path(root).expanduser()
        require_dir(root, f"{self.FORMAT} dataset root")
        base = "test" if split == "test" else "train"
        found = Collector()
        samples = self._collect(root, base, found)
        context = f"{self.FORMAT} dataset at {root} ({base})"
        found.problems.report(on_error, context)
        if found.ignored:
            listed = "\n".join(f"  {p}" for p in found.ignored)
            warn_user(
                SkippedFilesWarning(
                    f"{context}: ignored {len(found.ignored)} file(s) that are not images of a supported format:\n{listed}",
                    found.ignored,
                )
            )
        super().__init__(
            samples,
            root=root,
            format=self.FORMAT,
            split=base,
            image_size=image_size,
            channels=channels,
            verify=verify,
            cache=cache,
            on_error=on_error,
            workers=workers,
            skipped=found.problems.files,
        )
        self._check_contents(context)
        if split in ("fit", "val"):
            keys = [p.relative_to(root).as_posix() for p in self.paths]
            fit, val = holdout_indices(keys, val_fraction)
            self._keep(fit if split == "fit" else val)
            self.split = split
        log.info("%r", self)

    @abstractmethod
    def _collect(self, root: Path, split: str, found: Collector) -> list[Sample]:
        """The samples of ``split`` ("train" or "test") under ``root``; problems go to ``found``."""

    def _check_contents(self, context: str) -> None:
        """Raise a DatasetError when the split cannot serve its purpose."""
        labels = self.labels
        if not labels:
            raise DatasetError(f"{context}: no usable images", self.skipped)
        if self.split == "test":
            missing = [name for name, lab in (("good", 0), ("defect", 1)) if lab not in labels]
            if missing:
                raise DatasetError(
                    f"{context}: the test set has no {missing[0]} images ({len(labels)} image(s), all "
                    f"{'defect' if missing[0] == 'good' else 'good'}); image metrics need both",
                    self.skipped,
                )
