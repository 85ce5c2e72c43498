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
 * POST `body` as JSON to `path`; resolve to the JSON answer, or reject with ApiError
 * (AbortError passes through). `apiKey` goes in an Authorization: Bearer header.
 */
export async function postJson(path, body, { apiKey = "", signal, fetchImpl = fetch } = {}) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
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
