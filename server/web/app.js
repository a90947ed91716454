// Palaver web chat: plain ES2022, no framework, no build step.
//
// Served with a strict Content-Security-Policy (scripts, styles and connections from this origin
// only, no inline script or style), so everything here builds DOM nodes and toggles classes and
// attributes; nothing sets inline styles or HTML strings.
//
// Data flow:
//   - GET /api/users/me checks a stored token and gives my id, email and status;
//   - GET /api/chat/messages (no `with`) gives the newest messages across everyone: the recent
//     conversations, and the catch-up cursor (the newest id seen);
//   - one WebSocket at /ws pushes every new message (mine from other devices included) and status
//     changes; after every (re)connect, GET /api/chat/messages?after=<cursor> fetches what was
//     missed while the socket was down;
//   - opening a conversation loads its newest page; scrolling to the top loads older pages.
// Messages are kept per conversation in a Map by id, so a message seen twice (pushed and
// fetched) shows once; ids are UUIDv7, so sorting ids sorts by send time.

const PAGE = 50; // history page size
const CATCH_UP_PAGE = 200; // the server's largest page
const MAX_CHARS = 4000; // the server's content limit
const SEND_ACK_TIMEOUT_MS = 10_000; // no `sent` by then: retry over HTTP with the same key
const KEEPALIVE_MS = 25_000; // application ping, so a dead connection is noticed
const PONG_TIMEOUT_MS = 10_000;
const TOKEN_KEY = "palaver.session";

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

const $ = (id) => document.getElementById(id);

/** Creates an element: el("p", {class: "x", "data-id": 1}, child, "text", ...). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child);
  }
  return node;
}

function icon(name, cls = "") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("aria-hidden", "true");
  if (cls) svg.setAttribute("class", cls);
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

/**
 * Makes `container`'s children match `items` (in order), reusing the element of each key: the
 * list keeps focus, scroll position and animations instead of being rebuilt.
 */
function reconcile(container, items, cache, create, update) {
  const wanted = new Set();
  let cursor = container.firstElementChild;
  for (const item of items) {
    wanted.add(item.key);
    let node = cache.get(item.key);
    if (!node) {
      node = create(item);
      node.dataset.key = item.key;
      cache.set(item.key, node);
    }
    update?.(node, item);
    if (node === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      container.insertBefore(node, cursor);
    }
  }
  for (const [key, node] of cache) {
    if (!wanted.has(key)) {
      node.remove();
      cache.delete(key);
    }
  }
}

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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
// Session
//
// The token lives in sessionStorage rather than localStorage: it survives reloading the tab (the
// session is restored without logging in again) but not closing it, so a forgotten tab on a
// shared computer does not leave a valid token on disk for the next person, and every tab is its
// own session (two people, or two accounts, can use two tabs side by side). Script on the page
// could read either kind of storage; the strict CSP is what keeps foreign script off the page.

const session = {
  token: null,
  expiresAt: null,
  load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
      if (saved?.token) Object.assign(this, { token: saved.token, expiresAt: saved.expiresAt ?? null });
    } catch {
      /* unreadable: no session */
    }
    return Boolean(this.token);
  },
  save(token, expiresAt) {
    Object.assign(this, { token, expiresAt });
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, expiresAt }));
  },
  clear() {
    this.token = null;
    this.expiresAt = null;
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

// ---------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** A request that never reached the server (offline, server down). */
class NetworkError extends Error {}

/**
 * One JSON request. Resolves to the parsed body; rejects with ApiError carrying the server's
 * {"message"} text, or NetworkError. A 401 on an authenticated call ends the session.
 */
async function api(method, path, { body, headers = {}, auth = true } = {}) {
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
    if (response.status === 401 && auth && tokenUsed === session.token) {
      endSession("Your session has ended. Please log in again.");
    }
    throw new ApiError(response.status, message, retryAfter);
  }
  return data;
}

