"""Use case: image clicks (`/sam2/embed_image`, `/sam2/segment_image`).

`service.py` runs a request top to bottom: `prompts.py` (request prompts -> padded batch,
mask_input, prompt keys) -> the feature store (features for pixels or an id) -> `decoding.py`
(one decoder call per token count, best mask, the answer's format); `schema.py` holds the
request/response models. Segment-everything and video sessions run on this service's model
pool, lanes and store.

Layer: use case. May import: store, runtime, media, scheduling, ground floor."""
