"""Model ids, Roboflow aliases and where each checkpoint comes from: a plain registry dict."""

from __future__ import annotations

from dataclasses import dataclass, field

from sam2serve.errors import BadRequest

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"


@dataclass(frozen=True)
class ModelSpec:
    """One SAM2 checkpoint: hydra config (inside the `sam2` package), file name, source, size."""

    model_id: str
    config: str
    filename: str
    url: str
    size_mb: int
    # hydra overrides on top of `config` (tests use them to build tiny architectures)
    overrides: tuple[str, ...] = field(default_factory=tuple)


def _spec(family: str, size: str, cfg_suffix: str, mb: int) -> ModelSpec:
    model_id = f"{family}_hiera_{size}"
    base = _BASE_21 if family == "sam2.1" else _BASE_20
    return ModelSpec(
        model_id=model_id,
        config=f"configs/{family}/{family}_hiera_{cfg_suffix}.yaml",
        filename=f"{model_id}.pt",
        url=f"{base}/{model_id}.pt",
        size_mb=mb,
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.model_id: spec
    for spec in (
        _spec("sam2.1", "tiny", "t", 149),
        _spec("sam2.1", "small", "s", 176),
        _spec("sam2.1", "base_plus", "b+", 309),
        _spec("sam2.1", "large", "l", 857),
        _spec("sam2", "tiny", "t", 149),
        _spec("sam2", "small", "s", 176),
        _spec("sam2", "base_plus", "b+", 309),
        _spec("sam2", "large", "l", 857),
    )
}

# Roboflow's short ids -> size part of our ids; the family comes from config (alias_family).
ROBOFLOW_ALIASES: dict[str, str] = {
    "hiera_tiny": "tiny",
    "hiera_small": "small",
    "hiera_b_plus": "base_plus",
    "hiera_large": "large",
}


def resolve_model_id(
    requested: str, *, registry: dict[str, ModelSpec], alias_family: str = "sam2.1"
) -> ModelSpec:
    """Map a requested id (official, or a Roboflow alias) to its spec; 400 listing valid ids."""
    key = requested.strip()
    if key.startswith("sam2/"):  # Roboflow clients sometimes send model_id-style "sam2/<id>"
        key = key[len("sam2/") :]
    if key in ROBOFLOW_ALIASES:
        key = f"{alias_family}_hiera_{ROBOFLOW_ALIASES[key]}"
    spec = registry.get(key)
    if spec is None:
        valid = ", ".join([*registry, *ROBOFLOW_ALIASES])
        raise BadRequest(
            f"unknown sam2_version_id {requested!r}; use one of: {valid}",
            field="sam2_version_id",
        )
    return spec


@dataclass(frozen=True)
class Models:
    """The models one server knows: its registry, the model a request gets when it names none,
    and which family Roboflow's short aliases mean (`SAM2SERVE_ALIAS_FAMILY`)."""

    registry: dict[str, ModelSpec]
    default: str
    alias_family: str = "sam2.1"

    def resolve(self, requested: str | None) -> ModelSpec:
        """The spec of `requested` (an id, an alias, or None for the default); 400 if unknown."""
        return resolve_model_id(
            requested or self.default, registry=self.registry, alias_family=self.alias_family
        )
