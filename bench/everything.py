"""Segment everything vs Meta's SAM2AutomaticMaskGenerator, in one run on this machine.

hiera_tiny (real SAM 2.1 architecture, seeded random weights), a 32x32 grid, no crops.
Random weights give faint logits, so the thresholds are moved into their range (as in the
fidelity tests) and the predicted-IoU threshold keeps a realistic share of candidates.

  A. cached features -> response: Meta's generator with set_image done beforehand vs
     sam2serve's pipeline (fast runtime, and the exact torch runtime) on cached Features,
     our time including the RLE encoding of the response;
  B. total, embed included.

Prints a markdown table; `python -m bench.everything [--photo astronaut] [--repeat 1]`.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sam2serve.everything.generator import generate
from sam2serve.everything.schema import EverythingParams
from sam2serve.everything.service import to_response
from sam2serve.registry import REGISTRY
from sam2serve.runtime.openvino_runtime import load_runtime
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
from sam2serve.testing import write_random_checkpoint

PARAMS = dict(
    points_per_side=32,
    mask_threshold=0.25,
    stability_score_offset=0.05,
    pred_iou_thresh=0.51,
    stability_score_thresh=0.0,
)


def _best(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photo", default="astronaut")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--no-exact", action="store_true", help="skip the torch fp32 rows")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import skimage.data
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    image = getattr(skimage.data, args.photo)()
    spec = REGISTRY["sam2.1_hiera_tiny"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-everything-"))
    checkpoint = write_random_checkpoint(spec, tmp, seed=1)
    PARAMS["points_per_side"] = args.points_per_side
    params = EverythingParams(**PARAMS)
    model = build_model(spec, checkpoint, torch.device("cpu"))
    exact = TorchRuntime(spec.model_id, model, torch.device("cpu"))
    fast = load_runtime(spec, checkpoint, tmp / "runtime")
    ref = SAM2AutomaticMaskGenerator(model, **params.generator_kwargs())
    pred = ref.predictor

    # A. from cached features
    pred.set_image(image)
    set_image, reset = pred.set_image, pred.reset_predictor
    pred.set_image = lambda _im: None  # type: ignore[method-assign]
    pred.reset_predictor = lambda: None  # type: ignore[method-assign]
    t_meta_f, meta = _best(lambda: ref.generate(image), args.repeat)
    pred.set_image, pred.reset_predictor = set_image, reset
    rows = []
    runtimes = [("fast (OpenVINO)", fast)] + ([] if args.no_exact else [("exact", exact)])
    for name, rt in runtimes:
        feats = rt.embed(image)
        t_f, masks = _best(
            lambda rt=rt, feats=feats: to_response(
                generate(rt, params, features=feats, max_candidates=10**6), "rle"
            ),
            args.repeat,
        )
        t_total, _ = _best(
            lambda rt=rt: to_response(generate(rt, params, rgb=image, max_candidates=10**6), "rle"),
            args.repeat,
        )
        rows.append((name, t_f, t_total, len(masks.predictions)))  # type: ignore[union-attr]
    t_meta_total, _ = _best(lambda: ref.generate(image), args.repeat)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"photo {args.photo} {image.shape[1]}x{image.shape[0]}, commit {commit}, "
        f"torch threads {torch.get_num_threads()}, params {PARAMS}"
    )
    print(
        "| pipeline | features -> response (s) | vs Meta | total with embed (s) | vs Meta | masks |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| Meta SAM2AutomaticMaskGenerator | {t_meta_f:.2f} | 1.00x | {t_meta_total:.2f} | "
        f"1.00x | {len(meta)} |"
    )  # type: ignore[arg-type]
    for name, t_f, t_total, n in rows:
        print(
            f"| sam2serve {name} | {t_f:.2f} | {t_f / t_meta_f:.2f}x | {t_total:.2f} | "
            f"{t_total / t_meta_total:.2f}x | {n} |"
        )


if __name__ == "__main__":
    main()
