"""Loaded models: lazy, one load at a time per model, kept loaded up to `max_models`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Runtime
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
from sam2serve.runtime.weights import ensure_checkpoint

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[ModelSpec, Path, torch.device], Runtime]


def torch_runtime_factory(spec: ModelSpec, checkpoint: Path, device: torch.device) -> Runtime:
    return TorchRuntime(spec.model_id, build_model(spec, checkpoint, device), device)


def sam3_runtime_factory(spec: ModelSpec, checkpoint: Path, device: torch.device) -> Any:
    """SAM 3 specs: Meta's `sam3` image model, exact (`runtime.sam3_runtime`); imported on
    first use only, so a SAM 2-only server never imports `sam3`."""
    from sam2serve.runtime.sam3_runtime import build_sam3_runtime

    return build_sam3_runtime(spec, checkpoint, device)


def describe_choice(record: dict[str, Any]) -> dict[str, Any]:
    """A measured encoder choice (`runtime.choice`) as /info shows it."""
    return {
        "encoder": record["chosen"],
        "by": "measurement on this machine (runtime cache)",
        "measured_at": record.get("measured_at"),
        "tolerance": record.get("tolerance"),
        "candidates": {
            name: {
                k: c[k]
                for k in ("embed_s", "mean_iou", "min_iou", "meets_tolerance", "refused")
                if k in c
            }
            for name, c in record["candidates"].items()
        },
    }


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelPool:
    def __init__(
        self,
        weights_dir: Path,
        device: torch.device,
        *,
        allow_download: bool = True,
        max_models: int = 2,
        factory: RuntimeFactory = torch_runtime_factory,
        sam3_factory: Callable[[ModelSpec, Path, torch.device], Any] = sam3_runtime_factory,
    ) -> None:
        self.weights_dir = Path(weights_dir)
        self.device = device
        self.allow_download = allow_download
        self.max_models = max_models
        self.factory = factory
        self.sam3_factory = sam3_factory
        self._loaded: OrderedDict[str, Runtime] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.load_seconds: dict[str, float] = {}

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def loaded_runtime(self, model_id: str) -> Runtime | None:
        """The loaded runtime of `model_id`, or None (does not load, nor mark it used)."""
        return self._loaded.get(model_id)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Which runtime (and precision) serves each loaded model, for /info; with the
        measured encoder choice and its timings where the runtime was chosen so."""
        out: dict[str, dict[str, Any]] = {}
        for model_id, runtime in self._loaded.items():
            entry: dict[str, Any] = {
                "runtime": type(runtime).__name__,
                "precision": str(getattr(runtime, "precision", "fp32")),
            }
            choice = getattr(runtime, "choice", None)
            if choice is not None:
                entry["choice"] = describe_choice(choice)
            out[model_id] = entry
        return out

    def load_sync(self, spec: ModelSpec) -> Runtime:
        """Blocking load (weights download if needed, build, strict state-dict check).
        A SAM 3 spec (`spec.family == "sam3"`) gets `sam3_factory`'s `Sam3Runtime`; its
        checkpoint is gated, so it is never downloaded (503 saying how to obtain it)."""
        started = time.perf_counter()
        checkpoint = ensure_checkpoint(spec, self.weights_dir, allow_download=self.allow_download)
        factory = self.sam3_factory if spec.family == "sam3" else self.factory
        runtime = factory(spec, checkpoint, self.device)
        self.load_seconds[spec.model_id] = time.perf_counter() - started
        log.info("loaded %s in %.1fs", spec.model_id, self.load_seconds[spec.model_id])
        return runtime

    async def get(self, spec: ModelSpec) -> Runtime:
        runtime = self._loaded.get(spec.model_id)
        if runtime is not None:
            self._loaded.move_to_end(spec.model_id)
            return runtime
        lock = self._locks.setdefault(spec.model_id, asyncio.Lock())
        async with lock:
            runtime = self._loaded.get(spec.model_id)
            if runtime is None:
                runtime = await asyncio.to_thread(self.load_sync, spec)
                self._loaded[spec.model_id] = runtime
                while len(self._loaded) > self.max_models:
                    evicted, _ = self._loaded.popitem(last=False)
                    log.info("unloaded %s (max_models=%d)", evicted, self.max_models)
            return runtime
