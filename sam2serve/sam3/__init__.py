"""Use case: SAM 3 (`/sam3/embed_image`, `/sam3/concept_segment`, `/sam3/visual_segment`,
`/sam3/segment_everything`), wire-compatible with Roboflow's routes.

`service.py` runs a request top to bottom on the image use case's model pool, lanes and
feature store; `schema.py` holds the request/response models (Roboflow's field names);
`selection.py` (thresholds, instance caps, cross-prompt NMS: pure functions); `text_cache.py`
(phrase embeddings, LRU); `concept_cache.py` (each prompt's pre-threshold output per image,
prompt and boxes); `lru.py` (the bounded LRU under both caches); `interactive.py` (SAM 3's
instance predictor behind SAM 2's click and segment-everything code); `config.py` (the
`SAM2SERVE_SAM3_*` bounds).

Layer: use case, above `everything` and `image`. May import: everything, image, store,
runtime, media, scheduling, ground floor."""
