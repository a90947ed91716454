// The live connection: one WebSocket at /ws that pushes every new message (mine from other
// devices included), status changes, read marks, typing, group changes and auto-replies being
// written, kept alive with application pings, reconnected with backoff; after every (re)connect,
// GET /api/chat/messages?after=<cursor> fetches what was missed while it was down.
//
// Owns the socket, its timers and the catch-up cursor's moves. Imports api, session (the token)
// and state (the cursor, and the generation that tells a stale session's answers apart); no DOM.
// What to do with what arrives, and how to show the connection's state, are handlers that app.js
// sets, so this module imports none of the code that draws or sends.

import { api, ApiError } from "./api.js";
import { session } from "./session.js";
import { state, advanceCursor } from "./state.js";

const CATCH_UP_PAGE = 200; // the server's largest page
const KEEPALIVE_MS = 25_000; // application ping, so a dead connection is noticed
const PONG_TIMEOUT_MS = 10_000;

let socket = null;
let attempt = 0;
let retryTimer = null;
let keepaliveTimer = null;
let pongTimer = null;
let running = false;
let caughtUp = false; // this connection's catch-up has finished: pushes move the cursor
let pushedMax = null; // the newest id pushed on this connection
let reconnectRun = 0;

/**
 * The page's side of the connection, set once by setHandlers():
 *   show(state)          the indicator: "connecting", "reconnecting", "offline" or "live"
 *   messages(list)       messages that just arrived, pushed or caught up
 *   status(frame)        a user's status changed: {user, status}
 *   read(frame)          a read mark moved: {conversation, user, upto}
 *   typing(frame)        someone is typing: {conversation, user}
 *   conversation(frame)  a group was created or changed: {conversation: {...}}
 *   removed(frame)       I am out of a group: {conversation}
 *   progress(frame)      an auto-reply being written: {reply_to, text, seq}
 *   sent(frame)          my send was stored: {client_id, id}
 *   error(frame)         a frame was refused: {client_id?, message, retry_after?}
 *   me(user)             GET /api/users/me, checked before a reconnect
 *   caughtUp()           a catch-up finished: sending can go over the socket again
 *   lost()               the socket went away with whatever answers it still owed
 *   expired()            the server closed the socket on an ended session (1008)
 */
let on = null;

export function setHandlers(handlers) {
  on = handlers;
}

/** Whether a send can go over the socket: it is open and its catch-up is done. */
export const isOpen = () => Boolean(socket && socket.readyState === WebSocket.OPEN && caughtUp);

export const sendFrame = (frame) => socket.send(JSON.stringify(frame));