function describeError(err) {
  if (err instanceof ApiError && err.status === 429 && err.retryAfter) {
    return `${err.message} (try again in ${err.retryAfter} s)`;
  }
  return err?.message || "Something went wrong";
}

// ---------------------------------------------------------------------------------------------
// State

/** @typedef {{id:string,sender:string,recipient:string,content:string,sent_at:string,kind:string}} Message */

const state = {
  me: null, // {id, email, status}
  users: new Map(), // id -> {id, email, status}
  conversations: new Map(), // peer id -> Conversation
  openPeer: null, // peer id of the open conversation
  // The catch-up cursor: every message up to this id has been seen (pushes and catch-up pages
  // move it; history pages do not, as they say nothing about other conversations).
  cursor: null,
  pending: new Map(), // client_id -> Pending (my sends not yet acknowledged)
  generation: 0, // bumped at log-out, so late answers of an old session are ignored
};

function conversation(peerId) {
  let conv = state.conversations.get(peerId);
  if (!conv) {
    conv = {
      peerId,
      messages: new Map(), // id -> Message
      sorted: null, // cached sorted ids
      historyLoaded: false, // the newest page of this conversation has been fetched
      hasOlder: false, // older pages may exist
      loadingOlder: false,
      unread: 0,
    };
    state.conversations.set(peerId, conv);
  }
  return conv;
}

const peerOf = (message) => (message.sender === state.me.id ? message.recipient : message.sender);

function sortedIds(conv) {
  conv.sorted ??= [...conv.messages.keys()].sort();
  return conv.sorted;
}

function latestMessage(conv) {
  const ids = sortedIds(conv);
  return ids.length ? conv.messages.get(ids[ids.length - 1]) : null;
}

/**
 * Adds messages (any order, any conversations), ignoring ones already known. `live` marks
 * messages that just arrived (pushes, catch-up): they count as unread and are announced.
 * Returns the set of conversations that changed.
 */
function addMessages(messages, { live = false } = {}) {
  const changed = new Set();
  for (const message of messages) {
    const peer = peerOf(message);
    const conv = conversation(peer);
    const known = conv.messages.get(message.id);
    if (known && !known.local) continue;
    conv.messages.set(message.id, message);
    if (known) {
      // The server's copy of a send shown from its acknowledgement: redraw it with the
      // server's time instead of ours.
      messageNodes.get(`m:${message.id}`)?.remove();
      messageNodes.delete(`m:${message.id}`);
      changed.add(conv);
      continue;
    }
    conv.sorted = null;
    changed.add(conv);
    // My own send, pushed back to me: it replaces its pending bubble (matched by id once the
    // `sent` answer came, or else by content, since pushes may overtake the answer).
    if (message.sender === state.me.id) {
      for (const p of state.pending.values()) {
        if (p.peer === peer && !p.id && p.content === message.content && p.state === "sending") {
          p.id = message.id;
          break;
        }
      }
    }
    if (live && message.sender !== state.me.id) {
      const looking = state.openPeer === peer && document.visibilityState === "visible";
      if (!looking) conv.unread += 1;
      announce(message);
    }
    if (!state.users.has(peer)) fetchUser(peer);
  }
  if (changed.size) {
    renderConversationList();
    if (state.openPeer && [...changed].some((c) => c.peerId === state.openPeer)) {
      renderMessages({ live });
    }
    updateTitle();
  }
  return changed;
}

/** Moves the catch-up cursor forward (never back). */
function advanceCursor(id) {
  if (id && (!state.cursor || id > state.cursor)) state.cursor = id;
}

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

function rememberUser(user) {
  const known = state.users.get(user.id);
  state.users.set(user.id, { ...known, ...user });
  renderConversationList();
  if (user.id === state.openPeer) renderPeerHeader();
}

// ---------------------------------------------------------------------------------------------
// Views

const app = $("app");

function showView(view) {
  app.dataset.view = view;
}

