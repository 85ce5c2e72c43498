"""Media in and out: `decode.py` (bytes/base64/URL -> RGB uint8, EXIF, caps, content hash),
`fetch.py` (safe URL input: resolve-and-pin, private addresses refused, byte cap, deadline),
`postprocess.py` (best mask, polygons, RLE, npz) and `annotate.py` (annotated PNGs).

Layer: below the store, beside runtime and scheduling. May import: ground floor only (the SDK
uses `decode` and `postprocess` too, so nothing here needs the model stack)."""
