// What the playground's many-mask panels ("Segment everything", "Find every…") share: a
// canvas over the image for their masks, drawn in the image's own pixels, each mask's
// polygons as one path, one hue per index and a colour swatch for their lists.

/** Colour `i` of a run of well-separated hues (golden-angle steps), from `offset` degrees. */
export function hue(i, offset = 0) {
  return `hsl(${Math.round((i * 137.508 + offset) % 360)} 85% 55%)`;
}

/**
 * `path` (a Path2D, or anything with moveTo / lineTo / closePath) with every polygon of one
 * mask ([[x, y], ...] in image pixels, through the pixel centres); fill it "evenodd".
 */
export function polygonPath(polygons, path) {
  for (const poly of polygons) {
    if (!poly.length) continue;
    path.moveTo(poly[0][0] + 0.5, poly[0][1] + 0.5);
    for (const [x, y] of poly.slice(1)) path.lineTo(x + 0.5, y + 0.5);
    path.closePath();
  }
  return path;
}

/** A canvas with this id laid over the image, under the prompts' canvas (clicks pass by). */
export function overlayCanvas(id, doc = document) {
  const canvas = doc.createElement("canvas");
  canvas.id = id;
  canvas.style.pointerEvents = "none";
  doc.getElementById("stage").insertBefore(canvas, doc.getElementById("prompt-canvas"));
  return canvas;
}

/**
 * `canvas` cleared and sized as the mask canvas, its transform mapping image pixels
 * (natW x natH) onto it; its 2-D context, or null when there is nothing to draw yet.
 */
export function imageContext(canvas, { natW, natH }, doc = document) {
  const mask = doc.getElementById("mask-canvas");
  canvas.width = mask.width;
  canvas.height = mask.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!natW) return null;
  ctx.setTransform(canvas.width / natW, 0, 0, canvas.height / natH, 0, 0);
  return ctx;
}

/** A small square of `colour`, for a list item. */
export function swatch(colour, doc = document) {
  const span = doc.createElement("span");
  span.className = "swatch";
  span.style.background = colour;
  span.style.display = "inline-block";
  span.style.width = span.style.height = "0.9em";
  return span;
}