function setBootMessage(text, canRetry = false) {
  $("boot-text").textContent = text;
  $("boot-retry").hidden = !canRetry;
}

// --- Auth form -------------------------------------------------------------------------------

const authForm = $("auth-form");
const authError = $("auth-error");

authForm.addEventListener("submit", async (event) => {
  event.preventDefault(); // no navigation (the CSP's form-action 'none' would refuse it anyway)
  const action = event.submitter?.value === "register" ? "register" : "login";
  const email = $("auth-email").value.trim();
  const password = $("auth-password").value;
  authError.textContent = "";
  if (!email || !password) {
    authError.textContent = "Enter your email and a password.";
    (email ? $("auth-password") : $("auth-email")).focus();
    return;
  }
  const buttons = authForm.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  authForm.setAttribute("aria-busy", "true");
  const label = event.submitter ?? buttons[0];
  const original = label.textContent;
  label.textContent = action === "register" ? "Creating account…" : "Logging in…";
  try {
    if (action === "register") {
      await api("POST", "/api/auth/register", { body: { email, password }, auth: false });
    }
    const login = await api("POST", "/api/auth/login", { body: { email, password }, auth: false });
    session.save(login.token, login.expires_at);
    $("auth-password").value = "";
    await startSession();
  } catch (err) {
    authError.textContent = describeError(err);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    authForm.removeAttribute("aria-busy");
    label.textContent = original;
  }
});

// --- Session start and end ---------------------------------------------------------------------

let expiryTimer = null;

async function startSession() {
  const generation = state.generation;
  showView("boot");
  setBootMessage("Loading your conversations…");
  let me;
  try {
    me = await api("GET", "/api/users/me");
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 401) return; // endSession showed the login
    setBootMessage(`${describeError(err)}.`, true);
    return;
  }
  if (generation !== state.generation) return;
  state.me = me;
  state.users.set(me.id, me);
  $("me-email").textContent = me.email;
  renderMyStatus();

  // The newest messages across everyone: the conversation list and the catch-up cursor.
  try {
    const recent = await api("GET", `/api/chat/messages?limit=${PAGE}`);
    if (generation !== state.generation) return;
    addMessages(recent);
    advanceCursor(recent.at(-1)?.id);
  } catch (err) {
    if (generation !== state.generation) return;
    // Not fatal: the list fills from the catch-up below.
  }
  showView("chat");
  renderConversationList();
  clearTimeout(expiryTimer);
  const expires = Date.parse(session.expiresAt ?? "");
  if (expires) {
    // The socket closes with 1008 at expiry too; this covers a tab whose socket is down then.
    expiryTimer = setTimeout(
      () => endSession("Your session has expired. Please log in again."),
      Math.min(Math.max(expires - Date.now(), 0), 2 ** 31 - 1),
    );
  }
  live.start();
  routeFromHash();
}

/** Leaves the chat for the login form, with `message` shown there (if any). */
function endSession(message = "") {
  state.generation += 1;
  live.stop();
  session.clear();
  clearTimeout(expiryTimer);
  for (const p of state.pending.values()) clearTimeout(p.timer);
  Object.assign(state, {
    me: null,
    openPeer: null,
    cursor: null,
    users: new Map(),
    conversations: new Map(),
    pending: new Map(),
  });
  userFetches.clear();
  messageNodes.clear();
  conversationNodes.clear();
  $("messages").replaceChildren();
  $("conversations").replaceChildren();
  $("search-email").value = "";
  $("search-error").textContent = "";
  $("message-input").value = "";
  drafts.clear();
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderOpenConversation();
  updateTitle();
  authError.textContent = message;
  showView("auth");
  $("auth-email").focus();
}

$("logout").addEventListener("click", () => endSession(""));

$("boot-retry").addEventListener("click", () => startSession());

// --- My status ---------------------------------------------------------------------------------

const statusToggle = $("status-toggle");

