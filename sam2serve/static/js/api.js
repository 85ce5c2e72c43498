// API calls and their errors: POST JSON to the server, turn failures into ApiError with a
// message a person can act on. No DOM here (the page decides how to show errors).

/** A failed call: status 0 means the server could not be reached. */
export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/**
 * The message for a failed answer: the server's JSON `message` when there is one, else the
 * start of the body, plus a hint for 401 (the API key field) and 503 / 429 (Retry-After).
 */
export function errorMessage(status, text, data, { hasKey = false, retryAfter = null, statusText = "" } = {}) {
  let message = data && typeof data.message === "string" ? data.message
    : (text.trim().slice(0, 300) || statusText || "no details given");
  if (status === 401) {
    message += hasKey ? " (check the API key field)" : " (enter it in the API key field)";
  }
  if ((status === 503 || status === 429) && retryAfter) message += ` (retry after ${retryAfter} s)`;
  return message;
}

/**
 * The header that repeats a request's image id, so a load balancer (nginx `hash`, the Ray
 * Serve router) sends an image's embed and clicks to one replica; the body stays
 * authoritative (the server answers 400 if the two differ).
 */
export const IMAGE_ID_HEADER = "X-Sam2serve-Image-Id";

/** Request headers for a JSON `body`: the key as Bearer, the body's image_id repeated. */
export function requestHeaders(body, apiKey = "") {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (body && typeof body.image_id === "string") headers[IMAGE_ID_HEADER] = body.image_id;
  return headers;
}

/**
 * The id this page gives an image before embedding it, so the embed routes like the clicks
 * that follow: "pg-" + the first 40 hex digits of the sha256 of the image's data (the same
 * file gets the same id, so embedding it again is a cache hit). Where the page has no
 * WebCrypto (plain http on a non-local address), a random id.
 */
export async function imageIdFor(data, cryptoImpl = globalThis.crypto) {
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  if (cryptoImpl && cryptoImpl.subtle) {
    const digest = await cryptoImpl.subtle.digest("SHA-256", new TextEncoder().encode(data));
    return `pg-${hex(new Uint8Array(digest)).slice(0, 40)}`;
  }
  const random = new Uint8Array(20);
  if (cryptoImpl && cryptoImpl.getRandomValues) cryptoImpl.getRandomValues(random);
  else for (let i = 0; i < random.length; i++) random[i] = Math.floor(Math.random() * 256);
  return `pg-${hex(random)}`;
}

/**
 * POST `body` as JSON to `path`; resolve to the JSON answer, or reject with ApiError
 * (AbortError passes through). `apiKey` goes in an Authorization: Bearer header, the
 * body's image_id in the affinity header too.
 */
export async function postJson(path, body, { apiKey = "", signal, fetchImpl = fetch } = {}) {
  const headers = requestHeaders(body, apiKey);
  let res;
  try {
    res = await fetchImpl(path, { method: "POST", headers, body: JSON.stringify(body), signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `Could not reach the server (${err.message}). Is it still running?`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const retryAfter = res.headers.get("Retry-After");
    throw new ApiError(res.status, errorMessage(res.status, text, data,
      { hasKey: Boolean(apiKey), retryAfter, statusText: res.statusText }));
  }
  if (data === null) throw new ApiError(res.status, "the server sent a reply that is not JSON");
  return data;
}

/**
 * POST `body`, which names its image by `image_id`, with `post(path, body)`; if the server
 * does not have that id (404: never embedded for this model family, or evicted), once more
 * with `image` itself, which the server then embeds under the id. So the image travels only
 * when it must, and a second request on the same image goes by id alone.
 */
export async function postByIdOrImage(post, path, body, image) {
  try {
    return await post(path, body);
  } catch (err) {
    if (err.status !== 404) throw err;
    return post(path, { ...body, image });
  }
}
