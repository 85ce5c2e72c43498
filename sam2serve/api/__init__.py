"""Entry point: the HTTP API (FastAPI). Routes parse and authenticate a request, call one
use case from `wiring.Services`, and serialize the answer; nothing below imports this package.

Layer: entry point. May import: wiring, the use cases (image, everything, video), store,
runtime, media, scheduling and the ground floor (config, errors, registry, wire)."""
