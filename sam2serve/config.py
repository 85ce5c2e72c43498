"""Settings: read once from `SAM2SERVE_*` environment variables (and CLI options), then passed in.

Nothing in the package reads the environment anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_cache_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
#: a pre-labelling phrase's length cap (SAM 3 reads at most 32 tokens of a phrase)
MAX_PHRASE_CHARS = 200

#: a setting's nice increment: Linux's range, 0 (the clicks' priority) to 19 (the lowest)
NiceIncrement = Annotated[int, Field(ge=0, le=19)]

#: The model runtimes a server can use (see `sam2serve.runtime.factory`).
RuntimeName = Literal["auto", "torch", "openvino", "openvino-bf16", "openvino-f32", "openvino-int8"]


def default_weights_dir() -> Path:
    return Path(user_cache_dir("sam2serve")) / "weights"


def default_runtime_cache_dir() -> Path:
    return Path(user_cache_dir("sam2serve")) / "runtime"


class Settings(BaseSettings):
    """All knobs of a sam2serve process. Field names map to `SAM2SERVE_<NAME>` variables."""

    model_config = SettingsConfigDict(env_prefix="SAM2SERVE_", extra="ignore")

    # network
    host: str = "127.0.0.1"
    port: int = 9001
    allow_public_without_keys: bool = Field(
        False, description="Allow binding a non-loopback address with no API keys configured."
    )

    # models and weights
    weights_dir: Path = Field(default_factory=default_weights_dir)
    default_model: str = "hiera_tiny"
    alias_family: str = Field(
        "sam2.1", description="What Roboflow's short ids (hiera_tiny, ...) mean: sam2.1 or sam2."
    )
    allow_download: bool = True
    sam3_model: str = Field(
        "sam3",
        description=(
            "The SAM 3 model a /sam3 request gets when it names none (Roboflow's "
            "sam3/sam3_final means it too)."
        ),
    )
    sam3_preload: bool = Field(
        False,
        description=(
            "Load SAM 3 (~3.4 GB of weights, ~5 GB resident) at start-up. Off by default: "
            "SAM 3 loads on the first /sam3 request that needs it."
        ),
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    runtime: RuntimeName = Field(
        "auto",
        description=(
            "auto: OpenVINO on CPU with the encoder measured fastest within the fast path's "
            "tolerance (f32, bf16 where the CPU has it, int8), torch on CUDA; "
            "torch: Meta's fp32 model code, exact; openvino-bf16 / -f32 / -int8 pin one. "
            "SAM 3 (no OpenVINO graph): exact fp32 with torch or openvino-f32, else its ViT "
            "trunk's linear layers in int8 where the CPU has bf16 + VNNI/AMX, its backbone "
            "in bf16 with openvino-bf16 or without VNNI"
        ),
    )
    runtime_cache_dir: Path = Field(
        default_factory=default_runtime_cache_dir,
        description="Exported/compiled models, keyed by model id and checkpoint hash.",
    )
    embed_threads: int = Field(0, description="Encoder threads of the fast runtime; 0 = all.")
    decode_threads: int = Field(0, description="Decoder threads of the fast runtime; 0 = all.")
    max_models: int = Field(2, description="Models kept loaded at once (least recently used go).")
    preload: bool = Field(
        True,
        description=(
            "Servers load the default model at start-up, in the background (/readyz answers "
            "503 with what it is doing until then)."
        ),
    )

    # auth: comma-separated keys in the environment
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    metrics_require_key: bool = Field(
        False, description="With API keys configured, /metrics also needs one (else open)."
    )
    shutdown_grace_s: float = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish (s)."
    )

    # caches
    cache_bytes: int = Field(1024 * MiB, description="Byte budget of the embedding cache.")
    cache_key_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Each API key's protected share of the embedding cache (a fraction of it): when "
            "the cache is full, a key over its share loses its own least recently used "
            "images first, so one key's flood of embeds cannot evict the others' images."
        ),
    )
    logits_cache_entries: int = Field(
        1000, description="How many saved low-res logits sets to keep for refinement."
    )
    logits_cache_bytes: int = Field(
        64 * MiB,
        description=(
            "Byte budget of the saved low-res logits (refinement), taken out of cache_bytes: "
            "the embedding cache gets the rest; at most a quarter of cache_bytes."
        ),
    )

    # shared second tier (Redis) for many replicas; off when unset
    redis_url: str | None = Field(
        None, description="redis://host:port/db of the embedding tier shared by replicas."
    )
    redis_ttl_s: int = Field(3600, description="Lifetime of shared entries, refreshed on use.")
    redis_timeout_s: float = Field(0.5, description="Per-operation Redis timeout (s).")
    redis_retry_s: float = Field(2.0, description="Local-only this long after a Redis fault.")
    redis_lock_s: float = Field(10.0, description="Wait this long for another replica's embed.")
    replica_name: str = Field("", description="Name in X-Sam2serve-Replica; default host-pid.")

    # input limits
    max_body_bytes: int = 16 * MiB
    max_image_pixels: int = 40_000_000
    max_prompts: int = 64
    max_points_per_prompt: int = 64
    max_coordinate: float = 1e6
    max_mask_pixels: int = Field(
        160_000_000,
        description=(
            "Per-request budget of output mask pixels x prompts (e.g. 16 prompts on a 10 MP "
            "image); beyond it the request gets a 413 before any mask is computed. 0 = none."
        ),
    )

    # URL input
    url_allow_http: bool = False
    url_allow_private: bool = False
    url_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_deny_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    url_timeout_s: float = 10.0
    url_max_bytes: int = 16 * MiB
    url_max_redirects: int = 5

    # Label Studio ML backend (/label-studio/...): where task media live, and the budgets of
    # one predict call (Label Studio waits ML_TIMEOUT_PREDICT = 100 s by default)
    label_studio_url: str | None = Field(
        None,
        description=(
            "Base URL of the Label Studio server whose task media (/data/upload/..., "
            "/data/local-files/..., s3:// gs:// azure-blob:// links) sam2serve fetches, e.g. "
            "http://label-studio:8080; that origin is allowed explicitly (http and private "
            "addresses too), every other URL keeps the url_* policy."
        ),
    )
    label_studio_api_key: SecretStr | None = Field(
        None,
        description=(
            "Label Studio access token sent to label_studio_url only (legacy token, or a "
            "personal access token, exchanged for an access token); never logged or echoed."
        ),
    )
    label_studio_video_max_frames: int = Field(
        120,
        ge=1,
        description=(
            "Frames one video predict call tracks at most (from the first keyframe); the "
            "answer says when a clip was cut short."
        ),
    )
    label_studio_budget_s: float = Field(
        75.0,
        gt=0,
        description=(
            "Seconds one predict call may spend tracking videos or pre-labelling images before "
            "it answers with what is done so far (keep it under Label Studio's "
            "ML_TIMEOUT_PREDICT, 100 s)."
        ),
    )
    label_studio_negative_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["negative", "background"],
        description=(
            "KeyPointLabels / RectangleLabels label names (case-insensitive) whose regions are "
            "negative prompts (besides Label Studio's own negative keypoints, Alt+click)."
        ),
    )

    label_studio_phrases: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Pre-labelling with SAM 3: JSON {"Label": "phrase"} of the noun phrase each '
            "labeling-config label is searched for (default: the label, lower-cased), e.g. "
            '{"Car": "car", "Person": "pedestrian"}.'
        ),
    )
    label_studio_prelabel_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Pre-labelling with SAM 3: the score an instance needs to be answered (SAM 3's "
            "default, 0.5)."
        ),
    )

    # scheduling
    embed_queue: int = Field(8, description="Embeds waiting beyond this answer 503 at once.")
    embed_queue_per_key: int = Field(
        4,
        ge=1,
        description=(
            "With API keys configured, images (embeds, segments with an image, "
            "segment-everything jobs) one key may have in flight or waiting for the embed "
            "lane at once; beyond, 429 + Retry-After (other keys are still served)."
        ),
    )
    embed_nice: NiceIncrement = Field(
        10,
        description=(
            "CPU priority of image decodes and the embed lane's worker (embeds, "
            "segment-everything) below the clicks' (Linux nice increment), so cached clicks "
            "keep their latency meanwhile; 0 = same priority."
        ),
    )
    embed_batch_size: int = Field(
        0, description="Micro-batch concurrent embeds up to this many; 0 = 4 on CUDA, 1 on CPU."
    )
    embed_batch_window_ms: float = Field(
        5.0, description="How long an embed waits for others to batch with (ms)."
    )
    click_queue: int = Field(64, description="Decodes waiting beyond this answer 503 at once.")

    # segment everything (per request)
    everything_max_points: int = Field(
        16384, description="Grid points over all crops; more answers 413 before any work."
    )
    everything_max_candidates: int = Field(
        2048, description="Candidate masks held at once (m x m logits each); more answers 413."
    )
    everything_max_seconds: float = Field(300.0, description="Longer answers 503.")

    @field_validator(
        "api_keys",
        "url_allow_hosts",
        "url_deny_hosts",
        "label_studio_negative_labels",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def logits_budget_bytes(self) -> int:
        """The logits cache's share of cache_bytes (the embedding cache gets the rest)."""
        return max(0, min(self.logits_cache_bytes, self.cache_bytes // 4))

    @field_validator("label_studio_url")
    @classmethod
    def _check_label_studio_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest.split("/")[0]:
            raise ValueError(
                "label_studio_url must be Label Studio's base URL, e.g. http://label-studio:8080"
            )
        return value

    @field_validator("label_studio_phrases")
    @classmethod
    def _check_phrases(cls, value: dict[str, str]) -> dict[str, str]:
        for label, phrase in value.items():
            if not label.strip() or not phrase.strip() or len(phrase) > MAX_PHRASE_CHARS:
                raise ValueError(
                    f"label_studio_phrases: {label!r} -> {phrase!r}: every label and phrase "
                    f"must be non-empty, a phrase at most {MAX_PHRASE_CHARS} characters "
                    '(JSON like {"Car": "car", "Person": "pedestrian"})'
                )
        return {label: phrase.strip() for label, phrase in value.items()}

    @field_validator("alias_family")
    @classmethod
    def _check_family(cls, value: str) -> str:
        if value not in ("sam2.1", "sam2"):
            raise ValueError("alias_family must be 'sam2.1' or 'sam2'")
        return value