function renderMyStatus() {
  const status = state.me?.status ?? "AVAILABLE";
  const busy = status === "BUSY";
  statusToggle.dataset.status = status;
  statusToggle.setAttribute("aria-pressed", String(busy));
  $("status-label").textContent = statusText(status);
  statusToggle.title = busy ? "You are busy: click to become available" : "You are available: click to become busy";
  statusToggle.setAttribute("aria-label", `Status: ${statusText(status)}. Switch to ${busy ? "available" : "busy"}`);
  $("busy-note").hidden = !busy;
}

statusToggle.addEventListener("click", async () => {
  const next = state.me.status === "BUSY" ? "AVAILABLE" : "BUSY";
  statusToggle.disabled = true;
  statusToggle.classList.add("saving");
  try {
    const answer = await api("PUT", "/api/user/status", { body: { status: next } });
    state.me.status = answer.status ?? next;
    renderMyStatus();
  } catch (err) {
    toast(describeError(err));
  } finally {
    statusToggle.disabled = false;
    statusToggle.classList.remove("saving");
  }
});

// --- Search ------------------------------------------------------------------------------------

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("search-email");
  const error = $("search-error");
  const email = input.value.trim();
  error.textContent = "";
  if (!email) {
    error.textContent = "Enter an email address.";
    input.focus();
    return;
  }
  const button = event.submitter ?? event.target.querySelector("button");
  button.disabled = true;
  try {
    const user = await api("GET", `/api/users?email=${encodeURIComponent(email)}`);
    rememberUser(user);
    input.value = "";
    openConversation(user.id);
  } catch (err) {
    error.textContent =
      err instanceof ApiError && err.status === 404 ? `${err.message}: no account has that email.` : describeError(err);
  } finally {
    button.disabled = false;
  }
});

// --- Conversation list -------------------------------------------------------------------------

const conversationNodes = new Map();

function renderConversationList() {
  if (!state.me) return;
  const convs = [...state.conversations.values()]
    .filter((c) => c.messages.size || c.peerId === state.openPeer)
    .sort((a, b) => (latestMessage(b)?.id ?? "\uffff").localeCompare(latestMessage(a)?.id ?? "\uffff"));
  $("no-conversations").hidden = convs.length > 0;
  reconcile(
    $("conversations"),
    convs.map((conv) => ({ key: conv.peerId, conv })),
    conversationNodes,
    ({ conv }) => {
      const button = el("button", { type: "button", class: "conv", "data-testid": "conversation" });
      button.addEventListener("click", () => openConversation(conv.peerId));
      return el("li", {}, button);
    },
    (li, { conv }) => {
      const user = state.users.get(conv.peerId);
      const email = user?.email ?? "…";
      const last = latestMessage(conv);
      const button = li.firstElementChild;
      button.dataset.peer = conv.peerId;
      button.dataset.email = user?.email ?? "";
      if (conv.peerId === state.openPeer) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
      let preview = "";
      if (last) {
        preview = (last.sender === state.me.id ? "You: " : "") + (last.kind === "auto_reply" ? "Auto-reply: " : "");
        preview += last.content.replace(/\s+/g, " ");
      }
      const status = user?.status;
      button.replaceChildren(
        el(
          "span",
          { class: `avatar ${hueClass(email)}`, "aria-hidden": "true" },
          initial(user?.email),
          status ? el("span", { class: "presence", "data-status": status }) : null,
        ),
        el(
          "span",
          { class: "conv-main" },
          el("span", { class: "conv-top" },
            el("span", { class: "conv-email" }, email),
            last ? el("time", { class: "conv-time", datetime: last.sent_at }, listTime(new Date(last.sent_at))) : null),
          el("span", { class: "conv-bottom" },
            el("span", { class: "conv-preview" }, preview || "No messages yet"),
            conv.unread ? el("span", { class: "badge", "aria-label": `${conv.unread} unread` }, String(conv.unread)) : null),
        ),
      );
      button.setAttribute(
        "aria-label",
        `${email}${status ? `, ${statusText(status)}` : ""}${conv.unread ? `, ${conv.unread} unread` : ""}`,
      );
    },
  );
}

