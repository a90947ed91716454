// Drawing the state: which view shows (boot, login, chat), the connection indicator, my status,
// the conversation list, the open conversation with its pending sends, announcements for screen
// readers, the title's unread count and toasts.
//
// Owns the DOM it draws, the message pane's own controls (scrolling, the jump button, the
// character count, Enter to send) and the composer's drafts. Imports dom and state, and reads
// state without changing it. What a click on one of its nodes does to the chat is given by app.js
// through setActions, so drawing never imports behaviour.

import { $, el, icon, reconcile } from "./dom.js";
import { state, latestMessage, sortedIds } from "./state.js";

const MAX_CHARS = 4000; // the server's content limit

let handlers = { open() {}, retry() {}, discard() {}, edit() {}, loadOlder() {} };

/** What clicks on drawn nodes do: open(peerId), retry(clientId), discard(clientId),
 *  edit(clientId), loadOlder(). */
export function setActions(actions) {
  handlers = actions;
}

// ---------------------------------------------------------------------------------------------
// Formatting

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayFormatYear = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "long", day: "numeric" });
const shortDayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

const dayKey = (date) => `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(date) === dayKey(today)) return "Today";
  if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
  return date.getFullYear() === today.getFullYear() ? dayFormat.format(date) : dayFormatYear.format(date);
}

/** The time in the conversation list: a time today, a date before. */
function listTime(date) {
  return dayKey(date) === dayKey(new Date()) ? timeFormat.format(date) : shortDayFormat.format(date);
}

const statusText = (status) => (status === "BUSY" ? "Busy" : status === "AVAILABLE" ? "Available" : "");

/** One of eight avatar colours, the same for an address on every load. */
function hueClass(text) {
  let hash = 0;
  for (const ch of text) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hue-${hash % 8}`;
}

const initial = (email) => (email ? [...email][0].toUpperCase() : "?");

// ---------------------------------------------------------------------------------------------
// Views

const app = $("app");

export function showView(view) {
  app.dataset.view = view;
}

export function setBootMessage(text, canRetry = false) {
  $("boot-text").textContent = text;
  $("boot-retry").hidden = !canRetry;
}

const connectionText = {
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  live: "Live",
};

/** The live connection's state in the top bar: connecting, reconnecting, offline or live. */
export function renderConnection(name) {
  const node = $("connection");
  node.dataset.state = name;
  node.textContent = connectionText[name];
}

// --- My status ---------------------------------------------------------------------------------

const statusToggle = $("status-toggle");

export function renderMyStatus() {
  const status = state.me?.status ?? "AVAILABLE";
  const busy = status === "BUSY";
  statusToggle.dataset.status = status;
  statusToggle.setAttribute("aria-pressed", String(busy));
  $("status-label").textContent = statusText(status);
  statusToggle.title = busy ? "You are busy: click to become available" : "You are available: click to become busy";
  statusToggle.setAttribute("aria-label", `Status: ${statusText(status)}. Switch to ${busy ? "available" : "busy"}`);
  $("busy-note").hidden = !busy;
}

// --- Conversation list -------------------------------------------------------------------------

const conversationNodes = new Map();

/** What a conversation is called in the list and its header. */
function conversationName(conv) {
  if (conv.kind === "group") return conv.title ?? "Group";
  return state.users.get(conv.peerId)?.email ?? "…";
}

const emailOf = (id) => state.users.get(id)?.email ?? "someone";

