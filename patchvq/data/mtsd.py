"""The Magnetic Tile Surface Defects layout, with the packaged train/test split."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import DatasetError
from .layout import Collector, LayoutDataset
from .records import GOOD, Sample
from .split import is_test_good

GOOD_CLASS = "MT_Free"
SPLIT_FILE = "mtsd_split.txt"


@lru_cache(maxsize=1)
def mtsd_split() -> dict[str, str]:
    """The packaged split: ``"MT_<Class>/<name>.jpg"`` -> ``"train"`` or ``"test"`` (1,344 files)."""
    text = resources.files(__package__).joinpath(SPLIT_FILE).read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, split = line.split()
            out[key] = split
    return out


def split_rule(key: str) -> str:
    """The split of an MTSD file ``"MT_<Class>/<name>.jpg"`` by the rule the split file records.

    MT_Free images whose sha1(file name) is not 0 mod 5 are ``"train"``; the other MT_Free
    images and every defect image are ``"test"``.
    """
    cls, name = key.split("/")
    return "train" if cls == GOOD_CLASS and not is_test_good(name) else "test"


class MTSDDataset(LayoutDataset):
    """The MTSD dataset (magnetic tiles) in its original layout.

    ``<root>/MT_<Class>/Imgs/<name>.jpg`` with the mask ``<name>.png`` beside it (defect
    where the mask value > 127); ``MT_Free`` is good, the other classes are defect types
    (``defect`` is the class without ``MT_``). The split is the one shipped in
    ``patchvq/data/mtsd_split.txt``: 763 training and 189 test good images, and all 392
    defect images for testing. Image files that the split file does not list, and listed
    files that are missing, are problems (an error, or skipped with ``on_error="skip"``), so
    that figures stay comparable.
    """

    FORMAT = "mtsd"

    def _collect(self, root: Path, split: str, found: Collector) -> list[Sample]:
        listed = mtsd_split()
        class_dirs = sorted(d for d in root.glob("MT_*") if (d / "Imgs").is_dir())
        if not class_dirs:
            raise DatasetError(f"no MTSD class folders MT_<Class>/Imgs under {root}", [root])
        on_disk: set[str] = set()
        samples: list[Sample] = []
        for cls_dir in class_dirs:
            for path in found.images(cls_dir / "Imgs"):
                if path.suffix.lower() == ".png":
                    continue
                key = f"{cls_dir.name}/{path.name}"
                on_disk.add(key)
                if key not in listed:
                    found.problems.add(path, "not in the packaged MTSD split file, so it has no split")
                elif listed[key] == split:
                    samples.append(self._sample(path, cls_dir.name, found))
        self._report_missing(root, split, listed, on_disk, {d.name for d in class_dirs}, found)
        return [s for s in samples if s is not None]

    @staticmethod
    def _report_missing(
        root: Path, split: str, listed: dict[str, str], on_disk: set[str], present: set[str], found: Collector
    ) -> None:
        """Record the files of ``split`` that the split file lists but the folder lacks: a
        whole missing class folder once, first, then each missing file."""
        missing = sorted(k for k in set(listed) - on_disk if listed[k] == split)
        absent: dict[str, int] = {}
        for key in missing:
            cls = key.split("/")[0]
            if cls not in present:
                absent[cls] = absent.get(cls, 0) + 1
        for cls, n in absent.items():
            found.problems.add(root / cls, f"class folder missing: the split file lists {n} of its images for {split}")
        for key in missing:
            cls, name = key.split("/")
            if cls in present:
                found.problems.add(root / cls / "Imgs" / name, "listed in the MTSD split file but missing")

    @staticmethod
    def _sample(path: Path, cls: str, found: Collector) -> Sample | None:
        if cls == GOOD_CLASS:
            return Sample(path, 0, GOOD)
        mask = path.with_suffix(".png")
        if not mask.is_file():
            found.problems.add(path, f"defect image without its mask {mask.name}")
            return None
        return Sample(path, 1, cls.removeprefix("MT_"), mask)
