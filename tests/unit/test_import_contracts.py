"""The import contracts in pyproject.toml ([tool.importlinter]) hold: dependencies point one
way (cli -> api | segmenter -> wiring -> service -> core), only the CLI imports the HTTP
layer, and the SDK imports nothing from the server side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)  # the contracts name modules of this checkout
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, "an import contract is broken: run `lint-imports` for the chain"
