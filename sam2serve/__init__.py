"""sam2serve: a self-hosted Segment Anything 2 server with Roboflow-compatible endpoints."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import sam2serve` must not import torch
    if name == "Segmenter":
        from sam2serve.local.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'sam2serve' has no attribute {name!r}")
