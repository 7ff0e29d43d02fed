"""What the fuzz tests (tests/unit/**/test_*_fuzz.py) share: hypothesis profiles and byte-splitting.

Profiles: `ci` (the default) runs 200 examples per test so the whole fuzz suite stays in
seconds; `HYPOTHESIS_PROFILE=long` runs 5,000 for a real hunt. No example database is kept
(no `.hypothesis/` folder in the tree): a failure prints the seed and the blob to reproduce it
with `@reproduce_failure`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# A shared 2-core machine: a slow example is the machine, not the code. Speed is not asserted.
_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.register_profile("long", max_examples=5000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@st.composite
def cut_points(draw: st.DrawFn, length: int) -> list[int]:
    """Where to split `length` bytes into reads: anywhere, any number of times, or every byte."""
    if length > 1 and draw(st.integers(0, 9)) == 0:
        return list(range(1, length))
    cuts = draw(st.lists(st.integers(0, length), max_size=24))
    return sorted(set(cuts))


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


def held_bytes(obj: object) -> int:
    """Bytes a parser object holds in its attributes (buffers, lists of fragments), whatever
    they are called: a limit is checked without depending on the parser's private names."""
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    total = 0
    for name in names:
        total += _size(getattr(obj, name, None))
    return total


def _size(value: object) -> int:
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(_size(item) for item in value)
    return 0
