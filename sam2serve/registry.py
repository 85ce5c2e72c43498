"""Model ids, Roboflow aliases and where each checkpoint comes from: a plain registry dict."""

from __future__ import annotations

from dataclasses import dataclass, field

from sam2serve.errors import BadRequest

_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824"


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint: its config, file name, source, size, and model family.

    family "sam2": `config` is a hydra config inside the `sam2` package; family "sam3":
    `config` names the architecture size in `runtime.sam3_build.CONFIGS` ("real" | "tiny").
    gated: the file sits behind a licence click-through, so the server never downloads it;
    `url` is then the page where a person obtains it.
    """

    model_id: str
    config: str
    filename: str
    url: str
    size_mb: int
    # hydra overrides on top of `config` (tests use them to build tiny architectures)
    overrides: tuple[str, ...] = field(default_factory=tuple)
    family: str = "sam2"
    gated: bool = False


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

#: SAM 3 (Segment Anything with Concepts): Meta's `sam3.pt` from the gated Hugging Face repo
#: facebook/sam3 (SAM License): image detector + tracker weights, ~840 M parameters.
#: SAM 3.1 is not offered: `sam3` 0.1.4 on PyPI does not package its model code.
SAM3_REGISTRY: dict[str, ModelSpec] = {
    "sam3": ModelSpec(
        model_id="sam3",
        config="real",
        filename="sam3.pt",
        url="https://huggingface.co/facebook/sam3",
        size_mb=3450,
        family="sam3",
        gated=True,
    )
}

#: Roboflow's SAM 3 model ids (`model_id`, default "sam3/sam3_final") -> our ids.
SAM3_ALIASES: dict[str, str] = {"sam3/sam3_final": "sam3", "sam3_final": "sam3"}


def resolve_sam3_model_id(requested: str, *, registry: dict[str, ModelSpec]) -> ModelSpec:
    """A SAM 3 spec from an id or a Roboflow alias; 400 on `model_id` listing the valid ones
    (a SAM 2 id is refused here: the families never answer for each other)."""
    key = requested.strip()
    key = SAM3_ALIASES.get(key, key)
    spec = registry.get(key)
    if spec is None or spec.family != "sam3":
        valid = ", ".join([*(k for k, s in registry.items() if s.family == "sam3"), *SAM3_ALIASES])
        raise BadRequest(
            f"unknown SAM 3 model_id {requested!r}; use one of: {valid}", field="model_id"
        )
    return spec


def all_specs() -> dict[str, ModelSpec]:
    """Every model sam2serve knows, SAM 2 then SAM 3 (what `sam2serve models` lists)."""
    return {**REGISTRY, **SAM3_REGISTRY}


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
    if spec is None or spec.family != "sam2":
        valid = ", ".join(
            [*(k for k, s in registry.items() if s.family == "sam2"), *ROBOFLOW_ALIASES]
        )
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
    #: SAM 3 ids (their own registry: a SAM 2 id never resolves to SAM 3 or the reverse)
    sam3_registry: dict[str, ModelSpec] = field(default_factory=lambda: dict(SAM3_REGISTRY))
    sam3_default: str = "sam3"

    def resolve_sam3(self, requested: str | None) -> ModelSpec:
        """The SAM 3 spec of `requested` (an id, a Roboflow alias, or None for the default)."""
        return resolve_sam3_model_id(requested or self.sam3_default, registry=self.sam3_registry)

    def resolve(self, requested: str | None) -> ModelSpec:
        """The spec of `requested` (an id, an alias, or None for the default); 400 if unknown."""
        return resolve_model_id(
            requested or self.default, registry=self.registry, alias_family=self.alias_family
        )
