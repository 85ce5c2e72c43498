"""What this machine's CPU can do, as Linux reports it (`/proc/cpuinfo`'s flags): the
runtimes decide their precision from it (int8 needs dot-product units), the benches name
it beside every figure."""

from __future__ import annotations

from functools import cache
from pathlib import Path

#: The flags that decide a fast path here, in the order the benches print them.
FAST_PATH_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)


@cache
def cpu_flags() -> frozenset[str]:
    """Every flag of the first CPU listed (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_path_flags() -> list[str]:
    """The `FAST_PATH_FLAGS` this CPU has, in their order."""
    flags = cpu_flags()
    return [f for f in FAST_PATH_FLAGS if f in flags]
