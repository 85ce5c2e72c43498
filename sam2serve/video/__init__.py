"""Use case: video sessions (`/sam2/video/sessions`): clip decoding to a uint8 memmap
(`frames.py`), the session store with TTL, caps and memory budget (`sessions.py`), the
service (`service.py`), request models (`schema.py`) and settings (`config.py`).

Layer: use case, above `image` (it uses the image service's model pool and fetcher).
May import: image, store, runtime, media, scheduling, ground floor."""
