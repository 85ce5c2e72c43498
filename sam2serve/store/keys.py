"""What features are filed under: an image's content (`EntryKey`), a client's name for it
(`IdKey`), the namespace + model a request works in (`Scope`), and what the store answers
(`StoredImage`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Features, Runtime


@dataclass(frozen=True)
class EntryKey:
    namespace: str
    model_id: str
    content_hash: str


@dataclass(frozen=True)
class IdKey:
    namespace: str
    model_id: str
    image_id: str


@dataclass(frozen=True)
class Scope:
    """Whose features, of which model: a client namespace (one per API key) and a loaded
    model. Its runtime decides the device features land on and, for the Redis tier, which
    runtime's values may be used; `embed` computes features when nobody has them."""

    namespace: str
    spec: ModelSpec
    runtime: Runtime
    embed: Callable[[np.ndarray], Awaitable[Features]]  # RGB (H, W, 3) uint8 -> features


@dataclass(frozen=True)
class StoredImage:
    """An image's features as the store holds them, and the id they answer to."""

    entry: EntryKey
    image_id: str
    features: Features
    cached: bool  # found (here, in flight, or on another replica) rather than embedded now