export function renderConversationList() {
  if (!state.me) return;
  const convs = [...state.conversations.values()]
    .filter((c) => c.messages.size || c.key === state.openKey || c.kind === "group")
    .sort((a, b) => (latestMessage(b)?.id ?? "\uffff").localeCompare(latestMessage(a)?.id ?? "\uffff"));
  $("no-conversations").hidden = convs.length > 0;
  reconcile(
    $("conversations"),
    convs.map((conv) => ({ key: conv.key, conv })),
    conversationNodes,
    ({ conv }) => {
      const button = el("button", { type: "button", class: "conv", "data-testid": "conversation" });
      button.addEventListener("click", () => handlers.open(conv.key));
      return el("li", {}, button);
    },
    (li, { conv }) => {
      const group = conv.kind === "group";
      const user = group ? null : state.users.get(conv.peerId);
      const name = conversationName(conv);
      const last = latestMessage(conv);
      const button = li.firstElementChild;
      button.dataset.kind = conv.kind;
      button.dataset.key = conv.key;
      button.dataset.peer = conv.peerId ?? "";
      button.dataset.email = user?.email ?? "";
      button.dataset.unread = String(conv.unread);
      if (conv.key === state.openKey) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
      let preview = "";
      if (last) {
        const from = last.sender === state.me.id ? "You: " : group ? `${emailOf(last.sender)}: ` : "";
        preview = from + (last.kind === "auto_reply" ? "Auto-reply: " : "");
        preview += last.content.replace(/\s+/g, " ");
      }
      const status = user?.status;
      button.replaceChildren(
        el(
          "span",
          { class: `avatar ${hueClass(name)}${group ? " group" : ""}`, "aria-hidden": "true" },
          group ? initial(name) : initial(user?.email),
          status ? el("span", { class: "presence", "data-status": status }) : null,
        ),
        el(
          "span",
          { class: "conv-main" },
          el("span", { class: "conv-top" },
            el("span", { class: "conv-email" }, name),
            last ? el("time", { class: "conv-time", datetime: last.sent_at }, listTime(new Date(last.sent_at))) : null),
          el("span", { class: "conv-bottom" },
            el("span", { class: "conv-preview" }, preview || "No messages yet"),
            conv.unread
              ? el("span", { class: "badge", "data-testid": "unread", "aria-label": `${conv.unread} unread` }, String(conv.unread))
              : null),
        ),
      );
      button.setAttribute(
        "aria-label",
        `${group ? "Group " : ""}${name}${status ? `, ${statusText(status)}` : ""}${conv.unread ? `, ${conv.unread} unread` : ""}`,
      );
    },
  );
}

// --- Open conversation -------------------------------------------------------------------------

const messagesScroll = $("messages-scroll");
const messageList = $("messages");
const messageInput = $("message-input");
const messageNodes = new Map();
const drafts = new Map(); // conversation key -> unsent text

/** Keeps the composer's text for `key`, to put back when its conversation opens again. */
export function keepDraft(key) {
  drafts.set(key, messageInput.value);
}

/** Empties the message pane for the conversation `key`, and puts back its draft. */
export function switchConversation(key) {
  messageNodes.clear();
  messageList.replaceChildren();
  messageInput.value = drafts.get(key) ?? "";
  updateCharCount();
  $("composer-error").textContent = "";
}

/** The server's copy of a message drawn from our own: draw it anew, with the server's time. */
export function forgetMessageNode(id) {
  messageNodes.get(`m:${id}`)?.remove();
  messageNodes.delete(`m:${id}`);
}

/** Clears everything drawn for a session that ended. */
export function resetViews() {
  messageNodes.clear();
  conversationNodes.clear();
  messageList.replaceChildren();
  $("conversations").replaceChildren();
  messageInput.value = "";
  drafts.clear();
}

$("load-older").addEventListener("click", () => handlers.loadOlder());
messagesScroll.addEventListener(
  "scroll",
  () => {
    if (messagesScroll.scrollTop < 120) handlers.loadOlder();
    if (isNearBottom()) $("jump").hidden = true;
  },
  { passive: true },
);
$("jump").addEventListener("click", () => scrollToBottom(true));

function isNearBottom() {
  return messagesScroll.scrollHeight - messagesScroll.scrollTop - messagesScroll.clientHeight < 80;
}

export function scrollToBottom(smooth = false) {
  messagesScroll.scrollTo({ top: messagesScroll.scrollHeight, behavior: smooth ? "smooth" : "instant" });
  $("jump").hidden = true;
}

/**
 * Notes how far the list is from its bottom; the function returned scrolls back to that: what is
 * added above pushes the content down by exactly the growth of the scroll height, so the
 * messages on screen stay where they are.
 */
export function anchorScroll() {
  const fromBottom = messagesScroll.scrollHeight - messagesScroll.scrollTop;
  return () => {
    messagesScroll.scrollTop = messagesScroll.scrollHeight - fromBottom;
  };
}

export function renderOpenConversation() {
  const open = Boolean(state.openKey);
  app.classList.toggle("conv-open", open);
  $("chat-empty").hidden = open;
  $("chat-open").hidden = !open;
  if (open) {
    renderPeerHeader();
    renderMessages();
    renderTyping();
  }
}

