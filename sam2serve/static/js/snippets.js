// "Copy as curl / Python": the last request as a command a person can paste.
import { IMAGE_ID_HEADER } from "./api.js";

/**
 * curl for a segment body; the key, when one is needed, comes from $SAM2SERVE_API_KEY; the
 * image id is repeated in the affinity header, as the page sends it.
 */
export function curlSnippet(body, { origin, withKey }) {
  const lines = [`curl -X POST '${origin}/sam2/segment_image' \\`,
                 "  -H 'Content-Type: application/json' \\"];
  if (typeof body.image_id === "string") lines.push(`  -H '${IMAGE_ID_HEADER}: ${body.image_id}' \\`);
  if (withKey) {
    lines.push('  -H "Authorization: Bearer $SAM2SERVE_API_KEY" \\');
  }
  lines.push(`  -d '${JSON.stringify(body)}'`);
  return lines.join("\n");
}

/** A JSON value written as a Python literal. */
export function pyValue(v) {
  if (v === true) return "True";
  if (v === false) return "False";
  if (v === null) return "None";
  if (Array.isArray(v)) return `[${v.map(pyValue).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v).map(([k, x]) => `"${k}": ${pyValue(x)}`).join(", ")}}`;
  }
  return JSON.stringify(v);
}

/** The SDK call for a segment body (corner boxes for one object, API prompts for several). */
export function pythonSnippet(body, { origin, defaultModel }) {
  const prompts = body.prompts.prompts;
  const model = body.sam2_version_id;
  const isDefault = !model || model === defaultModel;
  const lines = [
    "import os",
    "",
    "from sam2serve.client import Sam2Client",
    "",
    `c = Sam2Client("${origin}", api_key=os.environ.get("SAM2SERVE_API_KEY"))`,
    "# image_id names the image this playground embedded; if the server has evicted it,",
    `# embed it again: image_id = c.embed_image("photo.png"${model ? `, model="${model}"` : ""}).image_id`,
    "r = c.segment_image(",
    `    image_id="${body.image_id}",`,
  ];
  if (!isDefault) lines.push(`    model="${model}",`);
  if (prompts.length === 1) {
    const p = prompts[0];
    if (p.points) {
      const pts = p.points.map((q) => `(${q.x}, ${q.y}, ${q.positive ? "True" : "False"})`);
      lines.push(`    points=[${pts.join(", ")}],  # (x, y, positive) in original-image pixels`);
    }
    if (p.box) {
      const b = p.box;
      const xyxy = [b.x - b.width / 2, b.y - b.height / 2, b.x + b.width / 2, b.y + b.height / 2];
      lines.push("    # boxes are CORNER xyxy (x1, y1, x2, y2) in the SDK; the HTTP API's box is center-based");
      lines.push(`    boxes=[(${xyxy.join(", ")})],`);
    }
  } else {
    lines.push("    # one prompt per object, in the HTTP API's shape: box = CENTER x, y + width, height");
    lines.push("    # (the SDK's boxes= convenience takes corner xyxy instead)");
    lines.push("    prompts=[");
    for (const p of prompts) lines.push(`        ${pyValue(p)},`);
    lines.push("    ],");
  }
  lines.push(`    multimask_output=${body.multimask_output ? "True" : "False"},`);
  lines.push(")");
  lines.push("for pred in r.predictions:");
  lines.push("    print(pred.confidence, pred.mask.shape)");
  return lines.join("\n");
}
