"""Entry point: the in-process Segmenter, the SDK's methods on a local model with no HTTP
(`segmenter.py`; `video.py`: its video sessions). A peer of `api`, not a client of it.

Layer: entry point. May import: client (request bodies, result types), wiring, the use cases
and everything below; never api."""
