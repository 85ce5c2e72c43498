// Request bodies built from the page's objects.
import assert from "node:assert/strict";
import { test } from "node:test";

import { boxToWire, buildBody, promptFor, withFormat } from "../../sam2serve/static/js/request.js";

test("a drawn box in any direction becomes the API's center box", () => {
  const center = { x: 60, y: 45, width: 100, height: 50 };
  assert.deepEqual(boxToWire({ x1: 10, y1: 20, x2: 110, y2: 70 }), center);
  assert.deepEqual(boxToWire({ x1: 110, y1: 70, x2: 10, y2: 20 }), center);
  assert.deepEqual(boxToWire({ x1: 110, y1: 20, x2: 10, y2: 70 }), center);
});

test("an object's prompt keeps only x, y, positive of its points", () => {
  const o = { points: [{ x: 1, y: 2, positive: false, id: 7 }], box: null };
  assert.deepEqual(promptFor(o), { points: [{ x: 1, y: 2, positive: false }] });
  assert.deepEqual(promptFor({ points: [], box: { x1: 0, y1: 0, x2: 2, y2: 4 } }),
    { box: { x: 1, y: 2, width: 2, height: 4 } });
});

test("segment body: one prompt per object, holes with json only", () => {
  const objects = [
    { points: [{ x: 5, y: 6, positive: true }], box: null },
    { points: [], box: { x1: 0, y1: 0, x2: 10, y2: 10 } },
  ];
  const body = buildBody({ imageId: "id1", model: "hiera_tiny", objects, multimask: true, format: "json" });
  assert.deepEqual(body, {
    image_id: "id1",
    sam2_version_id: "hiera_tiny",
    prompts: { prompts: [
      { points: [{ x: 5, y: 6, positive: true }] },
      { box: { x: 5, y: 5, width: 10, height: 10 } },
    ] },
    multimask_output: true,
    format: "json",
    polygon_holes: true,
  });
  const rle = buildBody({ imageId: "id1", model: null, objects, multimask: false, format: "rle" });
  assert.equal(rle.sam2_version_id, undefined);
  assert.equal(rle.polygon_holes, undefined);
  assert.equal(rle.multimask_output, false);
});

test("withFormat switches the format and keeps holes for json only", () => {
  const body = { image_id: "a", format: "json", polygon_holes: true };
  assert.deepEqual(withFormat(body, "rle"), { image_id: "a", format: "rle" });
  assert.deepEqual(withFormat(body, "json"), body);
  assert.equal(body.format, "json");  // the original is untouched
});
