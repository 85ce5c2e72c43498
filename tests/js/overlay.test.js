// The many-mask panels' shared pieces: one path per mask (every polygon, pixel centres),
// well-separated hues, and "by id first, the image only after a 404".
import assert from "node:assert/strict";
import { test } from "node:test";

import { postByIdOrImage } from "../../sam2serve/static/js/api.js";
import { hue, polygonPath } from "../../sam2serve/static/js/overlay.js";

class FakePath {
  constructor() { this.ops = []; }
  moveTo(x, y) { this.ops.push(["M", x, y]); }
  lineTo(x, y) { this.ops.push(["L", x, y]); }
  closePath() { this.ops.push(["Z"]); }
}

test("every polygon of a mask goes into one path, through the pixel centres", () => {
  const path = polygonPath([[[0, 0], [4, 0], [4, 3]], [], [[10, 10], [12, 11]]], new FakePath());
  assert.deepEqual(path.ops, [
    ["M", 0.5, 0.5], ["L", 4.5, 0.5], ["L", 4.5, 3.5], ["Z"],
    ["M", 10.5, 10.5], ["L", 12.5, 11.5], ["Z"],
  ]);
});

test("hues are distinct for neighbours and shift by the offset", () => {
  const first = Array.from({ length: 12 }, (_, i) => hue(i));
  assert.equal(new Set(first).size, 12);
  assert.equal(hue(0), "hsl(0 85% 55%)");
  assert.equal(hue(0, 40), "hsl(40 85% 55%)");
});

function fakePost(answers) {
  const calls = [];
  const post = async (path, body) => {
    calls.push({ path, body });
    const answer = answers.shift();
    if (answer instanceof Error) throw answer;
    return answer;
  };
  return { post, calls };
}

function httpError(status) { return Object.assign(new Error(`status ${status}`), { status }); }

test("an id the server has: one request, no image", async () => {
  const { post, calls } = fakePost([{ predictions: [] }]);
  const body = { image_id: "pg-1", format: "json" };
  assert.deepEqual(await postByIdOrImage(post, "/sam3/segment_everything", body, { v: 1 }),
    { predictions: [] });
  assert.deepEqual(calls, [{ path: "/sam3/segment_everything", body }]);
});

test("a 404 sends the image once more under the same id", async () => {
  const { post, calls } = fakePost([httpError(404), { predictions: [1] }]);
  const image = { type: "base64", value: "data:image/png;base64,AAAA" };
  const got = await postByIdOrImage(post, "/p", { image_id: "pg-1" }, image);
  assert.deepEqual(got, { predictions: [1] });
  assert.deepEqual(calls.map((c) => c.body), [{ image_id: "pg-1" }, { image_id: "pg-1", image }]);
});

test("other errors are not retried", async () => {
  const { post, calls } = fakePost([httpError(503)]);
  await assert.rejects(postByIdOrImage(post, "/p", { image_id: "x" }, {}), { status: 503 });
  assert.equal(calls.length, 1);
});
