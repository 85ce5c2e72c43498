"""`/sam3/segment_everything`: segment everything's algorithm on SAM 3's instance predictor.
Its exact path equals Meta's `SAM2AutomaticMaskGenerator` driven through SAM 3's
`predict_inst` (Meta's own feature set-up of `Sam3Image.predict_inst`, then the generator's
`_predict` calls on SAM 3's instance predictor) on the same tiny random weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sam2serve.everything.generator import generate
from sam2serve.everything.schema import EverythingParams
from sam2serve.runtime.sam3_device import on_device
from sam2serve.testing import sam3_tiny_spec
from tests.conftest import encode_image, photos
from tests.helpers_sam3 import both_registries, link_weights, sam3_settings

RGB = photos()["coffee"]
IMAGE = {"type": "base64", "value": encode_image(RGB)}
CPU = torch.device("cpu")
# random weights: the instance predictor's hole filling lifts logits by 10, so a threshold
# of 1 keeps distinct masks (asserted) and every stage of the generator decides something
PARAMS = dict(
    points_per_side=8,
    mask_threshold=1.0,
    stability_score_offset=0.5,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
)


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights_dir: Path, sam3_tiny_weights_dir: Path
) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from sam2serve.api.app import create_app
    from sam2serve.wiring import build_services

    weights = link_weights(
        tmp_path_factory.mktemp("weights-both"), tiny_weights_dir, sam3_tiny_weights_dir
    )
    settings = sam3_settings(weights)
    with TestClient(create_app(settings, build_services(settings, both_registries()))) as c:
        yield c


def test_route_answers_masks_by_image_and_by_id(client) -> None:  # type: ignore[no-untyped-def]
    params = {**PARAMS, "points_per_side": 4}
    body = {"image": IMAGE, "image_id": "coffee-e3", "format": "rle", **params}
    r = client.post("/sam3/segment_everything", json=body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) > 2
    areas = [p["area"] for p in preds]
    assert areas == sorted(areas, reverse=True)
    by_id = client.post(
        "/sam3/segment_everything", json={"image_id": "coffee-e3", "format": "rle", **params}
    )
    assert by_id.json()["predictions"] == preds
    # the SAM 2 route does not know the SAM 3 embedding's id, nor the reverse
    r = client.post("/sam2/segment_everything", json={"image_id": "coffee-e3", **params})
    assert r.status_code == 404
    big = client.post("/sam3/segment_everything", json={"image": IMAGE, "points_per_side": 999})
    assert big.status_code == 422 or big.status_code == 413  # SAM 2's bounds hold


class _Sam3InstPredictor:
    """Meta's SAM 3 instance predictor in the generator's predictor role: `set_image` is
    `Sam3Processor.set_image` + `Sam3Image.predict_inst`'s own feature set-up (its final
    `predict` call held back), `_predict` the predictor's own."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self.p = ref.model.inst_interactive_predictor
        self.device = CPU
        self._transforms = self.p._transforms
        self.model = self.p.model

    def set_image(self, image: np.ndarray) -> None:
        state = self.ref.set_image(image)
        held: dict[str, Any] = {}

        def hold(**kwargs: Any) -> None:
            held.update(features=self.p._features, hw=self.p._orig_hw)

        predict = self.p.predict
        self.p.predict = hold
        try:
            self.ref.predict_inst(state)
        finally:
            self.p.predict = predict
        self.p._features, self.p._orig_hw = held["features"], held["hw"]
        self.p._is_image_set = True

    def _predict(self, *args: Any, **kwargs: Any) -> Any:
        with on_device(CPU):
            return self.p._predict(*args, **kwargs)

    def reset_predictor(self) -> None:
        self.p._features = None
        self.p._is_image_set = False


class _InstView:
    """The SAM 3 runtime as the generator's runtime: features through `inst_view`."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.device = runtime.device
        self.low_res_size = runtime.low_res_size

    def embed(self, rgb: np.ndarray) -> Any:
        return self.runtime.inst_view(self.runtime.embed(rgb))

    def decode(self, *args: Any) -> Any:
        return self.runtime.decode(*args)

    def upscale(self, *args: Any) -> Any:
        return self.runtime.upscale(*args)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [{}, {"use_m2m": True, "crop_n_layers": 1, "min_mask_region_area": 20}]
)
def test_exact_path_equals_metas_generator_through_predict_inst(
    sam3_tiny_weights_dir: Path, extra: dict
) -> None:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from sam2serve.runtime.sam3_runtime import build_sam3_runtime
    from tests.integration.sam3_reference import Reference
    from tests.integration.test_everything_fidelity import assert_same_masks

    spec = sam3_tiny_spec()
    checkpoint = sam3_tiny_weights_dir / spec.filename
    runtime = build_sam3_runtime(spec, checkpoint, CPU)
    ref = Reference(spec, checkpoint)
    params = EverythingParams(**PARAMS, **extra)
    gen = SAM2AutomaticMaskGenerator(
        ref.model.inst_interactive_predictor.model, **params.generator_kwargs()
    )
    gen.predictor = _Sam3InstPredictor(ref)
    with on_device(CPU):
        want = gen.generate(RGB)
    assert len(want) > 5  # not vacuous
    ours = generate(_InstView(runtime), params, rgb=RGB, predictor_regions=False)
    assert_same_masks(want, ours)
