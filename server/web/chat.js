// What the chat does: messages that arrive, users looked up, conversations opened and closed
// (with the URL's #key: a peer's id, or a group's), their history loaded page by page, my sends
// until the server has stored them, groups created, read marks and typing.
//
// Owns the flow from a change of state to its drawing, and the send retries. Imports api, live
// (to send over the socket when it is up), state and views. Touches the DOM only through views;
// the address bar's #key is its own, as it names the open conversation.

import { api, ApiError, NetworkError, describeError } from "./api.js";
import * as connection from "./live.js";
import {
  state,
  addMessages,
  byId,
  conversation,
  holding,
  latestMessage,
  mergeGroup,
  mergeUser,
  moveMyMark,
  sortedIds,
} from "./state.js";
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
  renderTyping,
  restoreDraftText,
  scrollToBottom,
  switchConversation,
  toast,
  updateTitle,
} from "./views.js";

export const PAGE = 50; // history page size
// A moderation plugin refused the message (its reason is the error's text): retrying sends the
// same words again, so the page offers to edit them instead.
const REFUSED = 422;
const SEND_ACK_TIMEOUT_MS = 10_000; // no `sent` by then: retry over HTTP with the same key
const TYPING_EVERY_MS = 2_000; // the server relays one typing notice per 2 s anyway
const TYPING_SHOWN_MS = 5_000; // "… is typing" goes away unless renewed

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
    if (state.openKey && [...changed].some((c) => c.key === state.openKey)) {
      renderMessages({ live });
      renderTyping();
      if (live) readOpenConversation();
    }
    updateTitle();
  }
}

/** The open conversation is read while the page is looked at: the server keeps the mark, and
 *  tells my other devices (their badges clear) and the others ("Seen"). */
export function readOpenConversation() {
  if (!state.openKey || document.visibilityState !== "visible") return;
  const conv = state.conversations.get(state.openKey);
  if (!conv) return;
  if (conv.unread) {
    conv.unread = 0;
    renderConversationList();
    updateTitle();
  }
  const latest = latestMessage(conv);
  if (!conv.id || !latest || latest.local || (conv.readUpto && conv.readUpto >= latest.id)) return;
  const generation = state.generation;
  api("POST", `/api/conversations/${encodeURIComponent(conv.id)}/read`, { body: { upto: latest.id } })
    .then((mark) => generation === state.generation && moveMyMark(conv, mark.upto))
    .catch(() => {}); // the next message or visit tries again
}

/** A read push: mine (another device read it: the badge clears) or someone else's ("Seen"). */
export function readMarkMoved(frame) {
  const conv = byId(frame.conversation);
  if (!conv) return;
  if (frame.user === state.me?.id) {
    if (moveMyMark(conv, frame.upto)) {
      renderConversationList();
      updateTitle();
    }
    return;
  }
  const before = conv.marks.get(frame.user);
  if (!before || frame.upto > before) conv.marks.set(frame.user, frame.upto);
  if (state.openKey === conv.key) renderMessages();
}

// --- Typing --------------------------------------------------------------------------------------

let lastTypingSent = 0;

/** I am typing in the open conversation: told to the others, at most every 2 s. */
export function typing() {
  const conv = state.conversations.get(state.openKey);
  if (!conv?.id || !connection.isOpen() || Date.now() - lastTypingSent < TYPING_EVERY_MS) return;
  lastTypingSent = Date.now();
  connection.sendFrame({ type: "typing", conversation: conv.id });
}

/** Someone else is typing: shown for a few seconds unless renewed. */
export function someoneTyping(frame) {
  const conv = byId(frame.conversation);
  if (!conv || frame.user === state.me?.id) return;
  conv.typing.set(frame.user, Date.now() + TYPING_SHOWN_MS);
  if (!state.users.has(frame.user)) fetchUser(frame.user);
  if (state.openKey === conv.key) renderTyping();
  setTimeout(() => {
    if ((conv.typing.get(frame.user) ?? 0) <= Date.now()) {
      conv.typing.delete(frame.user);
      if (state.openKey === conv.key) renderTyping();
    }
  }, TYPING_SHOWN_MS + 50);
}

// --- Auto-replies being written ----------------------------------------------------------------

// The responder's deadline is 10 s; a draft whose final message never comes (the socket went
// down meanwhile; the catch-up brings the final message) goes away after that, with a margin.
const DRAFT_FORGOTTEN_MS = 15_000;

/** A reply_progress push: the auto-reply to `reply_to` so far. Shown growing under the
 *  conversation until the stored auto-reply (with the same reply_to) replaces it. */
