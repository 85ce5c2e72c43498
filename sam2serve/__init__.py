"""sam2serve: a self-hosted Segment Anything 2 server with Roboflow-compatible endpoints."""

__version__ = "0.1.0"
