"""Settings presets shipped with patchvq: JSON config files measured on real data (the README's
results say what each gives). `patchvq train DATA --config mtsd` reads `mtsd.json` from here."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def preset_file(name: str) -> Path | None:
    """The JSON file of the preset called `name`, or None when no shipped preset has that name."""
    return FOLDER / f"{name}.json" if name in names() else None
