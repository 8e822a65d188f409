"""What goes wrong with a dataset folder, and how it is reported.

Every problem is collected first, so that one error (or one warning) names every
file at fault instead of stopping at the first.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

_PACKAGE_DIR = str(Path(__file__).resolve().parent)

ON_ERROR = ("raise", "skip")


class DatasetError(ValueError):
    """A dataset folder cannot be read as asked.

    ``files`` lists the paths at fault (possibly empty when the problem is a missing
    folder or an unrecognised layout); the message names them too.
    """

    def __init__(self, message: str, files: list[Path] | None = None):
        super().__init__(message)
        self.files = list(files or [])


class SkippedFilesWarning(UserWarning):
    """Files were left out of a dataset because ``on_error="skip"`` was asked for.

    ``files`` lists every skipped path; the message names each with its reason.
    """

    def __init__(self, message: str, files: list[Path] | None = None):
        super().__init__(message)
        self.files = list(files or [])


def warn_user(warning: Warning) -> None:
    """Issue ``warning`` attributed to the first caller outside this package."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(warning, stacklevel=level)


def check_on_error(on_error: str) -> str:
    """Return ``on_error`` if it is one of ``"raise"`` / ``"skip"``, else raise ValueError."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


@dataclass
class Problems:
    """Per-file problems found while reading a layout: (path, reason) pairs."""

    items: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: Path, reason: str) -> None:
        self.items.append((Path(path), reason))

    def extend(self, other: Problems) -> None:
        self.items.extend(other.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def files(self) -> list[Path]:
        return [p for p, _ in self.items]

    def describe(self, limit: int | None = None) -> str:
        """One line per problem, ``path: reason``; with ``limit``, the rest are counted."""
        shown = self.items if limit is None else self.items[:limit]
        lines = [f"  {p}: {r}" for p, r in shown]
        if limit is not None and len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more (see the error's .files)")
        return "\n".join(lines)

    def report(self, on_error: str, context: str) -> None:
        """Raise a DatasetError (``on_error="raise"``) or warn listing every skipped file."""
        if not self.items:
            return
        if on_error == "raise":
            raise DatasetError(
                f"{context}: {len(self.items)} file(s) cannot be used:\n{self.describe(limit=50)}\n"
                "Fix them, or pass on_error='skip' to leave them out with a warning.",
                self.files,
            )
        warn_user(SkippedFilesWarning(f"{context}: skipped {len(self.items)} file(s):\n{self.describe()}", self.files))
