"""The CPU's flags as the runtimes and benches read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam2serve.runtime import cpu


@pytest.mark.parametrize(
    ("cpuinfo", "flags", "fast"),
    [
        (
            "processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni avx512f sse\nprocessor\t: 1\n",
            {"fpu", "avx2", "avx512_vnni", "avx512f", "sse"},
            ["avx2", "avx512f", "avx512_vnni"],
        ),
        ("processor\t: 0\nmodel name\t: ARM\n", set(), []),
        (None, set(), []),  # no /proc/cpuinfo
    ],
)
def test_cpu_flags_from_proc_cpuinfo(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cpuinfo: str | None,
    flags: set[str],
    fast: list[str],
) -> None:
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    real = Path

    def fake_path(name: str) -> Path:
        return path if name == "/proc/cpuinfo" else real(name)

    monkeypatch.setattr(cpu, "Path", fake_path)
    cpu.cpu_flags.cache_clear()
    try:
        assert cpu.cpu_flags() == frozenset(flags)
        assert cpu.fast_path_flags() == fast  # in FAST_PATH_FLAGS' order
    finally:
        cpu.cpu_flags.cache_clear()
