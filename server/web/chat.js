// What the chat does: messages that arrive, users looked up, conversations opened and closed
// (with the URL's #peer), their history loaded page by page, and my sends until the server has
// stored them.
//
// Owns the flow from a change of state to its drawing, and the send retries. Imports api, live
// (to send over the socket when it is up), state and views. Touches the DOM only through views;
// the address bar's #peer is its own, as it names the open conversation.

import { api, ApiError, NetworkError, describeError } from "./api.js";
import * as connection from "./live.js";
import { state, conversation, addMessages, mergeUser, sortedIds } from "./state.js";
import {
  anchorScroll,
  announce,
  focusComposer,
  forgetMessageNode,
  keepDraft,
  renderConversationList,
  renderHistoryTop,
  renderMessages,
  renderMyStatus,
  renderOpenConversation,
  renderPeerHeader,
  scrollToBottom,
  switchConversation,
  toast,
  updateTitle,
} from "./views.js";

export const PAGE = 50; // history page size
const SEND_ACK_TIMEOUT_MS = 10_000; // no `sent` by then: retry over HTTP with the same key

// --- Arriving messages ---------------------------------------------------------------------------

/**
 * Adds messages (any order, any conversations) and draws what changed. `live` marks messages that
 * just arrived (pushes, catch-up): they count as unread and are announced.
 */
export function receive(messages, { live = false } = {}) {
  const { changed, replaced, arrived, unknown } = addMessages(messages, {
    live,
    visible: document.visibilityState === "visible",
  });
  for (const id of replaced) forgetMessageNode(id);
  for (const message of arrived) announce(message);
  for (const peer of unknown) fetchUser(peer);
  if (changed.size) {
    renderConversationList();
    if (state.openPeer && [...changed].some((c) => c.peerId === state.openPeer)) {
      renderMessages({ live });
    }
    updateTitle();
  }
}

/** The open conversation is read once the page is looked at again. */
export function readOpenConversation() {
  if (!state.openPeer) return;
  const conv = state.conversations.get(state.openPeer);
  if (conv?.unread) {
    conv.unread = 0;
    renderConversationList();
    updateTitle();
  }
}

// --- Users and statuses --------------------------------------------------------------------------

const userFetches = new Map();

function fetchUser(id) {
  if (!userFetches.has(id)) {
    const generation = state.generation;
    const request = api("GET", `/api/users/${encodeURIComponent(id)}`)
      .then((user) => {
        if (generation !== state.generation) return;
        rememberUser(user);
      })
      .catch(() => {
        userFetches.delete(id); // try again next time
      });
    userFetches.set(id, request);
  }
  return userFetches.get(id);
}

/** Forgets the lookups of a session that ended. */
export function forgetUserFetches() {
  userFetches.clear();
}

export function rememberUser(user) {
  mergeUser(user);
  renderConversationList();
  if (user.id === state.openPeer) renderPeerHeader();
}

/** Status pushes missed while the socket was down: fetch the open peer again. */
export function refreshUser(id) {
  if (!id) return;
  const generation = state.generation;
  api("GET", `/api/users/${encodeURIComponent(id)}`)
    .then((user) => generation === state.generation && rememberUser(user))
    .catch(() => {});
}

/** A status push: {user, status}. */
export function statusChanged(frame) {
  if (frame.user === state.me?.id) {
    state.me.status = frame.status;
    renderMyStatus();
  }
  if (frame.user) {
    const known = state.users.get(frame.user);
    if (known) rememberUser({ ...known, status: frame.status });
  }
}

// --- Conversations -------------------------------------------------------------------------------

export async function openConversation(peerId, { fromHistory = false } = {}) {
  if (!state.me) return;
  if (state.openPeer && state.openPeer !== peerId) keepDraft(state.openPeer);
  const switching = state.openPeer !== peerId;
  state.openPeer = peerId;
  const conv = conversation(peerId);
  conv.unread = 0;
  if (!fromHistory && location.hash !== `#${peerId}`) history.pushState({ palaver: true }, "", `#${peerId}`);
  if (switching) switchConversation(peerId);
  if (!state.users.has(peerId)) fetchUser(peerId);
  renderOpenConversation();
  renderConversationList();
  updateTitle();
  if (!conv.historyLoaded) {
    await loadHistory(conv);
  }
  scrollToBottom();
  // On a phone the keyboard would cover half the conversation; focus only with a real pointer.
  if (matchMedia("(pointer: fine)").matches) focusComposer();
}

export function closeConversation({ fromHistory = false } = {}) {
  if (state.openPeer) keepDraft(state.openPeer);
  state.openPeer = null;
  if (!fromHistory && location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderOpenConversation();
  renderConversationList();
}

/** Opens the conversation the URL names (#peer id), or closes the open one if it names none. */
export function routeFromHash() {
  if (!state.me) return;
  const peer = decodeURIComponent(location.hash.slice(1));
  if (peer && /^[0-9a-f-]{36}$/i.test(peer)) {
    if (peer !== state.openPeer) openConversation(peer, { fromHistory: true });
  } else if (state.openPeer) {
    closeConversation({ fromHistory: true });
  }
}

async function loadHistory(conv) {
  const generation = state.generation;
  conv.loadingOlder = true;
  renderHistoryTop(conv);
  try {
    const page = await api("GET", `/api/chat/messages?with=${encodeURIComponent(conv.peerId)}&limit=${PAGE}`);
    if (generation !== state.generation) return;
    conv.historyLoaded = true;
    conv.hasOlder = page.length === PAGE;
    receive(page);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 404) {
      toast("That user no longer exists.");
      state.conversations.delete(conv.peerId);
      closeConversation();
      return;
    }
    toast(`Could not load the conversation: ${describeError(err)}`);
  } finally {
    conv.loadingOlder = false;
    if (state.openPeer === conv.peerId) renderMessages();
  }
}