// --- Open conversation -------------------------------------------------------------------------

const messagesScroll = $("messages-scroll");
const messageList = $("messages");
const messageInput = $("message-input");
const messageNodes = new Map();
const drafts = new Map(); // peer id -> unsent text

async function openConversation(peerId, { fromHistory = false } = {}) {
  if (!state.me) return;
  if (state.openPeer && state.openPeer !== peerId) drafts.set(state.openPeer, messageInput.value);
  const switching = state.openPeer !== peerId;
  state.openPeer = peerId;
  const conv = conversation(peerId);
  conv.unread = 0;
  if (!fromHistory && location.hash !== `#${peerId}`) history.pushState({ palaver: true }, "", `#${peerId}`);
  if (switching) {
    messageNodes.clear();
    messageList.replaceChildren();
    messageInput.value = drafts.get(peerId) ?? "";
    updateCharCount();
    $("composer-error").textContent = "";
  }
  if (!state.users.has(peerId)) fetchUser(peerId);
  renderOpenConversation();
  renderConversationList();
  updateTitle();
  if (!conv.historyLoaded) {
    await loadHistory(conv);
  }
  scrollToBottom();
  // On a phone the keyboard would cover half the conversation; focus only with a real pointer.
  if (matchMedia("(pointer: fine)").matches) messageInput.focus();
}

