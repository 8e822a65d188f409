"""Deterministic, documented rules that split good images where a layout has no split.

Both rules depend only on file names, never on the order files are listed in or on a
random generator, so the same folder gives the same split on every machine.
"""

from __future__ import annotations

import hashlib
import math
import numbers

SPLITS = ("train", "test", "fit", "val")
DEFAULT_VAL_FRACTION = 0.1


def name_hash(name: str) -> int:
    """The sha1 digest of the UTF-8 string ``name``, read as a (160-bit) integer.

    A file name that is not valid UTF-8 on disk (Python holds its stray bytes as surrogate
    escapes, e.g. ``caf\udce9.png`` for the Latin-1 bytes of café.png) hashes as those very bytes."""
    return int(hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest(), 16)


def is_test_good(file_name: str) -> bool:
    """The good-image split rule: a file is held out for testing when sha1(name) % 5 == 0.

    ``file_name`` is the bare file name with its extension, e.g. ``exp1_num_4727.jpg``.
    About one good image in five goes to the test set.
    """
    return name_hash(file_name) % 5 == 0


def holdout_indices(keys: list[str], fraction: float = DEFAULT_VAL_FRACTION) -> tuple[list[int], list[int]]:
    """Split positions 0..len(keys)-1 into (fit, val) by the held-out rule.

    ``val`` holds the ``ceil(fraction * n)`` keys (at least one, and never all of them
    when there are two or more) with the smallest sha1 of ``"val:" + key``; ``keys`` are
    the images' paths relative to the dataset root. Both lists keep the original order.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {fraction!r}")
    n = len(keys)
    if n < 2:
        raise ValueError(f"cannot hold out images from a training set of {n} image(s)")
    k = min(max(1, math.ceil(fraction * n)), n - 1)
    ranked = sorted(range(n), key=lambda i: (name_hash("val:" + keys[i]), keys[i]))
    val = set(ranked[:k])
    return [i for i in range(n) if i not in val], sorted(val)
