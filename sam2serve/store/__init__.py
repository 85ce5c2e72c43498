"""The feature store: where an image's features and saved logits live, behind one interface.

`store.py` (`FeatureStore`: features for pixels / for an id, load/save logits; reconciles the
tiers), `local.py` (byte-bounded LRU, single-flight, image ids bound to content), `logits.py`
(saved low-res logits, prompt-set matching), `redis_tier.py` (the optional tier shared by
replicas, behind a circuit breaker; every value validated) and `codec.py` (its typed,
never-pickled value format).

Layer: below the use cases. May import: runtime (the `Features` type), media, scheduling,
ground floor."""
