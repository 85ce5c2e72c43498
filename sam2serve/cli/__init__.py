"""Entry point: the `sam2serve` command line (`main.py`: serve, segment, embed, download,
models; `everything.py`, `track.py`; `support.py`: shared option parsing and errors).

Layer: entry point (top). May import: api (for `serve`), local (the in-process Segmenter),
client (the SDK, for `--url`), wiring and everything below."""