function closeConversation({ fromHistory = false } = {}) {
  if (state.openPeer) drafts.set(state.openPeer, messageInput.value);
  state.openPeer = null;
  if (!fromHistory && location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderOpenConversation();
  renderConversationList();
}

$("back").addEventListener("click", () => {
  // When we pushed the history entry, go back the way the browser's Back button would (so it
  // does not bring the conversation back); after a reload straight into one, just close it.
  if (history.state?.palaver) history.back();
  else closeConversation();
});

function routeFromHash() {
  if (!state.me) return;
  const peer = decodeURIComponent(location.hash.slice(1));
  if (peer && /^[0-9a-f-]{36}$/i.test(peer)) {
    if (peer !== state.openPeer) openConversation(peer, { fromHistory: true });
  } else if (state.openPeer) {
    closeConversation({ fromHistory: true });
  }
}
window.addEventListener("popstate", routeFromHash);

async function loadHistory(conv) {
  const generation = state.generation;
  conv.loadingOlder = true;
  renderHistoryTop(conv);
  try {
    const page = await api("GET", `/api/chat/messages?with=${encodeURIComponent(conv.peerId)}&limit=${PAGE}`);
    if (generation !== state.generation) return;
    conv.historyLoaded = true;
    conv.hasOlder = page.length === PAGE;
    addMessages(page);
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

async function loadOlder() {
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
    // Keep the messages on screen where they are: what is added above pushes the content down
    // by exactly the growth of the scroll height.
    const fromBottom = messagesScroll.scrollHeight - messagesScroll.scrollTop;
    conv.loadingOlder = false;
    addMessages(page);
    if (state.openPeer === conv.peerId) {
      renderMessages();
      messagesScroll.scrollTop = messagesScroll.scrollHeight - fromBottom;
    }
  } catch (err) {
    toast(`Could not load older messages: ${describeError(err)}`);
  } finally {
    conv.loadingOlder = false;
    if (state.openPeer === conv.peerId) renderHistoryTop(conv);
  }
}

$("load-older").addEventListener("click", loadOlder);
messagesScroll.addEventListener(
  "scroll",
  () => {
    if (messagesScroll.scrollTop < 120) loadOlder();
    if (isNearBottom()) $("jump").hidden = true;
  },
  { passive: true },
);
$("jump").addEventListener("click", () => scrollToBottom(true));

function isNearBottom() {
  return messagesScroll.scrollHeight - messagesScroll.scrollTop - messagesScroll.clientHeight < 80;
}

function scrollToBottom(smooth = false) {
  messagesScroll.scrollTo({ top: messagesScroll.scrollHeight, behavior: smooth ? "smooth" : "instant" });
  $("jump").hidden = true;
}

function renderOpenConversation() {
  const open = Boolean(state.openPeer);
  app.classList.toggle("conv-open", open);
  $("chat-empty").hidden = open;
  $("chat-open").hidden = !open;
  if (open) {
    renderPeerHeader();
    renderMessages();
  }
}

function renderPeerHeader() {
  const user = state.users.get(state.openPeer);
  const email = user?.email ?? "…";
  $("peer-email").textContent = email;
  const avatar = $("peer-avatar");
  avatar.className = `avatar ${hueClass(email)}`;
  avatar.replaceChildren(initial(user?.email));
  const status = $("peer-status");
  status.dataset.status = user?.status ?? "";
  status.textContent = user?.status === "BUSY" ? "Busy · auto-replies are on" : statusText(user?.status);
}

function renderHistoryTop(conv) {
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

/** Draws the open conversation: day separators, confirmed messages, then my pending sends. */
function renderMessages({ live = false } = {}) {
  const conv = state.conversations.get(state.openPeer);
  if (!conv) return;
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
    items.push({ key: `m:${id}`, type: "message", message, grouped });
    prev = message;
  }
  for (const p of state.pending.values()) {
    if (p.peer !== conv.peerId) continue;
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

function createMessageNode(item) {
  if (item.type === "day") {
    return el("li", { class: "day", role: "presentation" }, el("span", {}, item.label));
  }
  const message = item.message ?? null;
  const pending = item.pending ?? null;
  const mine = pending ? true : message.sender === state.me.id;
  const kind = message?.kind ?? "user";
  const auto = kind === "auto_reply";
  const content = message?.content ?? pending.content;
  const sentAt = message ? new Date(message.sent_at) : new Date(pending.createdAt);
  const peerEmail = state.users.get(state.openPeer)?.email ?? "them";
  const who = mine ? (auto ? "Auto-reply sent for you" : "You") : auto ? `Auto-reply from ${peerEmail}` : peerEmail;

  const bubble = el(
    "div",
    { class: "bubble" },
    el("span", { class: "sr-only" }, `${who}: `),
    auto ? el("span", { class: "auto-label", "aria-hidden": "true" }, icon("bot"), "Auto-reply") : null,
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
      el("span", { class: "pending-error" }),
      el("button", { type: "button", class: "link-btn", "data-action": "retry" }, "Retry"),
      el("button", { type: "button", class: "link-btn", "data-action": "discard" }, "Discard"),
    );
    actions.addEventListener("click", (event) => {
      const action = event.target.closest("button")?.dataset.action;
      if (action === "retry") retrySend(pending.clientId);
      if (action === "discard") discardSend(pending.clientId);
    });
    li.append(actions);
  }
  return li;
}

function updatePendingNode(node, p) {
  node.dataset.state = p.state === "failed" ? "failed" : "pending";
  const delivery = node.querySelector(".delivery");
  if (delivery) delivery.textContent = p.state === "failed" ? "Not sent" : p.state === "queued" ? "Waiting for connection…" : "Sending…";
  node.querySelector(".pending-error").textContent = p.state === "failed" ? p.error ?? "" : "";
  node.querySelector(".pending-actions").hidden = p.state !== "failed";
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

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const content = messageInput.value;
  const error = $("composer-error");
  error.textContent = "";
  if (!content.trim()) return;
  if ([...content].length > MAX_CHARS) {
    error.textContent = `A message can be at most ${MAX_CHARS} characters.`;
    return;
  }
  messageInput.value = "";
  drafts.delete(state.openPeer);
  updateCharCount();
  send(state.openPeer, content);
  messageInput.focus();
});

// --- Sending -----------------------------------------------------------------------------------
//
// Each send gets a client id, which is also its idempotency key: over the socket it is the
// frame's client_id, over HTTP the Idempotency-Key header. A send whose answer is lost (socket
// closed, timeout) is retried over HTTP with the same key, and the server stores it once.

function send(peer, content) {
  const p = { clientId: uuid(), peer, content, createdAt: Date.now(), state: "sending", id: null, error: null, timer: null };
  state.pending.set(p.clientId, p);
  renderMessages();
  transmit(p);
}

function transmit(p) {
  p.state = "sending";
  p.error = null;
  if (live.isOpen()) {
    live.sendFrame({ type: "send", recipient: p.peer, content: p.content, client_id: p.clientId });
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
function confirmSend(clientId, id) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  state.pending.delete(clientId);
  const conv = conversation(p.peer);
  if (!conv.messages.has(id)) {
    // The push has not arrived (or never will, if the socket is down): show the message now;
    // the push or a catch-up page carries the same id and replaces nothing.
    addMessages([
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

function failSend(clientId, message) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  p.state = "failed";
  p.error = message;
  if (state.openPeer === p.peer) renderMessages();
}

function retrySend(clientId) {
  const p = state.pending.get(clientId);
  if (p) transmit(p);
}

function discardSend(clientId) {
  const p = state.pending.get(clientId);
  if (!p) return;
  clearTimeout(p.timer);
  state.pending.delete(clientId);
  if (state.openPeer === p.peer) renderMessages();
}

// --- Live connection -----------------------------------------------------------------------------

const live = (() => {
  let socket = null;
  let attempt = 0;
  let retryTimer = null;
  let keepaliveTimer = null;
  let pongTimer = null;
  let running = false;
  let caughtUp = false; // this connection's catch-up has finished: pushes move the cursor

  function setIndicator(stateName, text) {
    const node = $("connection");
    node.dataset.state = stateName;
    node.textContent = text;
  }

  function url() {
    // Same origin as the page; the token goes in the query string (browsers cannot set headers
    // on a WebSocket; the server never logs query strings).
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws?token=${encodeURIComponent(session.token)}`;
  }

  function start() {
    running = true;
    attempt = 0;
    connect();
  }

  function stop() {
    running = false;
    clearTimeout(retryTimer);
    stopKeepalive();
    if (socket) {
      const s = socket;
      socket = null;
      s.onclose = s.onmessage = s.onopen = s.onerror = null;
      s.close(1000, "logged out");
    }
    setIndicator("connecting", "Connecting…");
  }

  function connect() {
    clearTimeout(retryTimer);
    if (!running || socket) return;
    if (!navigator.onLine) {
      setIndicator("offline", "Offline");
      return; // the "online" event reconnects
    }
    setIndicator(attempt ? "reconnecting" : "connecting", attempt ? "Reconnecting…" : "Connecting…");
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
        addMessages(page, { live: true });
        advanceCursor(page.at(-1)?.id);
        // Without a cursor the server answered the newest page; that is where we start.
      } while (page.length === CATCH_UP_PAGE && state.cursor && page.at(-1)?.id);
      // Everything pushed on this connection so far is newer than what was just fetched.
      advanceCursor(pushedMax);
      caughtUp = true;
      attempt = 0;
      setIndicator("live", "Live");
      // Status pushes sent while we were away are gone; ask again for the one on screen.
      refreshUser(state.openPeer);
      flushQueued();
    } catch (err) {
      if (generation !== state.generation || socket !== s) return;
      // Could not catch up: drop this connection and try again later.
      drop(4000, "catch-up failed");
    }
  }

  let pushedMax = null;

  function onFrame(frame) {
    switch (frame.type) {
      case "message": {
        const message = frame.message;
        if (!message?.id) return;
        if (!pushedMax || message.id > pushedMax) pushedMax = message.id;
        addMessages([message], { live: true });
        if (caughtUp) advanceCursor(message.id); // pushes arrive in id order
        break;
      }
      case "status":
        if (frame.user === state.me?.id) {
          state.me.status = frame.status;
          renderMyStatus();
        }
        if (frame.user) {
          const known = state.users.get(frame.user);
          if (known) rememberUser({ ...known, status: frame.status });
        }
        break;
      case "sent":
        confirmSend(frame.client_id, frame.id);
        break;
      case "error":
        if (frame.client_id && state.pending.has(frame.client_id)) {
          const retry = frame.retry_after ? ` (try again in ${frame.retry_after} s)` : "";
          failSend(frame.client_id, `${frame.message}${retry}`);
        }
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
    // Sends whose answer this socket took with it: again over HTTP, same key.
    for (const p of state.pending.values()) {
      if (p.state === "sending") sendOverHttp(p);
    }
    if (event.code === 1008) {
      endSession("Your session has ended (it expired or was signed out elsewhere). Please log in again.");
      return;
    }
    attempt += 1;
    // 1013: we were too slow to read; come straight back and catch up. Otherwise back off:
    // 0.5 s, 1 s, 2 s, ... up to 30 s, with jitter so a restarted server is not stampeded.
    const base = event.code === 1013 ? 250 : Math.min(30_000, 500 * 2 ** Math.min(attempt - 1, 6));
    const delay = base / 2 + Math.random() * (base / 2);
    setIndicator(navigator.onLine ? "reconnecting" : "offline", navigator.onLine ? "Reconnecting…" : "Offline");
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => reconnect(generation), delay);
  }

  let reconnectRun = 0;

  async function reconnect(generation) {
    clearTimeout(retryTimer);
    if (!running || generation !== state.generation || socket) return;
    const run = ++reconnectRun; // the online event and the retry timer may both get here
    if (!navigator.onLine) {
      setIndicator("offline", "Offline");
      return;
    }
    // A refused handshake (401) looks like any other failure to a browser: check the token
    // first, so an expired session ends instead of retrying forever.
    try {
      const me = await api("GET", "/api/users/me");
      if (generation !== state.generation || run !== reconnectRun) return;
      state.me.status = me.status;
      renderMyStatus();
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

  function flushQueued() {
    for (const p of state.pending.values()) {
      if (p.state === "queued") transmit(p);
    }
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
    setIndicator("offline", "Offline");
  });

  return {
    start,
    stop,
    isOpen: () => Boolean(socket && socket.readyState === WebSocket.OPEN && caughtUp),
    sendFrame: (frame) => socket.send(JSON.stringify(frame)),
  };
})();

/** Status pushes missed while the socket was down: fetch the open peer again. */
function refreshUser(id) {
  if (!id) return;
  const generation = state.generation;
  api("GET", `/api/users/${encodeURIComponent(id)}`)
    .then((user) => generation === state.generation && rememberUser(user))
    .catch(() => {});
}

// --- Announcements, title, toasts ----------------------------------------------------------------

function announce(message) {
  const from = state.users.get(message.sender)?.email ?? "Someone";
  const text = `${message.kind === "auto_reply" ? "Auto-reply from" : "New message from"} ${from}: ${message.content}`;
  const announcer = $("announcer");
  announcer.append(el("p", {}, text));
  while (announcer.childElementCount > 5) announcer.firstElementChild.remove();
}

function updateTitle() {
  let unread = 0;
  for (const conv of state.conversations.values()) unread += conv.unread;
  document.title = unread ? `(${unread}) Palaver` : "Palaver";
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.openPeer) {
    const conv = state.conversations.get(state.openPeer);
    if (conv?.unread) {
      conv.unread = 0;
      renderConversationList();
      updateTitle();
    }
  }
});

let toastTimer = null;
function toast(text) {
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

// ---------------------------------------------------------------------------------------------
// Start

if (session.load()) {
  startSession();
} else {
  showView("auth");
}
