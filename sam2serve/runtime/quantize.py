"""int8 image encoder: NNCF post-training quantization of the exported OpenVINO encoder graph.

Calibrated once, at export time, on the images bundled in `calibration/` (see its
SOURCES.md: distinct from the benchmark and test photos). The quantized graph is cached
beside the float graphs, in the key directory of (model, checkpoint sha256, OpenVINO
version), under a name that carries the recipe's hash (recipe, NNCF version, calibration
bytes): `encoder-int8-<recipe id>.xml`. A changed recipe quantizes anew; an unchanged one is
reused by every process sharing the cache dir (file lock, atomic rename, as the export).

What stays in float: the FPN neck and the mask decoder's high-res projections (`conv_s0`,
`conv_s1`: their outputs are the skip features the masks' edges come from) and the patch
embedding (it sees raw pixels); the trunk's linear layers (most of the FLOPs) run in int8.
Fidelity (mask IoU vs Meta's fp32 predictor) is asserted in tests and recorded in
docs/benchmarks.md; the measured runtime choice checks it again on the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from sam2serve.runtime.openvino_export import BackendUnavailable, _openvino

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
#: images NNCF calibrates on (one sample each)
CALIBRATION = ("rocket", "coins", "immunohistochemistry", "retina")
#: held out of the calibration: the measured choice's fidelity check image
CHECK = "camera"

#: everything that decides the quantized graph (with the NNCF version and the images' bytes)
RECIPE: dict[str, Any] = {
    "tool": "nncf.quantize",
    "model_type": "transformer",
    "preset": "default",  # NNCF's default for transformers (mixed: asymmetric activations)
    "ignored_patterns": [".*image_encoder\\.neck.*", ".*sam_mask_decoder.*", ".*patch_embed.*"],
    "smooth_quant": False,
    "fast_bias_correction": True,
    "images": list(CALIBRATION),
    "mirrored": False,  # mirrored copies as extra samples: off (calibration time grows with them)
}


def nncf_version() -> str | None:
    """The installed NNCF's version (without importing it), or None when it is absent."""
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        return None


def _image_path(name: str) -> Path:
    return CALIBRATION_DIR / f"{name}.jpg"


def load_image(name: str) -> np.ndarray:
    """A bundled image as (H, W, 3) uint8 RGB."""
    with Image.open(_image_path(name)) as im:
        return np.asarray(im.convert("RGB"))


def recipe_id() -> str:
    """Short hash of the recipe, the NNCF version and the calibration images' bytes."""
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode())
    digest.update(f"nncf={nncf_version()}".encode())
    for name in CALIBRATION:
        digest.update(_image_path(name).read_bytes())
    return digest.hexdigest()[:12]


def int8_encoder_name() -> str:
    return f"encoder-int8-{recipe_id()}.xml"


def is_quantized(graphs_dir: Path) -> bool:
    return (Path(graphs_dir) / int8_encoder_name()).is_file()


def build_int8_encoder(graphs_dir: Path, preprocess: Callable[[np.ndarray], np.ndarray]) -> Path:
    """Quantize `graphs_dir/encoder.xml` once; reuse it when present. Returns the int8 graph.

    preprocess: (H, W, 3) uint8 -> (1, 3, S, S) float32, the encoder's input (the runtime's
    transforms). Raises BackendUnavailable when NNCF is not installed.
    """
    graphs_dir = Path(graphs_dir)
    target = graphs_dir / int8_encoder_name()
    if target.is_file():
        return target
    if nncf_version() is None:
        raise BackendUnavailable("nncf is not installed (pip install nncf): no int8 encoder")
    with FileLock(graphs_dir / f"{target.stem}.lock"):
        if target.is_file():  # another process quantized while we waited
            return target
        _quantize(graphs_dir, target, preprocess)
    return target


def _quantize(
    graphs_dir: Path, target: Path, preprocess: Callable[[np.ndarray], np.ndarray]
) -> None:
    import nncf  # heavy import (~seconds): only when a quantization runs

    ov = _openvino()
    started = time.perf_counter()
    samples = []
    for name in CALIBRATION:
        x = np.ascontiguousarray(preprocess(load_image(name)), dtype=np.float32)
        samples.append(x)
        if RECIPE["mirrored"]:
            samples.append(np.ascontiguousarray(x[..., ::-1]))
    graph = ov.Core().read_model(graphs_dir / "encoder.xml")
    quantized = nncf.quantize(
        graph,
        nncf.Dataset(samples),
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        fast_bias_correction=RECIPE["fast_bias_correction"],
        ignored_scope=nncf.IgnoredScope(patterns=RECIPE["ignored_patterns"], validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)  # off
        ),
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", dir=graphs_dir))
    try:
        ov.save_model(quantized, tmp / target.name, compress_to_fp16=False)
        meta = {
            **RECIPE,
            "nncf": nncf_version(),
            "recipe_id": recipe_id(),
            "seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / f"{target.stem}.json").write_text(json.dumps(meta, indent=1))
        # the weights and the note first, the graph last: a present .xml is a complete graph
        for suffix in (".bin", ".json", ".xml"):
            (tmp / f"{target.stem}{suffix}").rename(graphs_dir / f"{target.stem}{suffix}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "quantized the encoder to int8 (%s) in %.1fs", target.name, time.perf_counter() - started
    )
