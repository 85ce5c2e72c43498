// segment_image request bodies from the page's objects (each: points + at most one box).

/** A drawn corner box {x1, y1, x2, y2} (any drag direction) -> the API's CENTER box. */
export function boxToWire(b) {
  const x1 = Math.min(b.x1, b.x2), x2 = Math.max(b.x1, b.x2);
  const y1 = Math.min(b.y1, b.y2), y2 = Math.max(b.y1, b.y2);
  return { x: (x1 + x2) / 2, y: (y1 + y2) / 2, width: x2 - x1, height: y2 - y1 };
}

/** One object's prompt: {box?, points?}. */
export function promptFor(o) {
  const p = {};
  if (o.box) p.box = boxToWire(o.box);
  if (o.points.length) p.points = o.points.map(({ x, y, positive }) => ({ x, y, positive }));
  return p;
}

/** The segment body for these objects (one prompt each) on an embedded image. */
export function buildBody({ imageId, model, objects, multimask, format }) {
  const body = { image_id: imageId };
  if (model) body.sam2_version_id = model;
  body.prompts = { prompts: objects.map(promptFor) };
  body.multimask_output = multimask;
  body.format = format;
  if (format === "json") body.polygon_holes = true;
  return body;
}

/** The same request in another format (exports): polygon_holes only with json. */
export function withFormat(body, format) {
  const out = { ...body, format };
  delete out.polygon_holes;
  if (format === "json") out.polygon_holes = true;
  return out;
}