function url() {
  // Same origin as the page; the token goes in the query string (browsers cannot set headers
  // on a WebSocket; the server never logs query strings).
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws?token=${encodeURIComponent(session.token)}`;
}

export function start() {
  running = true;
  attempt = 0;
  connect();
}

export function stop() {
  running = false;
  clearTimeout(retryTimer);
  stopKeepalive();
  if (socket) {
    const s = socket;
    socket = null;
    s.onclose = s.onmessage = s.onopen = s.onerror = null;
    s.close(1000, "logged out");
  }
  on.show("connecting");
}

function connect() {
  clearTimeout(retryTimer);
  if (!running || socket) return;
  if (!navigator.onLine) {
    on.show("offline");
    return; // the "online" event reconnects
  }
  on.show(attempt ? "reconnecting" : "connecting");
  const generation = state.generation;
  const s = new WebSocket(url());
  socket = s;
  caughtUp = false;
  pushedMax = null;
  s.onopen = () => {
    if (socket !== s) return;
    startKeepalive();
    catchUp(s, generation);
  };
  s.onmessage = (event) => {
    if (socket !== s) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    onFrame(frame);
  };
  s.onclose = (event) => {
    if (socket !== s) return;
    socket = null;
    stopKeepalive();
    onClosed(event, generation);
  };
}

/** Gives up on the current socket now, without waiting for its closing handshake (which may
 *  never complete on a dead network), and goes on as if it had closed with `code`. */
function drop(code, reason) {
  const s = socket;
  if (!s) return;
  socket = null;
  stopKeepalive();
  s.onclose = s.onmessage = s.onopen = null;
  s.close(code, reason);
  onClosed({ code }, state.generation);
}

async function catchUp(s, generation) {
  // Connected first, then fetch everything newer than the cursor: a message stored in
  // between arrives both ways and shows once (by id).
  try {
    let page;
    do {
      const after = state.cursor ? `&after=${encodeURIComponent(state.cursor)}` : "";
      page = await api("GET", `/api/chat/messages?limit=${CATCH_UP_PAGE}${after}`);
      if (generation !== state.generation || socket !== s) return;
      on.messages(page);
      advanceCursor(page.at(-1)?.id);
      // Without a cursor the server answered the newest page; that is where we start.
    } while (page.length === CATCH_UP_PAGE && state.cursor && page.at(-1)?.id);
    // Everything pushed on this connection so far is newer than what was just fetched.
    advanceCursor(pushedMax);
    caughtUp = true;
    attempt = 0;
    on.show("live");
    on.caughtUp();
  } catch (err) {
    if (generation !== state.generation || socket !== s) return;
    // Could not catch up: drop this connection and try again later.
    drop(4000, "catch-up failed");
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case "message": {
      const message = frame.message;
      if (!message?.id) return;
      if (!pushedMax || message.id > pushedMax) pushedMax = message.id;
      on.messages([message]);
      if (caughtUp) advanceCursor(message.id); // pushes arrive in id order
      break;
    }
    case "status":
      on.status(frame);
      break;
    case "read":
    case "typing":
    case "conversation":
    case "removed":
      on[frame.type](frame);
      break;
    case "reply_progress":
      on.progress(frame);
      break;
    case "sent":
      on.sent(frame);
      break;
    case "error":
      on.error(frame);
      break;
    case "pong":
      clearTimeout(pongTimer);
      break;
    default:
      break;
  }
}

async function onClosed(event, generation) {
  if (!running || generation !== state.generation) return;
  on.lost();
  if (event.code === 1008) {
    on.expired();
    return;
  }
  attempt += 1;
  // 1013: we were too slow to read; come straight back and catch up. Otherwise back off:
  // 0.5 s, 1 s, 2 s, ... up to 30 s, with jitter so a restarted server is not stampeded.
  const base = event.code === 1013 ? 250 : Math.min(30_000, 500 * 2 ** Math.min(attempt - 1, 6));
  const delay = base / 2 + Math.random() * (base / 2);
  on.show(navigator.onLine ? "reconnecting" : "offline");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => reconnect(generation), delay);
}

async function reconnect(generation) {
  clearTimeout(retryTimer);
  if (!running || generation !== state.generation || socket) return;
  const run = ++reconnectRun; // the online event and the retry timer may both get here
  if (!navigator.onLine) {
    on.show("offline");
    return;
  }
  // A refused handshake (401) looks like any other failure to a browser: check the token
  // first, so an expired session ends instead of retrying forever.
  try {
    const me = await api("GET", "/api/users/me");
    if (generation !== state.generation || run !== reconnectRun) return;
    on.me(me);
  } catch (err) {
    if (generation !== state.generation || run !== reconnectRun) return;
    if (err instanceof ApiError && err.status === 401) return; // the session ended
    onClosed({ code: 1006 }, generation);
    return;
  }
  connect();
}

function startKeepalive() {
  stopKeepalive();
  keepaliveTimer = setInterval(() => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: "ping", client_id: "keepalive" }));
    clearTimeout(pongTimer);
    const s = socket;
    pongTimer = setTimeout(() => socket === s && drop(4001, "no pong"), PONG_TIMEOUT_MS);
  }, KEEPALIVE_MS);
}

function stopKeepalive() {
  clearInterval(keepaliveTimer);
  clearTimeout(pongTimer);
}

window.addEventListener("online", () => {
  if (running && !socket) {
    attempt = Math.max(attempt, 1);
    reconnect(state.generation);
  }
});
window.addEventListener("offline", () => {
  // The socket would linger until a timeout; close it now so the page says so and catches up
  // as soon as the network is back.
  drop(4002, "offline");
  on.show("offline");
});
