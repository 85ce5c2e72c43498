// "Copy as curl / Python" snippets.
import assert from "node:assert/strict";
import { test } from "node:test";

import { curlSnippet, pythonSnippet, pyValue } from "../../sam2serve/static/js/snippets.js";

const ONE = {
  image_id: "abc",
  sam2_version_id: "sam2.1_hiera_small",
  prompts: { prompts: [{ box: { x: 60, y: 45, width: 100, height: 50 },
                         points: [{ x: 5, y: 6, positive: false }] }] },
  multimask_output: true,
  format: "json",
};

test("curl: the body as JSON, a key header only when needed", () => {
  const withKey = curlSnippet(ONE, { origin: "http://h:9001", withKey: true });
  assert.equal(withKey.split("\n")[0], "curl -X POST 'http://h:9001/sam2/segment_image' \\");
  assert.ok(withKey.includes('-H "Authorization: Bearer $SAM2SERVE_API_KEY"'));
  assert.ok(withKey.endsWith(`-d '${JSON.stringify(ONE)}'`));
  assert.ok(!curlSnippet(ONE, { origin: "o", withKey: false }).includes("Authorization"));
});

test("curl: the image id in the affinity header, as the page sends it", () => {
  const curl = curlSnippet(ONE, { origin: "o", withKey: false });
  assert.ok(curl.split("\n").includes("  -H 'X-Sam2serve-Image-Id: abc' \\"));
  const { image_id: _, ...noId } = ONE;
  assert.ok(!curlSnippet(noId, { origin: "o", withKey: false }).includes("X-Sam2serve-Image-Id"));
});

test("pyValue writes Python literals", () => {
  assert.equal(pyValue({ a: [true, false, null], b: "x", c: 1.5 }),
    '{"a": [True, False, None], "b": "x", "c": 1.5}');
});

test("python, one object: corner boxes and points; the model unless it is the default", () => {
  const py = pythonSnippet(ONE, { origin: "http://h:9001", defaultModel: "sam2.1_hiera_tiny" });
  assert.ok(py.includes('c = Sam2Client("http://h:9001"'));
  assert.ok(py.includes('    image_id="abc",'));
  assert.ok(py.includes('    model="sam2.1_hiera_small",'));
  assert.ok(py.includes("    points=[(5, 6, False)],"));
  assert.ok(py.includes("    boxes=[(10, 20, 110, 70)],"));
  assert.ok(py.includes("    multimask_output=True,"));
  const dflt = pythonSnippet(ONE, { origin: "o", defaultModel: "sam2.1_hiera_small" });
  assert.ok(!dflt.includes("    model="));
});

test("python, several objects: the API's prompts as Python", () => {
  const body = { ...ONE, sam2_version_id: undefined, multimask_output: false,
    prompts: { prompts: [{ points: [{ x: 1, y: 2, positive: true }] }, { box: { x: 1, y: 1, width: 2, height: 2 } }] } };
  const py = pythonSnippet(body, { origin: "o" });
  assert.ok(py.includes('        {"points": [{"x": 1, "y": 2, "positive": True}]},'));
  assert.ok(py.includes('        {"box": {"x": 1, "y": 1, "width": 2, "height": 2}},'));
  assert.ok(py.includes("    multimask_output=False,"));
  assert.ok(!py.includes("model="));
});