/** The open conversation's header: the peer and their status, or the group and its members. */
export function renderPeerHeader() {
  const conv = state.conversations.get(state.openKey);
  const group = conv?.kind === "group";
  const user = group ? null : state.users.get(state.openKey);
  const name = group ? conversationName(conv) : user?.email ?? "…";
  $("peer-email").textContent = name;
  const avatar = $("peer-avatar");
  avatar.className = `avatar ${hueClass(name)}${group ? " group" : ""}`;
  avatar.replaceChildren(group ? initial(name) : initial(user?.email));
  const status = $("peer-status");
  status.dataset.status = group ? "group" : user?.status ?? "";
  status.textContent = group
    ? `${conv.members.length} members`
    : user?.status === "BUSY"
      ? "Busy · auto-replies are on"
      : statusText(user?.status);
  const members = $("member-list");
  members.hidden = !group;
  $("leave-group").hidden = !group;
  members.replaceChildren(
    ...(group ? conv.members : []).map((m) =>
      el(
        "li",
        { "data-testid": "member", "data-id": m.id },
        m.id === state.me.id ? `${m.email} (you)` : m.email,
        m.role === "owner" ? el("span", { class: "role" }, " · owner") : null,
      ),
    ),
  );
}

/** "… is typing" under the open conversation. */
export function renderTyping() {
  const conv = state.conversations.get(state.openKey);
  const now = Date.now();
  const who = conv ? [...conv.typing].filter(([, until]) => until > now).map(([id]) => emailOf(id)) : [];
  const node = $("typing");
  node.hidden = who.length === 0;
  node.textContent =
    who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

export function renderHistoryTop(conv) {
  const button = $("load-older");
  button.hidden = !conv.historyLoaded || !conv.hasOlder;
  button.disabled = conv.loadingOlder;
  button.textContent = conv.loadingOlder ? "Loading…" : "Load older messages";
  const start = $("history-start");
  start.hidden = !conv.historyLoaded || conv.hasOlder;
  start.textContent = conv.messages.size
    ? "This is the beginning of your conversation."
    : "No messages yet. Say hello!";
  messagesScroll.setAttribute("aria-busy", String(conv.loadingOlder));
}

/** Draws the open conversation: day separators, confirmed messages, auto-replies being written,
 *  then my pending sends. */
export function renderMessages({ live = false } = {}) {
  const conv = state.conversations.get(state.openKey);
  if (!conv) return;
  const seen = seenMark(conv);
  const stick = isNearBottom();
  const items = [];
  let lastDay = null;
  let prev = null;
  const addDay = (date) => {
    const key = dayKey(date);
    if (key !== lastDay) {
      items.push({ key: `d:${key}`, type: "day", label: dayLabel(date) });
      lastDay = key;
      prev = null;
    }
  };
  for (const id of sortedIds(conv)) {
    const message = conv.messages.get(id);
    const date = new Date(message.sent_at);
    addDay(date);
    const grouped =
      prev && prev.sender === message.sender && prev.kind === message.kind && date - new Date(prev.sent_at) < 5 * 60_000;
    items.push({ key: `m:${id}`, type: "message", message, grouped, group: conv.kind === "group", seen: seen?.id === id ? seen.text : "" });
    prev = message;
  }
  for (const [replyTo, draft] of conv.drafts) {
    const answering = conv.messages.get(replyTo);
    if (!answering) continue;
    items.push({ key: `r:${replyTo}`, type: "draft", draft, answering, grouped: false, group: conv.kind === "group" });
    prev = null;
  }
  for (const p of state.pending.values()) {
    if (p.key !== conv.key) continue;
    if (p.id && conv.messages.has(p.id)) continue; // shown as the real message already
    addDay(new Date(p.createdAt));
    items.push({ key: `p:${p.clientId}`, type: "pending", pending: p, grouped: false });
  }
  const initialRender = messageNodes.size === 0;
  const lastKeyBefore = messageList.lastElementChild?.dataset.key;
  reconcile(messageList, items, messageNodes, createMessageNode, (node, item) => {
    if (item.type === "day") {
      node.firstElementChild.textContent = item.label;
    } else {
      node.classList.toggle("grouped", item.grouped);
      if (item.type === "pending") updatePendingNode(node, item.pending);
      if (item.type === "draft") node.querySelector(".text").textContent = item.draft.text;
      if (item.type === "message") updateSeen(node, item.seen);
    }
    if (live && !initialRender && !node.dataset.seen) node.classList.add("appear");
    node.dataset.seen = "1";
  });
  renderHistoryTop(conv);
  // Follow the conversation when already at the bottom, or when I just sent something; when
  // reading further up, a button offers to jump down instead.
  const last = items.at(-1);
  const grewAtBottom = last && last.key !== lastKeyBefore;
  const mineLast = grewAtBottom && (last.type === "pending" || last.message?.sender === state.me.id);
  if (stick || mineLast) scrollToBottom();
  else if (live && grewAtBottom) $("jump").hidden = false;
}

/**
 * Where "Seen" goes: under my newest message that someone else has read (their read marks, as
 * pushed), with who in a group. Null when nobody has read anything of mine yet.
 */
function seenMark(conv) {
  if (!conv.marks.size) return null;
  const mine = sortedIds(conv).filter((id) => conv.messages.get(id).sender === state.me.id);
  for (let i = mine.length - 1; i >= 0; i--) {
    const readers = [...conv.marks].filter(([user, upto]) => user !== state.me.id && upto >= mine[i]);
    if (readers.length) {
      const text = conv.kind === "group" ? `Seen by ${readers.map(([user]) => emailOf(user)).join(", ")}` : "Seen";
      return { id: mine[i], text };
    }
  }
  return null;
}

function updateSeen(node, text) {
  let seen = node.querySelector(".seen");
  if (!text) {
    seen?.remove();
    return;
  }
  if (!seen) {
    seen = el("span", { class: "seen", "data-testid": "seen" });
    node.append(seen);
  }
  seen.textContent = text;
}

function createMessageNode(item) {
  if (item.type === "day") {
    return el("li", { class: "day", role: "presentation" }, el("span", {}, item.label));
  }
  if (item.type === "draft") return createDraftNode(item);
  const message = item.message ?? null;
  const pending = item.pending ?? null;
  const mine = pending ? true : message.sender === state.me.id;
  const kind = message?.kind ?? "user";
  const auto = kind === "auto_reply";
  const content = message?.content ?? pending.content;
  const sentAt = message ? new Date(message.sent_at) : new Date(pending.createdAt);
  const peerEmail = item.group ? emailOf(message?.sender) : state.users.get(state.openKey)?.email ?? "them";
  const who = mine ? (auto ? "Auto-reply sent for you" : "You") : auto ? `Auto-reply from ${peerEmail}` : peerEmail;

  const bubble = el(
    "div",
    { class: "bubble" },
    el("span", { class: "sr-only" }, `${who}: `),
    auto ? el("span", { class: "auto-label", "aria-hidden": "true" }, icon("bot"), "Auto-reply") : null,
    item.group && !mine && !item.grouped
      ? el("span", { class: "sender", "data-testid": "message-sender", "aria-hidden": "true" }, peerEmail)
      : null,
    el("p", { class: "text", "data-testid": "message-text" }, content),
    el(
      "span",
      { class: "meta" },
      el("time", { datetime: sentAt.toISOString(), title: fullFormat.format(sentAt) }, timeFormat.format(sentAt)),
      pending ? el("span", { class: "delivery" }) : null,
    ),
  );
  const li = el(
    "li",
    {
      class: `msg ${mine ? "mine" : "theirs"}${auto ? " auto" : ""}`,
      "data-testid": "message",
      "data-kind": kind,
      "data-id": message?.id,
      "data-sender": mine ? "me" : "peer",
      "data-state": pending ? "pending" : "sent",
      "data-client-id": pending?.clientId,
    },
    bubble,
  );
  if (pending) {
    const actions = el(
      "span",
      { class: "pending-actions" },
      el("span", { class: "pending-error", "data-testid": "send-error" }),
      el("button", { type: "button", class: "link-btn", "data-action": "retry" }, "Retry"),
      el("button", { type: "button", class: "link-btn", "data-action": "edit" }, "Edit"),
      el("button", { type: "button", class: "link-btn", "data-action": "discard" }, "Discard"),
    );
    actions.addEventListener("click", (event) => {
      const action = event.target.closest("button")?.dataset.action;
      if (action === "retry") handlers.retry(pending.clientId);
      if (action === "discard") handlers.discard(pending.clientId);
      if (action === "edit") handlers.edit(pending.clientId);
    });
    li.append(actions);
  }
  return li;
}

const deliveryText = {
  failed: "Not sent",
  refused: "Refused",
  queued: "Waiting for connection…",
  sending: "Sending…",
};

function updatePendingNode(node, p) {
  const stopped = p.state === "failed" || p.state === "refused";
  node.dataset.state = stopped ? p.state : "pending";
  node.querySelector(".delivery").textContent = deliveryText[p.state] ?? deliveryText.sending;
  // A refusal names the moderator's reason; sending the same words again would be refused
  // again, so it offers Edit instead of Retry.
  node.querySelector(".pending-error").textContent = stopped ? p.error ?? "" : "";
  node.querySelector(".pending-actions").hidden = !stopped;
  node.querySelector('[data-action="retry"]').hidden = p.state !== "failed";
  node.querySelector('[data-action="edit"]').hidden = p.state !== "refused";
}

/** An auto-reply being written: the text so far, on the side of the person it answers for. */
function createDraftNode({ answering, group }) {
  const mine = answering.sender !== state.me.id; // it answers a message to me: it speaks for me
  const answerer = group ? "" : mine ? "for you" : `from ${state.users.get(state.openKey)?.email ?? "them"}`;
  return el(
    "li",
    {
      class: `msg ${mine ? "mine" : "theirs"} auto draft`,
      "data-testid": "reply-draft",
      "data-kind": "auto_reply",
      "data-state": "writing",
      "data-reply-to": answering.id,
      "aria-live": "polite",
    },
    el(
      "div",
      { class: "bubble" },
      el("span", { class: "sr-only" }, `Auto-reply ${answerer}, being written: `),
      el("span", { class: "auto-label", "aria-hidden": "true" }, icon("bot"), "Auto-reply · writing…"),
      el("p", { class: "text", "data-testid": "message-text" }),
    ),
  );
}


// --- Composer ----------------------------------------------------------------------------------

const composer = $("composer");

messageInput.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition is neither.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    composer.requestSubmit();
  }
});

