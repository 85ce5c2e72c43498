"""A runtime that serves on the exact torch path while its fast runtime is being prepared.

The fast runtime's first use exports its graphs (tens of seconds on CPU, once per model and
checkpoint). Rather than make the first requests wait, `PreparingRuntime` answers them with
the torch reference runtime and builds the fast one on a background thread; when it is ready
every later call goes to it. Features embedded by either runtime decode on both (the fast
runtime reads float32 or bfloat16 features), so images embedded meanwhile stay usable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sam2serve.runtime.base import Decoded, Features, PromptBatch, Runtime

log = logging.getLogger(__name__)


class PreparingRuntime:
    """Runtime protocol: `exact` now, `build()`'s runtime once it has returned."""

    def __init__(self, exact: Runtime, build: Callable[[], Runtime], what: str) -> None:
        """exact: the runtime serving meanwhile; build: makes the fast runtime (blocking,
        run on a daemon thread); what: the model, for messages."""
        self.model_id = exact.model_id
        self.device = exact.device
        self._active: Runtime = exact
        self._ready = threading.Event()
        self.detail = (
            f"first use: preparing the fast runtime for {what} (one time); "
            "requests are served on the exact torch path meanwhile"
        )
        self.failed: str | None = None
        self._thread = threading.Thread(
            target=self._prepare, args=(build,), name=f"prepare-{what}", daemon=True
        )
        self._thread.start()

    def _prepare(self, build: Callable[[], Runtime]) -> None:
        try:
            fast = build()
        except Exception as exc:  # stay on the exact path; say why once
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("fast runtime for %s unavailable, staying on torch: %s", self.model_id, exc)
        else:
            self._active = fast
            log.info("fast runtime for %s ready", self.model_id)
        finally:
            self._ready.set()

    @property
    def preparing(self) -> bool:
        return not self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the preparation has ended (either way); False on timeout."""
        return self._ready.wait(timeout)

    @property
    def active(self) -> Runtime:
        """The runtime serving calls right now."""
        return self._active

    @property
    def low_res_size(self) -> int:
        return self._active.low_res_size

    def embed(self, rgb: np.ndarray) -> Features:
        return self._active.embed(rgb)

    def encode(self, rgb: np.ndarray) -> Features:
        """The encoder only (video frames), where the active runtime separates it."""
        runtime = self._active
        return getattr(runtime, "encode", runtime.embed)(rgb)

    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        runtime = self._active
        if features.image_embed.dtype != torch.float32 and not hasattr(runtime, "precision"):
            features = Features(  # bf16 features from the fast runtime, on the torch path
                image_embed=features.image_embed.float(),
                high_res=tuple(t.float() for t in features.high_res),
                orig_hw=features.orig_hw,
            )
        return runtime.decode(features, prompts, multimask)

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return self._active.upscale(low_res, orig_hw)

    def __getattr__(self, name: str) -> Any:
        # precision and the like: whatever the active runtime says (not embed_batch: the
        # service binds a batcher to it, and the active runtime changes)
        if name.startswith("_") or name == "embed_batch":
            raise AttributeError(name)
        return getattr(self._active, name)


async def wait_prepared(runtime: Runtime, state: Any) -> None:
    """If `runtime` is still preparing its fast path, publish what it is doing as
    `state.preload_detail` and wait until it is done (polling: a thread blocked on it would
    hold up the event loop's shutdown until the export ends)."""
    if isinstance(runtime, PreparingRuntime) and runtime.preparing:
        state.preload_detail = runtime.detail
        while runtime.preparing:
            await asyncio.sleep(0.2)