export function replyProgress(frame) {
  const conv = holding(frame.reply_to);
  if (!conv || conv.answered.has(frame.reply_to) || typeof frame.text !== "string") return;
  const draft = conv.drafts.get(frame.reply_to);
  if (draft && draft.seq >= frame.seq) return; // pushes from two nodes may cross
  clearTimeout(draft?.timer);
  const generation = state.generation;
  const timer = setTimeout(() => {
    if (generation !== state.generation || conv.drafts.get(frame.reply_to)?.seq !== frame.seq) return;
    conv.drafts.delete(frame.reply_to);
    if (state.openKey === conv.key) renderMessages();
  }, DRAFT_FORGOTTEN_MS);
  conv.drafts.set(frame.reply_to, { text: frame.text, seq: frame.seq, timer });
  if (state.openKey === conv.key) renderMessages({ live: true });
}

// --- Groups --------------------------------------------------------------------------------------

/** A group was created, renamed or its members changed. */
export function groupChanged(frame) {
  const conv = mergeGroup(frame.conversation);
  renderConversationList();
  if (state.openKey === conv.key) renderPeerHeader();
}

/** I left or was removed: the group goes from the page. */
export function removedFromGroup(frame) {
  const conv = byId(frame.conversation);
  if (!conv) return;
  state.conversations.delete(conv.key);
  if (state.openKey === conv.key) {
    closeConversation();
    toast(`You are no longer in ${conv.title ?? "that group"}.`);
  }
  renderConversationList();
  updateTitle();
}

/** A group's members, which the conversation list does not carry. */
function fetchGroup(conv) {
  const generation = state.generation;
  api("GET", `/api/conversations/${encodeURIComponent(conv.id)}`)
    .then((view) => {
      if (generation !== state.generation) return;
      mergeGroup(view);
      if (state.openKey === conv.key) renderPeerHeader();
    })
    .catch(() => {});
}

/** Creates a group with the people whose emails are given, and opens it. */
export async function createGroup(title, emails) {
  const members = [];
  for (const email of emails) {
    try {
      const user = await api("GET", `/api/users?email=${encodeURIComponent(email)}`);
      rememberUser(user);
      members.push(user.id);
    } catch (err) {
      throw err instanceof ApiError && err.status === 404 ? new Error(`No account has the email ${email}.`) : err;
    }
  }
  const group = await api("POST", "/api/conversations", { body: { title, members } });
  const conv = mergeGroup(group);
  conv.historyLoaded = false;
  await openConversation(conv.key);
}

