// Talking to `lcms serve`: JSON requests with the session cookie, the CSRF header on state changes,
// and errors that carry the service's own message ({"detail": "..."}).

const CSRF_COOKIE = "lcms_csrf";

/** An answer other than 2xx: `status` is the HTTP status, `message` the service's detail, `body` its JSON. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }

  /** True when the request never got an answer (network down, server stopped). */
  get offline() {
    return this.status === 0;
  }
}

function csrfToken() {
  const match = document.cookie.split("; ").find((c) => c.startsWith(CSRF_COOKIE + "="));
  return match ? decodeURIComponent(match.slice(CSRF_COOKIE.length + 1)) : "";
}

// Listeners told when any request finds the session gone (401), so a page can say so once.
const sessionListeners = [];
export function onSessionLost(listener) {
  sessionListeners.push(listener);
}

/** Send a request; the parsed JSON (or a Response for `raw`), or an ApiError. */
export async function request(method, path, { body, params, raw = false } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(key, item);
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = csrfToken();
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (error) {
    throw new ApiError(0, `the service did not answer (${error.message}): is \`lcms serve\` running?`, null);
  }
  if (response.ok) {
    if (raw) return response;
    if (response.status === 204) return null;
    return response.json();
  }
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    // not JSON: keep the status line
  }
  const message = (parsed && typeof parsed.detail === "string" && parsed.detail) || `${response.status} ${response.statusText}`;
  const error = new ApiError(response.status, message, parsed);
  if (response.status === 401 && !path.startsWith("/auth/login")) sessionListeners.forEach((l) => l(error));
  throw error;
}

export const get = (path, params) => request("GET", path, { params });
export const post = (path, body) => request("POST", path, { body });
export const patch = (path, body) => request("PATCH", path, { body });