messageInput.addEventListener("input", updateCharCount);

function updateCharCount() {
  const count = [...messageInput.value].length;
  const counter = $("char-count");
  counter.hidden = count < MAX_CHARS - 500;
  counter.textContent = `${count} / ${MAX_CHARS}`;
  counter.classList.toggle("over", count > MAX_CHARS);
}

/**
 * Takes the message out of the composer (its draft too) to be sent; null, with the reason shown
 * when there is one, if it holds nothing that can be sent.
 */
export function takeMessage() {
  const content = messageInput.value;
  const error = $("composer-error");
  error.textContent = "";
  if (!content.trim()) return null;
  if ([...content].length > MAX_CHARS) {
    error.textContent = `A message can be at most ${MAX_CHARS} characters.`;
    return null;
  }
  messageInput.value = "";
  drafts.delete(state.openKey);
  updateCharCount();
  return content;
}

/** Puts `text` back into the composer (a refused send, to be reworded). */
export function restoreDraftText(text) {
  messageInput.value = text;
  updateCharCount();
  messageInput.focus();
}

export function focusComposer() {
  messageInput.focus();
}

// --- Announcements, title, toasts ----------------------------------------------------------------

export function announce(message) {
  const from = state.users.get(message.sender)?.email ?? "Someone";
  const text = `${message.kind === "auto_reply" ? "Auto-reply from" : "New message from"} ${from}: ${message.content}`;
  const announcer = $("announcer");
  announcer.append(el("p", {}, text));
  while (announcer.childElementCount > 5) announcer.firstElementChild.remove();
}

export function updateTitle() {
  let unread = 0;
  for (const conv of state.conversations.values()) unread += conv.unread;
  document.title = unread ? `(${unread}) Palaver` : "Palaver";
}

let toastTimer = null;
export function toast(text) {
  let node = $("toast");
  if (!node) {
    node = el("div", { id: "toast", class: "toast", role: "alert", "data-testid": "toast" });
    app.append(node);
  }
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), 6000);
}

