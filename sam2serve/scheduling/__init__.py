"""Work scheduling: bounded lanes (`lanes.py`: 503 + Retry-After when full), embed
micro-batching (`batching.py`) and the long lanes' lower CPU priority (`priority.py`).

Layer: below the store, beside runtime and media. May import: ground floor only."""
