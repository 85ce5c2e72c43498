"""The affinity header: `X-Sam2serve-Image-Id` repeats a request's image id so a load balancer
(nginx `hash $http_x_sam2serve_image_id consistent`, the Ray Serve router) can send every
request on one image to the replica that holds its features.

The body stays authoritative: the server answers for the body's `image_id`, never for the
header. A header that names another id than the body's `image_id` is a 400 naming both (the
router and the server would otherwise disagree on the image). A body without `image_id`
(its id will be the content hash of the decoded pixels) takes any well-formed header: the
client's hash is a routing hint only, and a client whose decoder disagrees with the server's
loses locality, never correctness.
"""

from __future__ import annotations

import re

from fastapi import Request

from sam2serve.errors import BadRequest
from sam2serve.wire import IMAGE_ID_HEADER, IMAGE_ID_PATTERN

_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)


def check_image_id_header(request: Request, body_image_id: str | None) -> str | None:
    """The request's affinity header (None when absent), checked against the body.

    Raises:
        BadRequest (field X-Sam2serve-Image-Id): sent more than once, not an image id, or
            another id than the body's `image_id`.
    """
    values = request.headers.getlist(IMAGE_ID_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(
            f"header {IMAGE_ID_HEADER} is sent {len(values)} times: send it once, with the "
            "body's image_id",
            field=IMAGE_ID_HEADER,
        )
    value = values[0]
    if not _IMAGE_ID.fullmatch(value):
        raise BadRequest(
            f"header {IMAGE_ID_HEADER} is not an image id (1-128 of A-Z a-z 0-9 . _ : -): "
            "send the body's image_id, or leave the header out",
            field=IMAGE_ID_HEADER,
        )
    if body_image_id is not None and value != body_image_id:
        raise BadRequest(
            f"header {IMAGE_ID_HEADER} {value!r} does not match the body's image_id "
            f"{body_image_id!r}: send the same id in both (load balancers route on the "
            "header, the server answers for the body), or leave the header out",
            field=IMAGE_ID_HEADER,
            header=value,
            image_id=body_image_id,
        )
    return value


#: the header in the OpenAPI document of the routes that check it
OPENAPI_PARAMETER = {
    "name": IMAGE_ID_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": IMAGE_ID_PATTERN},
    "description": (
        "the request's image id again, for load balancers that route an image's requests to "
        "one replica; must equal the body's image_id when the body has one (else 400)"
    ),
}
