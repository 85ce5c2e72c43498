"""Video session limits, read from `SAM2SERVE_VIDEO_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sam2serve.config import NiceIncrement

MiB = 1 << 20


class VideoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAM2SERVE_VIDEO_", extra="ignore")

    max_upload_bytes: int = Field(256 * MiB, description="Cap of an uploaded/fetched clip.")
    max_frames: int = Field(600, description="Frames per clip; longer clips get 413.")
    max_pixels: int = Field(1920 * 1080, description="Pixels per frame; larger get 413.")
    max_sessions: int = Field(4, description="Open sessions; beyond this, 503 + Retry-After.")
    max_sessions_per_key: int = Field(
        2,
        ge=1,
        description=(
            "With API keys configured, open sessions one key may hold; beyond, 429 + "
            "Retry-After (other keys can still open theirs)."
        ),
    )
    max_objects: int = Field(
        16, ge=1, description="Objects tracked per session; a prompt for one more gets 413."
    )
    ttl_s: float = Field(600.0, description="Idle seconds before a session is closed.")
    memory_bytes: int = Field(
        2048 * MiB, description="Budget of all sessions' features + memories; beyond, 503."
    )
    feature_bytes: int = Field(
        256 * MiB, description="Per-session cache of per-frame image features."
    )
    queue: int = Field(4, description="Video jobs waiting beyond this answer 503 at once.")
    nice: NiceIncrement = Field(
        10,
        description=(
            "CPU priority below the click lane's (Linux nice increment of the video worker "
            "thread), so clicks keep their latency during a propagation; 0 = same priority."
        ),
    )
    threads: int = Field(
        0,
        ge=0,
        description=(
            "Torch intra-op threads of the video worker, and OpenVINO threads of the fast "
            "path's memory graphs; 0 = the default (all cores)."
        ),
    )
    precision: Literal["fp32", "bf16", "fast"] = Field(
        "fp32",
        description=(
            "fp32: Meta's exact path; bf16: every step under bfloat16 autocast; fast: the image "
            "runtime's encoder, memory attention and the memory encoder on the fast runtime "
            "(OpenVINO: bf16 where the CPU has it natively, else f32), the mask decoder fp32"
        ),
    )
