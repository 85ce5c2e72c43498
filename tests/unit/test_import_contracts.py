"""The import contracts in pyproject.toml ([tool.importlinter]) hold: dependencies point one
way (entry points -> wiring -> use cases -> store -> runtime | media | scheduling -> ground
floor), every module sits in one of those layers, no modules import each other in a circle,
only the CLI and Ray Serve import the HTTP layer, only tests use sam2serve.testing, and the
SDK imports nothing from the server side (and works without the [server] extra installed)."""

from __future__ import annotations

import os
import re
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


SERVER_STACK = (
    "torch",
    "torchvision",
    "sam2",
    "openvino",
    "fastapi",
    "starlette",
    "uvicorn",
    "prometheus_client",
)

CLIENT_ONLY = f"""
import sys
for name in {SERVER_STACK!r}:
    sys.modules[name] = None  # import fails, as in a base install without [server]

import httpx
import numpy as np
import typer

import sam2serve.cli.main
from sam2serve.cli.support import require_server_extra
from sam2serve.client import Sam2Client, SegmentOptions

def answer(request):
    body = {{"predictions": [{{"masks": {{"size": [2, 3], "counts": "021O1"}},
             "confidence": 0.5, "format": "rle"}}], "time": 0.1}}
    return httpx.Response(200, json=body)

client = Sam2Client(transport=httpx.MockTransport(answer))
result = client.segment_image(np.zeros((2, 3, 3), np.uint8), points=np.array([[1, 1]]))
assert result.masks.tolist() == [[[True, False, False], [True, True, False]]]
try:
    require_server_extra("serve")
except typer.Exit as exc:
    assert exc.exit_code == 2
else:
    raise AssertionError("the missing server extra went unnoticed")
print("client-only ok")
"""


def test_client_side_works_without_the_server_stack() -> None:
    """The base install (no [server] extra): the SDK and CLI import and run, and the CLI says
    how to install the server side instead of a traceback."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_ONLY], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "client-only ok" in done.stdout
    assert "pip install 'sam2serve[server]'" in done.stderr


def _layers() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (one_way,) = [c for c in config["contracts"] if c["id"] == "one-way"]
    return [name.strip() for layer in one_way["layers"] for name in re.split(r"[:|]", layer)]


def _modules() -> list[str]:
    import pkgutil

    import sam2serve

    found = ["sam2serve"]
    for info in pkgutil.walk_packages(sam2serve.__path__, "sam2serve."):
        found.append(info.name)
    return found


def test_every_module_sits_in_a_layer() -> None:
    """Each module of the package belongs to one layer of the one-way contract, so the
    contract speaks for every file (a new module outside every layer fails here)."""
    layers = _layers()
    outside = [
        module
        for module in _modules()
        if module != "sam2serve"
        and not any(module == layer or module.startswith(layer + ".") for layer in layers)
    ]
    assert outside == [], f"modules in no layer of pyproject's one-way contract: {outside}"


def test_no_import_circles() -> None:
    """No two modules import each other, directly or through others, TYPE_CHECKING imports
    included (a type-only import back up is still a circle to a reader)."""
    import grimp

    graph = grimp.build_graph("sam2serve", cache_dir=None)
    circles = set()
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == module or imported == "sam2serve":
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                circles.add(tuple(sorted({module, *back})))
    assert not circles, f"import circles: {sorted(circles)}"
