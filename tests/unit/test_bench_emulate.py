"""The bench's AVX2 emulation switch (bench/emulate.py): the caps it sets and its re-exec."""

from __future__ import annotations

import sys

import pytest

from bench import emulate


def test_reexec_env_adds_every_cap_and_the_marker() -> None:
    env = emulate.reexec_env({"PATH": "/bin", "ONEDNN_MAX_CPU_ISA": "ALL"})
    assert env["PATH"] == "/bin"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # overrides a looser cap
    assert env["DNNL_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env[emulate.MARKER] == "avx2"


def test_active_reads_the_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(emulate.MARKER, raising=False)
    assert emulate.active() is None
    monkeypatch.setenv(emulate.MARKER, "avx2")
    assert emulate.active() == "avx2"


def test_reexec_runs_the_same_module_under_the_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(emulate.os, "execve", lambda *args: calls.append(args))
    emulate.reexec("bench.embed_runtimes", ["--work-dir", "w", "--emulate-avx2"])
    [(exe, argv, env)] = calls
    assert exe == sys.executable
    assert argv == [
        sys.executable,
        "-m",
        "bench.embed_runtimes",
        "--work-dir",
        "w",
        "--emulate-avx2",
    ]
    assert env[emulate.MARKER] == "avx2"  # the child sees it and does not re-execute again
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
