// Every data call of the dashboard: the key from sessionStorage as "Authorization: Bearer", JSON in and out,
// and the API's error body ({"error": {code, message}}) turned into an ApiError a page can show.

const KEY = "cogo.key";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

let onUnauthenticated = () => {};

/** What to do when the API refuses the key (401): the app signs out and asks again. */
export function whenRefused(handler) {
  onUnauthenticated = handler;
}

export function authHeaders(key = session.key()) {
  return key ? {Authorization: `Bearer ${key}`} : {};
}

/** Call the API: api("/api/runs", {query: {status: "failed"}}) or api(path, {method: "POST", body: {...}}). */
export async function api(path, opts = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(opts.query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = {Accept: "application/json", ...authHeaders(opts.key)};
  const init = {method: opts.method || "GET", headers, cache: "no-store", signal: opts.signal};
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  let answer;
  try {
    answer = await fetch(url, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network.unreachable", `The API did not answer (${err.message}). Is the fleet up?`);
  }
  const text = await answer.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!answer.ok) {
    const e = body && body.error ? body.error : {};
    const error = new ApiError(answer.status, e.code || `http.${answer.status}`,
      e.message || `HTTP ${answer.status} from ${url.pathname}`, e.details);
    if (answer.status === 401 && !opts.key) onUnauthenticated(error);
    throw error;
  }
  return body;
}
