// postJson / errorMessage with a fake fetch: what the page shows for each kind of failure.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import {
  ApiError, IMAGE_ID_HEADER, errorMessage, imageIdFor, postJson, requestHeaders,
} from "../../sam2serve/static/js/api.js";

function fakeFetch(status, text, headers = {}) {
  const calls = [];
  const impl = async (path, init) => {
    calls.push({ path, init });
    return {
      ok: status >= 200 && status < 300, status, statusText: "Status Text",
      text: async () => text,
      headers: { get: (name) => headers[name] ?? null },
    };
  };
  return { impl, calls };
}

test("a JSON answer resolves; the key goes in a Bearer header", async () => {
  const { impl, calls } = fakeFetch(200, '{"image_id": "abc", "time": 0.1}');
  const data = await postJson("/sam2/embed_image", { a: 1 }, { apiKey: "k1", fetchImpl: impl });
  assert.deepEqual(data, { image_id: "abc", time: 0.1 });
  assert.equal(calls[0].path, "/sam2/embed_image");
  assert.equal(calls[0].init.method, "POST");
  assert.equal(calls[0].init.body, '{"a":1}');
  assert.deepEqual(calls[0].init.headers,
    { "Content-Type": "application/json", Authorization: "Bearer k1" });
});

test("no key: no Authorization header", async () => {
  const { impl, calls } = fakeFetch(200, "{}");
  await postJson("/x", {}, { fetchImpl: impl });
  assert.deepEqual(calls[0].init.headers, { "Content-Type": "application/json" });
});

const FAILURES = [
  // [name, status, body, headers, apiKey, expected message]
  ["server message", 400, '{"message": "prompts[0].box: bad"}', {}, "", "prompts[0].box: bad"],
  ["401 without a key", 401, '{"message": "an API key is required"}', {}, "",
   "an API key is required (enter it in the API key field)"],
  ["401 with a key", 401, '{"message": "not valid"}', {}, "k", "not valid (check the API key field)"],
  ["503 with Retry-After", 503, '{"message": "busy"}', { "Retry-After": "2" }, "",
   "busy (retry after 2 s)"],
  ["503 without Retry-After", 503, '{"message": "weights missing"}', {}, "", "weights missing"],
  ["429 with Retry-After", 429, '{"message": "over this key\'s share"}', { "Retry-After": "2" }, "",
   "over this key's share (retry after 2 s)"],
  ["plain text body", 502, "Bad gateway from the proxy\n", {}, "", "Bad gateway from the proxy"],
  ["empty body", 500, "", {}, "", "Status Text"],
];

for (const [name, status, body, headers, apiKey, expected] of FAILURES) {
  test(`failure: ${name}`, async () => {
    const { impl } = fakeFetch(status, body, headers);
    await assert.rejects(postJson("/x", {}, { apiKey, fetchImpl: impl }), (err) => {
      assert.ok(err instanceof ApiError);
      assert.equal(err.status, status);
      assert.equal(err.message, expected);
      return true;
    });
  });
}

test("a 200 that is not JSON is an error", async () => {
  const { impl } = fakeFetch(200, "<html>");
  await assert.rejects(postJson("/x", {}, { fetchImpl: impl }),
    { status: 200, message: "the server sent a reply that is not JSON" });
});

test("network failure: status 0 with a hint; aborts pass through", async () => {
  const down = async () => { throw new TypeError("Failed to fetch"); };
  await assert.rejects(postJson("/x", {}, { fetchImpl: down }), {
    status: 0, message: "Could not reach the server (Failed to fetch). Is it still running?",
  });
  const abort = async () => { const e = new Error("aborted"); e.name = "AbortError"; throw e; };
  await assert.rejects(postJson("/x", {}, { fetchImpl: abort }), { name: "AbortError" });
});

test("long bodies are cut to 300 characters", () => {
  assert.equal(errorMessage(500, "x".repeat(1000), null).length, 300);
});

// ---------------------------------------------------------------- the affinity header

const ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;  // the server's image_id pattern

const HEADER_CASES = [
  // [name, body, apiKey, expected headers]
  ["image_id repeated in the header", { image_id: "pg-1", prompts: [] }, "",
   { "Content-Type": "application/json", [IMAGE_ID_HEADER]: "pg-1" }],
  ["with a key too", { image_id: "pg-1" }, "k",
   { "Content-Type": "application/json", Authorization: "Bearer k", [IMAGE_ID_HEADER]: "pg-1" }],
  ["no image_id: no header", { image: { type: "base64", value: "x" } }, "",
   { "Content-Type": "application/json" }],
];

for (const [name, body, apiKey, expected] of HEADER_CASES) {
  test(`headers: ${name}`, async () => {
    assert.equal(IMAGE_ID_HEADER, "X-Sam2serve-Image-Id");
    assert.deepEqual(requestHeaders(body, apiKey), expected);
    const { impl, calls } = fakeFetch(200, "{}");
    await postJson("/sam2/segment_image", body, { apiKey, fetchImpl: impl });
    assert.deepEqual(calls[0].init.headers, expected);
  });
}

test("imageIdFor: sha256 of the data, so the same file gets the same id", async () => {
  const data = "data:image/png;base64,iVBORw0KGgo=";
  const id = await imageIdFor(data);
  const want = createHash("sha256").update(data).digest("hex").slice(0, 40);
  assert.equal(id, `pg-${want}`);
  assert.equal(await imageIdFor(data), id);
  assert.notEqual(await imageIdFor(`${data}A`), id);
  assert.match(id, ID_PATTERN);
});

test("imageIdFor without WebCrypto's subtle (plain http): a random id", async () => {
  const plain = { getRandomValues: (a) => globalThis.crypto.getRandomValues(a) };
  const a = await imageIdFor("x", plain);
  const b = await imageIdFor("x", plain);
  const none = await imageIdFor("x", null);
  for (const id of [a, b, none]) assert.match(id, /^pg-[0-9a-f]{40}$/);
  assert.notEqual(a, b);
});
