// HTTP calls to the server: one JSON request at a time, with the session's token.
//
// Owns the error types every caller tells apart. Imports session only; no DOM. What a refused
// token means for the page (back to the login form) is app.js's business, told through
// onSessionRejected, so this module does not import the code that reacts to it.

import { session } from "./session.js";

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** A request that never reached the server (offline, server down). */
export class NetworkError extends Error {}

let sessionRejected = () => {};

/** Sets what happens when the server answers 401 to the current session's token. */
export function onSessionRejected(handler) {
  sessionRejected = handler;
}

/**
 * One JSON request. Resolves to the parsed body; rejects with ApiError carrying the server's
 * {"message"} text, or NetworkError. A 401 on an authenticated call ends the session.
 */
export async function api(method, path, { body, headers = {}, auth = true } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (auth) init.headers.Authorization = `Bearer ${session.token}`;
  const tokenUsed = session.token;
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new NetworkError(navigator.onLine ? "Cannot reach the server" : "You are offline");
  }
  let data = null;
  const text = await response.text().catch(() => "");
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message =
      (data && typeof data.message === "string" && data.message) ||
      `The server answered ${response.status} ${response.statusText}`.trim();
    const retryAfter = Number(response.headers.get("Retry-After")) || undefined;
    // Only for the token still in use: a late answer to a previous session's request must not
    // end the session that replaced it.
    if (response.status === 401 && auth && tokenUsed === session.token) {
      sessionRejected();
    }
    throw new ApiError(response.status, message, retryAfter);
  }
  return data;
}

export function describeError(err) {
  if (err instanceof ApiError && err.status === 429 && err.retryAfter) {
    return `${err.message} (try again in ${err.retryAfter} s)`;
  }
  return err?.message || "Something went wrong";
}