export async function loadOlder() {
  const conv = state.conversations.get(state.openPeer);
  if (!conv || conv.loadingOlder || !conv.hasOlder) return;
  const oldest = sortedIds(conv)[0];
  if (!oldest) return;
  const generation = state.generation;
  conv.loadingOlder = true;
  renderHistoryTop(conv);
  try {
    const page = await api(
      "GET",
      `/api/chat/messages?with=${encodeURIComponent(conv.peerId)}&before=${encodeURIComponent(oldest)}&limit=${PAGE}`,
    );
    if (generation !== state.generation) return;
    conv.hasOlder = page.length === PAGE;
    // Keep the messages on screen where they are while older ones are added above.
    const restoreScroll = anchorScroll();
    conv.loadingOlder = false;
    receive(page);
    if (state.openPeer === conv.peerId) {
      renderMessages();
      restoreScroll();
    }
  } catch (err) {
    toast(`Could not load older messages: ${describeError(err)}`);
  } finally {
    conv.loadingOlder = false;
    if (state.openPeer === conv.peerId) renderHistoryTop(conv);
  }
}

// --- Sending -----------------------------------------------------------------------------------
//
// Each send gets a client id, which is also its idempotency key: over the socket it is the
// frame's client_id, over HTTP the Idempotency-Key header. A send whose answer is lost (socket
// closed, timeout) is retried over HTTP with the same key, and the server stores it once.

/** A v4 UUID. crypto.randomUUID exists only in secure contexts (https, localhost); a server on
 *  plain http at a LAN address is not one, but crypto.getRandomValues works everywhere. */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function send(peer, content) {
  const p = { clientId: uuid(), peer, content, createdAt: Date.now(), state: "sending", id: null, error: null, timer: null };
  state.pending.set(p.clientId, p);
  renderMessages();
  transmit(p);
}

function transmit(p) {
  p.state = "sending";
  p.error = null;
  if (connection.isOpen()) {
    connection.sendFrame({ type: "send", recipient: p.peer, content: p.content, client_id: p.clientId });
    clearTimeout(p.timer);
    p.timer = setTimeout(() => sendOverHttp(p), SEND_ACK_TIMEOUT_MS);
  } else {
    sendOverHttp(p);
  }
  if (state.openPeer === p.peer) renderMessages();
}

async function sendOverHttp(p) {
  clearTimeout(p.timer);
  if (!state.pending.has(p.clientId)) return;
  const generation = state.generation;
  p.state = "sending";
  try {
    const answer = await api("POST", "/api/chat/send", {
      body: { recipient: p.peer, content: p.content },
      headers: { "Idempotency-Key": p.clientId },
    });
    if (generation !== state.generation) return;
    confirmSend(p.clientId, answer.id);
  } catch (err) {
    if (generation !== state.generation || !state.pending.has(p.clientId)) return;
    if (err instanceof NetworkError) {
      p.state = "queued"; // sent again when the socket is back
    } else {
      p.state = "failed";
      p.error = describeError(err);
    }
    if (state.openPeer === p.peer) renderMessages();
  }
}

/** The server stored my send as `id`: the pending bubble gives way to the message. */
export function confirmSend(clientId, id) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  state.pending.delete(clientId);
  const conv = conversation(p.peer);
  if (!conv.messages.has(id)) {
    // The push has not arrived (or never will, if the socket is down): show the message now;
    // the push or a catch-up page carries the same id and replaces nothing.
    receive([
      {
        id,
        sender: state.me.id,
        recipient: p.peer,
        content: p.content,
        sent_at: new Date().toISOString(),
        kind: "user",
        local: true, // until the push or a fetched page brings the server's copy
      },
    ]);
  } else if (state.openPeer === p.peer) {
    renderMessages();
  }
}

/** An error frame: if it answers one of my sends, that send failed. */
export function sendRefused(frame) {
  if (frame.client_id && state.pending.has(frame.client_id)) {
    const retry = frame.retry_after ? ` (try again in ${frame.retry_after} s)` : "";
    failSend(frame.client_id, `${frame.message}${retry}`);
  }
}

function failSend(clientId, message) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  p.state = "failed";
  p.error = message;
  if (state.openPeer === p.peer) renderMessages();
}

export function retrySend(clientId) {
  const p = state.pending.get(clientId);
  if (p) transmit(p);
}

export function discardSend(clientId) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  state.pending.delete(clientId);
  if (state.openPeer === p.peer) renderMessages();
}

/** Sends whose answer the closed socket took with it: again over HTTP, same key. */
export function resendUnanswered() {
  for (const p of state.pending.values()) {
    if (p.state === "sending") sendOverHttp(p);
  }
}

/** Sends that waited for a connection: the socket is back. */
export function flushQueued() {
  for (const p of state.pending.values()) {
    if (p.state === "queued") transmit(p);
  }
}

/** Stops the retry timers of a session that ended. */
export function stopSends() {
  for (const p of state.pending.values()) clearTimeout(p.timer);
}
