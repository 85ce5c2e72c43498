"""Use case: SAM 3 concept prompts (`/sam3/embed_image`, `/sam3/concept_segment`,
`/sam3/visual_segment`), wire-compatible with Roboflow's routes.

`service.py` runs a request top to bottom on the image use case's model pool, lanes and
feature store; `schema.py` holds the request/response models (Roboflow's field names);
`prompts.py` turns a prompt's boxes into the runtime's form; `selection.py` (thresholds,
instance caps, cross-prompt NMS: pure functions); `text_cache.py` (phrase embeddings, LRU);
`config.py` (the `SAM2SERVE_SAM3_*` bounds).

Layer: use case, above `image`. May import: image, store, runtime, media, scheduling,
ground floor."""
