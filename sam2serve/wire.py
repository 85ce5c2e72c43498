"""Wire types shared by every use case's request and response models (images, points,
boxes, RLE masks, the API key field), the configured caps passed as validation context, and
the one mapping of a pydantic error to a 422 that names the field.

Field names and shapes follow Roboflow's API so its clients work unchanged; unknown extra
fields those clients send (`model_id`, `id`, `usage_billable`, ...) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from sam2serve.errors import SchemaError

IMAGE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
ImageId = Annotated[str, StringConstraints(pattern=IMAGE_ID_PATTERN)]
#: request header repeating a request's image id, for load balancers that route an image's
#: requests to one replica (nginx `hash`, the Ray Serve router); the body stays authoritative
IMAGE_ID_HEADER = "X-Sam2serve-Image-Id"
Coordinate = Annotated[float, Field(allow_inf_nan=False)]


@dataclass(frozen=True)
class Limits:
    """Configured caps, passed to `model_validate(..., context={"limits": Limits(...)})`."""

    max_prompts: int = 64
    max_points_per_prompt: int = 64
    max_coordinate: float = 1e6


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageInput(Wire):
    """`type` is "base64" or "url"; anything else (numpy, pickle) is refused with a 400."""

    type: str = Field(examples=["base64"])
    value: str = Field(description="base64 data (a data: URI prefix is fine) or an https URL")


class Point(Wire):
    x: Coordinate
    y: Coordinate
    positive: bool = True


class Box(Wire):
    """CENTER-based box in original-image pixels: (x, y) is the box centre."""

    x: Coordinate
    y: Coordinate
    width: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    height: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    def corners(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) top-left / bottom-right corners."""
        hw, hh = self.width / 2, self.height / 2
        return (self.x - hw, self.y - hh, self.x + hw, self.y + hh)


@dataclass(frozen=True)
class BinaryResult:
    """format=binary: an .npz body (no pickle), answered as application/octet-stream."""

    content: bytes
    media_type: str = "application/octet-stream"


class ApiKeyField(Wire):
    api_key: str | None = Field(default=None, repr=False)


class RleMask(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE counts")


# -- validation errors -------------------------------------------------------------------


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def schema_error(exc: ValidationError) -> SchemaError:
    """A pydantic error on these models -> a 422 naming the first bad field
    (``prompts.prompts[0].box.width: ...``)."""
    first = exc.errors(include_url=False)[0]
    where = _where(tuple(p for p in first["loc"] if p not in ("function-after",)))
    message = first["msg"].removeprefix("Value error, ")
    return SchemaError(f"{where}: {message}", field=where, errors=len(exc.errors()))
