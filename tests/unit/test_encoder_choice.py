"""The measured encoder choice (runtime/choice.py), with fake encoders: the fastest candidate
within the tolerance wins, a faster one outside it never does, and the choice is measured
once per runtime cache (file lock) and reused until what was measured changes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.runtime import choice
from sam2serve.runtime.base import Decoded, Features, PromptBatch

SIDE = 16


def _embed() -> torch.Tensor:
    """A fixed 'image embedding' whose sign pattern the fake decoder turns into masks."""
    return torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, SIDE, SIDE))).float()


def fake_decode(features: Features, batch: PromptBatch) -> Decoded:
    """Masks (N, 3, SIDE, SIDE) from the embedding's sign, shifted per prompt; best = 0."""
    n = len(batch)
    base = features.image_embed[0, 0]
    low = torch.stack([torch.roll(base, i, 0) for i in range(n)])[:, None].repeat(1, 3, 1, 1)
    scores = torch.tensor([[1.0, 0.0, 0.0]]).repeat(n, 1)
    return Decoded(low_res=low, scores=scores)


def fake_encoder(seconds: float, flip: float = 0.0) -> choice.EncodeFn:
    """An encoder that takes `seconds` and negates a `flip` share of the embedding."""

    def encode(x: np.ndarray) -> list[torch.Tensor]:
        time.sleep(seconds)
        embed = _embed().clone()
        flat = embed.view(-1)
        flat[: int(flip * flat.numel())] *= -1
        return [embed, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]

    return encode


X = np.zeros((1, 3, 8, 8), np.float32)
HW = (120, 160)


@pytest.mark.parametrize(
    ("candidates", "chosen"),
    [
        # (seconds, share of the embedding flipped): int8 fastest and faithful -> int8
        ({"f32": (0.03, 0), "bf16": (0.02, 0.0), "int8": (0.01, 0.0)}, "int8"),
        # int8 fastest but its masks break the tolerance -> the fastest faithful one
        ({"f32": (0.03, 0), "bf16": (0.02, 0.0), "int8": (0.01, 0.5)}, "bf16"),
        # f32 fastest (a CPU where bf16 is emulated) -> f32
        ({"f32": (0.01, 0), "int8": (0.03, 0.0)}, "f32"),
        # nothing else within the tolerance -> the reference
        ({"f32": (0.03, 0), "int8": (0.01, 0.5)}, "f32"),
    ],
)
def test_the_fastest_within_the_tolerance_wins(
    candidates: dict[str, tuple[float, float]], chosen: str
) -> None:
    encoders = {name: (lambda s=s, f=f: fake_encoder(s, f)) for name, (s, f) in candidates.items()}
    record = choice.measure(encoders, X, HW, fake_decode, rounds=2)
    assert record["chosen"] == chosen
    assert set(record["candidates"]) == set(candidates)
    for name, (seconds, flip) in candidates.items():
        got = record["candidates"][name]
        assert got["embed_s"] >= seconds and len(got["runs_s"]) == 2
        assert got["meets_tolerance"] == (flip == 0)
        assert (got["mean_iou"] == 1.0) == (flip == 0)
    assert record["prompts"] == 22


def test_the_reference_must_be_a_candidate() -> None:
    with pytest.raises(ValueError, match="f32"):
        choice.measure({"int8": lambda: fake_encoder(0)}, X, HW, fake_decode)


def _refuse() -> choice.EncodeFn:
    raise RuntimeError("Exception from plugin.cpp:54:\ncould not create a primitive descriptor")


def test_a_candidate_that_does_not_compile_is_left_out() -> None:
    """e.g. the int8 graph under an ISA cap: the others are still measured and chosen from."""
    encoders = {
        "f32": lambda: fake_encoder(0.02),
        "int8": _refuse,
        "bf16": lambda: fake_encoder(0.01),
    }
    record = choice.measure(encoders, X, HW, fake_decode, rounds=1)
    assert record["chosen"] == "bf16"
    assert record["candidates"]["int8"] == {
        "refused": "could not create a primitive descriptor",
        "meets_tolerance": False,
    }


def test_the_reference_failing_to_compile_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="primitive"):
        choice.measure({"f32": _refuse, "int8": lambda: fake_encoder(0)}, X, HW, fake_decode)


def test_measured_once_per_cache_dir_and_reused(tmp_path: Path) -> None:
    path = choice.choice_path(tmp_path, "bf16")
    key = {"candidates": ["f32", "int8"], "int8_recipe": "abc", "embed_threads": 0}
    runs: list[int] = []

    def run() -> dict:
        runs.append(threading.get_ident())
        time.sleep(0.3)  # every other process arrives meanwhile
        return choice.measure(
            {"f32": lambda: fake_encoder(0.002), "int8": lambda: fake_encoder(0.001)},
            X,
            HW,
            fake_decode,
            rounds=1,
        )

    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(choice.load_or_measure(path, key, run)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(runs) == 1 and len(results) == 4
    assert all(r == results[0] for r in results)
    assert json.loads(path.read_text())["chosen"] == results[0]["chosen"]
    # another recipe (or other candidates): measured again, and recorded
    other = {**key, "int8_recipe": "def"}
    assert choice.read_choice(path, other) is None
    choice.load_or_measure(path, other, run)
    assert len(runs) == 2 and choice.read_choice(path, other) is not None


@pytest.mark.parametrize("content", ["", "{not json", '{"format": 0}', '{"format": 1}'])
def test_unreadable_records_are_measured_again(tmp_path: Path, content: str) -> None:
    path = choice.choice_path(tmp_path, "f32")
    path.write_text(content)
    assert choice.read_choice(path, {}) is None
