"""Ray Serve request router of the sam2serve deployment: image affinity.

A request that carries the affinity header `X-Sam2serve-Image-Id` (the SDK and the playground
send it on embed, segment and segment-everything) goes to a replica chosen by the image id,
so an image's embed and all its clicks land on the replica that holds its features; Redis
then carries only the embeds' writes. A request without the header is routed as Serve's
default router does (power of two choices, least loaded of two random replicas).

How the replica is chosen: rendezvous (highest random weight) hashing of (replica id, image
id) over the running replicas. Every router (one per proxy) ranks the replicas the same way
with no shared state; when a replica goes away only its images move (they are fetched from
Redis once on their new replica, or re-embedded), and a new replica takes ~1/N of the images.
The first choice is tried first; if its queue is full (`max_ongoing_requests`) the next
`fallback_replicas` in the same order take the request, then the whole ranking repeats with
Serve's backoff (a busy image is never spread at random).

Where the id comes from: the router runs in Ray's HTTP proxy before the body is read, so the
id must be in a header (the body's `image_id` is not visible). Serve's proxy hands the
router one argument for an HTTP ingress: the request it forwards (its ASGI scope, headers
included), which the router reads. If the cluster's session header is set to this header
(`RAY_SERVE_SESSION_ID_HEADER_KEY=x-sam2serve-image-id` in the environment of `ray start`),
the proxy passes the id as the request's session id instead and nothing is read.

Why not model multiplexing (`serve_multiplexed_model_id` with the image id as the "model"):
it needs a second header, every replica would report the ids of every image it holds to
the controller (thousands, broadcast to every router), and an unknown id is routed at random
rather than by hash, so an embed would not land where its clicks will go. Why not Ray's
experimental `ConsistentHashRouter`: it reads only the cluster-wide session header and
routes requests without it by a hash of a random id instead of by load.

Configured in `sam2serve.ray_serve` (and deploy/serve_config.yaml) as
`request_router_config.request_router_class: sam2serve.ray_router:ImageAffinityRouter`.
Ray pickles this module by value for its proxies, so they need not import sam2serve.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from typing import Any

from ray.serve._private import constants as serve_constants
from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from sam2serve.wire import IMAGE_ID_HEADER, IMAGE_ID_PATTERN

__all__ = ["ImageAffinityRouter", "image_key", "rank_replicas"]

_HEADER = IMAGE_ID_HEADER.lower().encode("latin-1")
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def session_header_is_ours() -> bool:
    """True when Serve's proxy reads this header as the session id (cluster setting)."""
    return _normalized(serve_constants.SERVE_SESSION_ID) == _normalized(IMAGE_ID_HEADER)


def image_key(pending_request: PendingRequest | None, session_is_ours: bool) -> str | None:
    """The image id of a request routed by Serve's HTTP proxy, or None (no header, not an
    HTTP request, a malformed id: routed by load).

    The proxy's argument is the pickled request it built itself (`StreamingHTTPRequest`,
    with `asgi_scope`); only that is read, never a client's bytes.
    """
    if pending_request is None:
        return None
    metadata = pending_request.metadata
    if session_is_ours:
        return _checked(metadata.session_id or None)
    args = pending_request.args
    if len(args) != 1 or not isinstance(args[0], bytes) or pending_request.kwargs:
        return None
    try:
        scope = getattr(pickle.loads(args[0]), "asgi_scope", None)
    except Exception:  # not the proxy's HTTP request (another caller of the handle)
        return None
    if not isinstance(scope, dict):
        return None
    for name, value in scope.get("headers", ()):
        if name.lower() == _HEADER:
            return _checked(value.decode("latin-1"))
    return None


def _checked(value: str | None) -> str | None:
    """An image id, or None for a value the server would refuse anyway (routed by load)."""
    return value if value is not None and _IMAGE_ID.fullmatch(value) else None


def rank_replicas(key: str, replicas: list[RunningReplica]) -> list[RunningReplica]:
    """`replicas` in rendezvous order for `key`: by descending hash of (replica id, key).

    Only a replica's own id and the key decide its place, so removing a replica keeps the
    relative order of the others (its keys move to their second choice, no others move).
    """

    def weight(replica: RunningReplica) -> bytes:
        unique = replica.replica_id.unique_id
        return hashlib.blake2b(f"{unique}\n{key}".encode(), digest_size=8).digest()

    return sorted(replicas, key=weight, reverse=True)


class ImageAffinityRouter(PowerOfTwoChoicesRequestRouter):
    """Serve's default router, except that a request with `X-Sam2serve-Image-Id` goes to the
    replica its image id ranks first (then the next `fallback_replicas` when that one is
    full). kwargs (`request_router_kwargs`): `fallback_replicas` (int, default 1)."""

    def initialize_state(self, **kwargs: Any) -> None:
        super().initialize_state(**kwargs)
        fallback = kwargs.get("fallback_replicas", 1)
        if not isinstance(fallback, int) or fallback < 0:
            raise ValueError(f"fallback_replicas must be an int >= 0, got {fallback!r}")
        self._fallback_replicas = fallback
        self._session_is_ours = session_header_is_ours()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        key = image_key(pending_request, getattr(self, "_session_is_ours", False))
        if key is None or not candidate_replicas or pending_request is None:
            return await super().choose_replicas(candidate_replicas, pending_request)
        pending_request.routing_context.should_backoff = True  # back off between rankings
        ranked = rank_replicas(key, candidate_replicas)
        return [[replica] for replica in ranked[: 1 + getattr(self, "_fallback_replicas", 1)]]

    def _fulfill_next_pending_request(
        self, replica: RunningReplica, request_metadata: Any = None
    ) -> None:
        """The replica chosen for a request serves that request (Serve's FIFO order would
        hand it to the oldest waiting request, of another image)."""
        RequestRouter._fulfill_next_pending_request(self, replica, request_metadata)
