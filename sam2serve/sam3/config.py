"""SAM 3 request bounds and caches, read from `SAM2SERVE_SAM3_*` environment variables.

The output-mask budget is the server's `SAM2SERVE_MAX_MASK_PIXELS`, shared with SAM 2."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20


class Sam3Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAM2SERVE_SAM3_", extra="ignore")

    max_prompts: int = Field(
        16, ge=1, description="Prompts per concept_segment request (Roboflow's default cap)."
    )
    max_phrase_chars: int = Field(
        200,
        ge=1,
        description=(
            "Characters per text prompt. SAM 3 reads at most 32 BPE tokens of a phrase; a "
            "short noun phrase ('yellow school bus') is what it was trained on."
        ),
    )
    max_boxes_per_prompt: int = Field(32, ge=1, description="Exemplar boxes per prompt.")
    max_instances_per_prompt: int = Field(
        100,
        ge=1,
        description=(
            "Instances answered per prompt, best scores first; the prompt's result says when "
            "more were found (SAM 3 proposes at most 200 per prompt)."
        ),
    )
    text_cache_entries: int = Field(
        1024, ge=0, description="Phrase embeddings kept (LRU); 0 = none."
    )
    text_cache_bytes: int = Field(
        64 * MiB, ge=0, description="Byte budget of the kept phrase embeddings."
    )
    concept_cache_entries: int = Field(
        64,
        ge=0,
        description=(
            "Concept outputs kept (LRU; per image, prompt and boxes): a repeated prompt on a "
            "cached image skips the fusion encoder and decoder; 0 = none."
        ),
    )
    concept_cache_bytes: int = Field(
        256 * MiB,
        ge=0,
        description=(
            "Byte budget of the kept concept outputs (~48 MB each on the real config with "
            "the fast runtime, 66 MB with the exact one; the image's features not counted: "
            "an output is dropped with them)."
        ),
    )
