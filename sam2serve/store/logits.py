"""Low-res logits kept per (namespace, model, image) for iterative refinement.

`save_logits_to_cache` stores each prediction's logits with its prompt set; a later
`load_logits_from_cache` request on the same image takes, per prompt, the logits of the
largest earlier prompt set that is a strict subset of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

# (box corners or None, multiset of points) — hashable identity of one prompt
PromptKey = tuple[tuple[float, float, float, float] | None, frozenset]


@dataclass(frozen=True)
class _Saved:
    keys: tuple[PromptKey, ...]
    logits: np.ndarray  # (N, m, m) float32


class LogitsCache:
    """LRU over saved prompt sets, bounded by bytes (`max_bytes`, the logits' float32 size)
    and by count (`max_entries`); a set larger than the byte budget is not kept."""

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._sets: OrderedDict[tuple[Hashable, tuple[PromptKey, ...]], _Saved] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sets)

    def save(self, image_key: Hashable, keys: Sequence[PromptKey], logits: np.ndarray) -> None:
        entry_key = (image_key, tuple(keys))
        old = self._sets.pop(entry_key, None)
        if old is not None:
            self.bytes_used -= old.logits.nbytes
        size = logits.size * 4
        if self.max_entries <= 0 or (self.max_bytes is not None and size > self.max_bytes):
            return
        self._sets[entry_key] = _Saved(tuple(keys), logits.astype(np.float32, copy=True))
        self.bytes_used += size
        while len(self._sets) > self.max_entries or (
            self.max_bytes is not None and self.bytes_used > self.max_bytes
        ):
            _, dropped = self._sets.popitem(last=False)
            self.bytes_used -= dropped.logits.nbytes

    def load(
        self, image_key: Hashable, keys: Sequence[PromptKey]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (mask_input (N, 1, m, m), has_mask (N,)) for the current prompts, or None."""
        best: tuple[int, _Saved, list[int | None]] | None = None
        for (img, _), saved in reversed(self._sets.items()):  # newest first wins ties
            if img != image_key:
                continue
            mapping = match_subset(saved.keys, keys)
            if mapping is None:
                continue
            size = point_count(saved.keys)
            if best is None or size > best[0]:
                best = (size, saved, mapping)
        if best is None:
            return None
        _, saved, mapping = best
        m = saved.logits.shape[-1]
        mask_input = np.zeros((len(keys), 1, m, m), dtype=np.float32)
        has_mask = np.zeros(len(keys), dtype=bool)
        for c_idx, e_idx in enumerate(mapping):
            if e_idx is not None:
                mask_input[c_idx, 0] = saved.logits[e_idx]
                has_mask[c_idx] = True
        return mask_input, has_mask


def _contains(super_key: PromptKey, sub_key: PromptKey) -> bool:
    if super_key[0] != sub_key[0]:
        return False
    have = dict(super_key[1])
    return all(have.get(point, 0) >= count for point, count in sub_key[1])


def match_subset(
    earlier: Sequence[PromptKey], current: Sequence[PromptKey]
) -> list[int | None] | None:
    """If `earlier` is a strict subset of `current`, map each current prompt to the earlier
    prompt it extends (or None for new prompts); else None.

    Each earlier prompt must be contained (same box, points a sub-multiset) in a distinct
    current prompt, and the two sets must differ.
    """
    if list(earlier) == list(current) or len(earlier) > len(current):
        return None
    mapping: list[int | None] = [None] * len(current)
    for e_idx, e_key in enumerate(earlier):
        for c_idx, c_key in enumerate(current):
            if mapping[c_idx] is None and _contains(c_key, e_key):
                mapping[c_idx] = e_idx
                break
        else:
            return None
    return mapping


def point_count(keys: Sequence[PromptKey]) -> int:
    return sum(count for key in keys for _, count in key[1]) + sum(
        2 for key in keys if key[0] is not None
    )