/** Leaves the open group. */
export async function leaveGroup() {
  const conv = state.conversations.get(state.openKey);
  if (conv?.kind !== "group") return;
  try {
    await api("DELETE", `/api/conversations/${encodeURIComponent(conv.id)}/members/${encodeURIComponent(state.me.id)}`);
    removedFromGroup({ conversation: conv.id });
  } catch (err) {
    toast(`Could not leave the group: ${describeError(err)}`);
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
  if (user.id === state.openKey || state.conversations.get(state.openKey)?.kind === "group") renderPeerHeader();
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

export async function openConversation(key, { fromHistory = false } = {}) {
  if (!state.me) return;
  if (state.openKey && state.openKey !== key) keepDraft(state.openKey);
  const switching = state.openKey !== key;
  state.openKey = key;
  const conv = conversation(key);
  conv.unread = 0;
  if (!fromHistory && location.hash !== `#${key}`) history.pushState({ palaver: true }, "", `#${key}`);
  if (switching) switchConversation(key);
  if (conv.kind === "direct" && !state.users.has(key)) fetchUser(key);
  if (conv.kind === "group" && !conv.members.length) fetchGroup(conv);
  renderOpenConversation();
  renderConversationList();
  updateTitle();
  if (!conv.historyLoaded) {
    await loadHistory(conv);
  }
  scrollToBottom();
  readOpenConversation();
  // On a phone the keyboard would cover half the conversation; focus only with a real pointer.
  if (matchMedia("(pointer: fine)").matches) focusComposer();
}

export function closeConversation({ fromHistory = false } = {}) {
  if (state.openKey) keepDraft(state.openKey);
  state.openKey = null;
  if (!fromHistory && location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderOpenConversation();
  renderConversationList();
}

/** Opens the conversation the URL names (#peer id or #group id), or closes the open one. */
export function routeFromHash() {
  if (!state.me) return;
  const key = decodeURIComponent(location.hash.slice(1));
  if (key && /^[0-9a-f-]{36}$/i.test(key)) {
    if (key !== state.openKey) openConversation(key, { fromHistory: true });
  } else if (state.openKey) {
    closeConversation({ fromHistory: true });
  }
}

/** The path of a conversation's messages, for a page of `query`. */
function messagesPath(conv, query) {
  return conv.kind === "group"
    ? `/api/conversations/${encodeURIComponent(conv.id)}/messages?${query}`
    : `/api/chat/messages?with=${encodeURIComponent(conv.peerId)}&${query}`;
}

async function loadHistory(conv) {
  const generation = state.generation;
  conv.loadingOlder = true;
  renderHistoryTop(conv);
  try {
    const page = await api("GET", messagesPath(conv, `limit=${PAGE}`));
    if (generation !== state.generation) return;
    conv.historyLoaded = true;
    conv.hasOlder = page.length === PAGE;
    receive(page);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 404) {
      toast(conv.kind === "group" ? "You are not in that group." : "That user no longer exists.");
      state.conversations.delete(conv.key);
      closeConversation();
      return;
    }
    toast(`Could not load the conversation: ${describeError(err)}`);
  } finally {
    conv.loadingOlder = false;
    if (state.openKey === conv.key) renderMessages();
  }
}

export async function loadOlder() {
  const conv = state.conversations.get(state.openKey);
  if (!conv || conv.loadingOlder || !conv.hasOlder) return;
  const oldest = sortedIds(conv)[0];
  if (!oldest) return;
  const generation = state.generation;
  conv.loadingOlder = true;
  renderHistoryTop(conv);
  try {
    const page = await api("GET", messagesPath(conv, `before=${encodeURIComponent(oldest)}&limit=${PAGE}`));
    if (generation !== state.generation) return;
    conv.hasOlder = page.length === PAGE;
    // Keep the messages on screen where they are while older ones are added above.
    const restoreScroll = anchorScroll();
    conv.loadingOlder = false;
    receive(page);
    if (state.openKey === conv.key) {
      renderMessages();
      restoreScroll();
    }
  } catch (err) {
    toast(`Could not load older messages: ${describeError(err)}`);
  } finally {
    conv.loadingOlder = false;
    if (state.openKey === conv.key) renderHistoryTop(conv);
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

/** Where a send goes, as the socket frame and the HTTP call say it. */
function destination(p) {
  const conv = state.conversations.get(p.key);
  return conv?.kind === "group"
    ? { frame: { conversation: conv.id }, path: `/api/conversations/${encodeURIComponent(conv.id)}/messages`, body: {} }
    : { frame: { recipient: p.key }, path: "/api/chat/send", body: { recipient: p.key } };
}

export function send(key, content) {
  const p = { clientId: uuid(), key, content, createdAt: Date.now(), state: "sending", id: null, error: null, timer: null };
  state.pending.set(p.clientId, p);
  renderMessages();
  transmit(p);
}

function transmit(p) {
  p.state = "sending";
  p.error = null;
  if (connection.isOpen()) {
    connection.sendFrame({ type: "send", ...destination(p).frame, content: p.content, client_id: p.clientId });
    clearTimeout(p.timer);
    p.timer = setTimeout(() => sendOverHttp(p), SEND_ACK_TIMEOUT_MS);
  } else {
    sendOverHttp(p);
  }
  if (state.openKey === p.key) renderMessages();
}

async function sendOverHttp(p) {
  clearTimeout(p.timer);
  if (!state.pending.has(p.clientId)) return;
  const generation = state.generation;
  p.state = "sending";
  try {
    const { path, body } = destination(p);
    const answer = await api("POST", path, {
      body: { ...body, content: p.content },
      headers: { "Idempotency-Key": p.clientId },
    });
    if (generation !== state.generation) return;
    confirmSend(p.clientId, answer.id);
  } catch (err) {
    if (generation !== state.generation || !state.pending.has(p.clientId)) return;
    if (err instanceof NetworkError) {
      p.state = "queued"; // sent again when the socket is back
    } else if (err instanceof ApiError && err.status === REFUSED) {
      p.state = "refused";
      p.error = err.message;
    } else {
      p.state = "failed";
      p.error = describeError(err);
    }
    if (state.openKey === p.key) renderMessages();
  }
}

/** The server stored my send as `id`: the pending bubble gives way to the message. */
export function confirmSend(clientId, id) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  state.pending.delete(clientId);
  const conv = conversation(p.key);
  if (!conv.messages.has(id)) {
    // The push has not arrived (or never will, if the socket is down): show the message now;
    // the push or a catch-up page carries the same id and replaces nothing.
    receive([
      {
        id,
        sender: state.me.id,
        conversation: conv.id,
        ...(conv.kind === "group" ? {} : { recipient: p.key }),
        content: p.content,
        sent_at: new Date().toISOString(),
        kind: "user",
        local: true, // until the push or a fetched page brings the server's copy
      },
    ]);
  } else if (state.openKey === p.key) {
    renderMessages();
  }
}

/** An error frame: if it answers one of my sends, that send failed (or was refused). */
export function sendRefused(frame) {
  if (frame.client_id && state.pending.has(frame.client_id)) {
    const retry = frame.retry_after ? ` (try again in ${frame.retry_after} s)` : "";
    failSend(frame.client_id, `${frame.message}${retry}`, frame.code === REFUSED ? "refused" : "failed");
  }
}

function failSend(clientId, message, how = "failed") {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  p.state = how;
  p.error = message;
  if (state.openKey === p.key) renderMessages();
}

/** A refused send goes back into the composer, to be reworded. */
export function editSend(clientId) {
  const p = state.pending.get(clientId);
  if (!p) return;
  discardSend(clientId);
  if (state.openKey === p.key) restoreDraftText(p.content);
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
  if (state.openKey === p.key) renderMessages();
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
