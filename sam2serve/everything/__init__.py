"""Use case: segment everything (`/sam2/segment_everything`): Meta's automatic mask
generator on the runtime seam. `service.py` (lifecycle: cache, embed lane, budgets),
`generator.py` (the algorithm), `schema.py` (parameters under their upstream names, bounds).

Layer: use case, above `image` (it reuses the image service's features, lanes and models).
May import: image, store, runtime, media, scheduling, ground floor."""
