// Palaver web chat: plain ES2022 modules, no framework, no build step. This entry starts and ends
// sessions, handles the page's forms and buttons, and wires the modules to each other.
//
// Data flow:
//   - GET /api/users/me checks a stored token and gives my id, email and status;
//   - GET /api/conversations gives the conversation list with the server's unread counts and my
//     read marks (so badges survive a reload and agree across devices);
//   - GET /api/chat/messages (no `with`) gives the newest messages across every conversation,
//     groups included, and the catch-up cursor (the newest id seen);
//   - one WebSocket at /ws pushes every new message, status change, read mark, typing notice and
//     group change (live.js), with a catch-up after every (re)connect;
//   - opening a conversation loads its newest page; scrolling to the top loads older pages
//     (chat.js).
//
// Modules, each importing only those before it:
//   session.js  the stored token                       (nothing)
//   api.js      HTTP calls                             (session)
//   state.js    what the page knows, no DOM            (nothing)
//   dom.js      DOM helpers                            (nothing)
//   views.js    drawing                                (dom, state)
//   live.js     the WebSocket and catch-up, no DOM     (api, session, state)
//   settings.js the Auto-reply panel                   (api, dom)
//   chat.js     what happens to messages and sends     (api, live, state, views)
//   app.js      this entry                             (all of them)
// The arrows that would point back (a 401 ends the session, the socket delivers messages, a click
// on a drawn node opens a conversation) are handlers set here, so no two modules import each
// other.

import { api, ApiError, describeError, onSessionRejected } from "./api.js";
import {
  closeConversation,
  confirmSend,
  createGroup,
  discardSend,
  editSend,
  flushQueued,
  forgetUserFetches,
  groupChanged,
  leaveGroup,
  loadOlder,
  openConversation,
  PAGE,
  readMarkMoved,
  readOpenConversation,
  receive,
  refreshUser,
  rememberUser,
  removedFromGroup,
  replyProgress,
  resendUnanswered,
  retrySend,
  routeFromHash,
  send,
  sendRefused,
  someoneTyping,
  statusChanged,
  stopSends,
  typing,
} from "./chat.js";
import { $ } from "./dom.js";
import * as connection from "./live.js";
import { session } from "./session.js";
import { closePanel, openPanel } from "./settings.js";
import { advanceCursor, mergeSummary, resetState, state } from "./state.js";
import {
  focusComposer,
  renderConnection,
  renderConversationList,
  renderMyStatus,
  renderOpenConversation,
  resetViews,
  setActions,
  setBootMessage,
  showView,
  takeMessage,
  toast,
  updateTitle,
} from "./views.js";

// ---------------------------------------------------------------------------------------------
// Wiring

onSessionRejected(() => endSession("Your session has ended. Please log in again."));

connection.setHandlers({
  show: renderConnection,
  messages: (messages) => receive(messages, { live: true }),
  status: statusChanged,
  read: readMarkMoved,
  typing: someoneTyping,
  conversation: groupChanged,
  removed: removedFromGroup,
  progress: replyProgress,
  sent: (frame) => confirmSend(frame.client_id, frame.id),
  error: sendRefused,
  me: (me) => {
    state.me.status = me.status;
    renderMyStatus();
  },
  caughtUp: () => {
    // Status pushes sent while we were away are gone; ask again for the one on screen.
    if (state.conversations.get(state.openKey)?.kind === "direct") refreshUser(state.openKey);
    flushQueued();
  },
  lost: resendUnanswered,
  expired: () =>
    endSession("Your session has ended (it expired or was signed out elsewhere). Please log in again."),
});

setActions({ open: openConversation, retry: retrySend, discard: discardSend, edit: editSend, loadOlder });

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

  // The conversation list as the server keeps it: unread counts and read marks.
  try {
    const list = await api("GET", `/api/conversations?limit=${PAGE}`);
    if (generation !== state.generation) return;
    for (const item of list) {
      mergeSummary(item);
      if (item.last_message) receive([item.last_message]);
    }
  } catch (err) {
    if (generation !== state.generation) return;
    // Not fatal: the messages below still make a list, without the server's counts.
  }
  // The newest messages across every conversation, and the catch-up cursor.
  try {
    const recent = await api("GET", `/api/chat/messages?limit=${PAGE}`);
    if (generation !== state.generation) return;
    receive(recent);
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
  connection.start();
  routeFromHash();
}

/** Leaves the chat for the login form, with `message` shown there (if any). */
function endSession(message = "") {
  state.generation += 1;
  connection.stop();
  closePanel();
  session.clear();
  clearTimeout(expiryTimer);
  stopSends();
  resetState();
  forgetUserFetches();
  resetViews();
  $("search-email").value = "";
  $("search-error").textContent = "";
  $("group-form").reset();
  $("group-error").textContent = "";
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderOpenConversation();
  updateTitle();
  authError.textContent = message;
  showView("auth");
  $("auth-email").focus();
}

$("logout").addEventListener("click", () => endSession(""));

$("autoreply-open").addEventListener("click", () => openPanel());

$("boot-retry").addEventListener("click", () => startSession());

// --- My status ---------------------------------------------------------------------------------

const statusToggle = $("status-toggle");

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

// --- New group ---------------------------------------------------------------------------------

$("group-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("group-error");
  error.textContent = "";
  const title = $("group-title").value.trim();
  const emails = $("group-members")
    .value.split(/[\s,;]+/)
    .map((e) => e.trim())
    .filter(Boolean);
  if (!title) {
    error.textContent = "Give the group a name.";
    $("group-title").focus();
    return;
  }
  const button = event.submitter ?? event.target.querySelector("button");
  button.disabled = true;
  try {
    await createGroup(title, emails);
    event.target.reset();
    $("new-group").open = false;
  } catch (err) {
    error.textContent = describeError(err);
  } finally {
    button.disabled = false;
  }
});

$("leave-group").addEventListener("click", () => leaveGroup());

// --- Open conversation and composer ------------------------------------------------------------

$("back").addEventListener("click", () => {
  // When we pushed the history entry, go back the way the browser's Back button would (so it
  // does not bring the conversation back); after a reload straight into one, just close it.
  if (history.state?.palaver) history.back();
  else closeConversation();
});

window.addEventListener("popstate", routeFromHash);

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const content = takeMessage();
  if (content === null) return;
  send(state.openKey, content);
  focusComposer();
});

$("message-input").addEventListener("input", (event) => {
  if (event.target.value.trim()) typing();
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") readOpenConversation();
});

// ---------------------------------------------------------------------------------------------
// Start

if (session.load()) {
  startSession();
} else {
  showView("auth");
}
