// What the page knows: me, the users seen, the conversations and their messages, my sends not
// yet acknowledged, and the catch-up cursor.
//
// Owns the state object and the updates that keep its invariants. Imports nothing and touches no
// DOM: an update says what changed, and its caller (chat.js) decides what to draw.
//
// Messages are kept per conversation in a Map by id, so a message seen twice (pushed and
// fetched) shows once; ids are UUIDv7, so sorting ids sorts by send time.
//
// A conversation's key is the peer's user id for a direct conversation (it can be opened, from a
// search or the URL, before it has a message, and so before the page knows its server id) and
// the conversation's id for a group. Both are UUIDs the server drew, so they never collide.

/** @typedef {{id:string,conversation:string,sender:string,recipient?:string,content:string,sent_at:string,kind:string,reply_to?:string}} Message */

export const state = {
  me: null, // {id, email, status}
  users: new Map(), // id -> {id, email, status}
  conversations: new Map(), // key (peer id, or group id) -> Conversation
  openKey: null, // key of the open conversation
  // The catch-up cursor: every message up to this id has been seen (pushes and catch-up pages
  // move it; history pages do not, as they say nothing about other conversations).
  cursor: null,
  pending: new Map(), // client_id -> Pending (my sends not yet acknowledged)
  generation: 0, // bumped at log-out, so late answers of an old session are ignored
};

/** Forgets everything of the session that ended (`generation` stays: it outlives sessions). */
export function resetState() {
  Object.assign(state, {
    me: null,
    openKey: null,
    cursor: null,
    users: new Map(),
    conversations: new Map(),
    pending: new Map(),
  });
}

/** The conversation under `key`, created (as a direct one unless said otherwise) if new. */
export function conversation(key, { kind = "direct", id = null } = {}) {
  let conv = state.conversations.get(key);
  if (!conv) {
    conv = {
      key,
      kind, // "direct" or "group"
      peerId: kind === "direct" ? key : null,
      id, // the server's conversation id; a direct one learns it from its first message
      title: null, // groups
      members: [], // groups: [{id, email, role}], in joining order
      readUpto: null, // my read mark
      marks: new Map(), // others' read marks heard live: user id -> message id
      typing: new Map(), // user id -> until (ms since epoch)
      // Auto-replies being written (reply_progress pushes), never stored: the id of the message
      // they answer -> {text, seq, timer}. Dropped when the final auto-reply arrives.
      drafts: new Map(),
      answered: new Set(), // ids of messages whose final auto-reply is here (late drafts are ignored)
      messages: new Map(), // id -> Message
      sorted: null, // cached sorted ids
      historyLoaded: false, // the newest page of this conversation has been fetched
      hasOlder: false, // older pages may exist
      loadingOlder: false,
      unread: 0,
    };
    state.conversations.set(key, conv);
  }
  return conv;
}

/** The key of the conversation a message belongs to. */
export function keyOf(message) {
  if (!message.recipient) return message.conversation;
  return message.sender === state.me.id ? message.recipient : message.sender;
}

/** The conversation with server id `id`, if the page knows it. */
export function byId(id) {
  for (const conv of state.conversations.values()) if (conv.id === id) return conv;
  return null;
}

/** The conversation holding the message `id`, if the page has it. */
export function holding(id) {
  for (const conv of state.conversations.values()) if (conv.messages.has(id)) return conv;
  return null;
}

/** A group as the server describes it ({id, title, members}): created or updated. */
export function mergeGroup(view) {
  const conv = conversation(view.id, { kind: "group", id: view.id });
  conv.title = view.title ?? conv.title;
  conv.members = view.members ?? conv.members;
  for (const member of conv.members) {
    if (!state.users.has(member.id)) state.users.set(member.id, { id: member.id, email: member.email });
  }
  return conv;
}

/** A line of GET /api/conversations: the conversation with its unread count and my read mark. */
export function mergeSummary(item) {
  const conv =
    item.kind === "group"
      ? conversation(item.id, { kind: "group", id: item.id })
      : conversation(item.peer, { kind: "direct", id: item.id });
  conv.id = item.id;
  if (item.title) conv.title = item.title;
  conv.unread = item.unread;
  conv.readUpto = item.read_upto ?? null;
  return conv;
}

/** My read mark moved (on this device or another): what is unread follows it. */
export function moveMyMark(conv, upto) {
  if (conv.readUpto && conv.readUpto >= upto) return false;
  conv.readUpto = upto;
  const latest = latestMessage(conv);
  conv.unread =
    !latest || latest.id <= upto
      ? 0
      : [...conv.messages.values()].filter((m) => m.sender !== state.me.id && m.id > upto).length;
  return true;
}

export function sortedIds(conv) {
  conv.sorted ??= [...conv.messages.keys()].sort();
  return conv.sorted;
}

export function latestMessage(conv) {
  const ids = sortedIds(conv);
  return ids.length ? conv.messages.get(ids[ids.length - 1]) : null;
}

/**
 * Adds messages (any order, any conversations), ignoring ones already known. `live` marks
 * messages that just arrived (pushes, catch-up): they count as unread unless their conversation
 * is open on a `visible` page. Returns what the page has to catch up with:
 *   changed   the conversations that changed,
 *   replaced  ids of my sends shown from their acknowledgement whose server copy came since,
 *   arrived   the live messages from others, to announce,
 *   unknown   users (peers, senders) not known yet.
 */
export function addMessages(messages, { live = false, visible = false } = {}) {
  const changed = new Set();
  const replaced = [];
  const arrived = [];
  const unknown = new Set();
  for (const message of messages) {
    const peer = keyOf(message);
    const conv = message.recipient ? conversation(peer) : conversation(peer, { kind: "group", id: peer });
    conv.id ??= message.conversation ?? null;
    const known = conv.messages.get(message.id);
    if (known && !known.local) continue;
    conv.messages.set(message.id, message);
    if (known) {
      // The server's copy of a send shown from its acknowledgement: redrawn with the server's
      // time instead of ours.
      replaced.push(message.id);
      changed.add(conv);
      continue;
    }
    conv.sorted = null;
    changed.add(conv);
    if (message.reply_to) {
      // The final auto-reply (or the fallback): it replaces the text that was growing.
      conv.answered.add(message.reply_to);
      clearTimeout(conv.drafts.get(message.reply_to)?.timer);
      conv.drafts.delete(message.reply_to);
    }
    // My own send, pushed back to me: it replaces its pending bubble (matched by id once the
    // `sent` answer came, or else by content, since pushes may overtake the answer).
    if (message.sender === state.me.id) {
      for (const p of state.pending.values()) {
        if (p.key === peer && !p.id && p.content === message.content && p.state === "sending") {
          p.id = message.id;
          break;
        }
      }
    }
    conv.typing.delete(message.sender); // they stopped typing: they sent it
    if (live && message.sender !== state.me.id) {
      const looking = state.openKey === peer && visible;
      if (!looking) conv.unread += 1;
      arrived.push(message);
    }
    if (!state.users.has(message.sender)) unknown.add(message.sender);
    if (conv.kind === "direct" && !state.users.has(peer)) unknown.add(peer);
  }
  return { changed, replaced, arrived, unknown };
}

/** Moves the catch-up cursor forward (never back). */
export function advanceCursor(id) {
  if (id && (!state.cursor || id > state.cursor)) state.cursor = id;
}

/** Merges what the server said about a user into what is known. */
export function mergeUser(user) {
  const known = state.users.get(user.id);
  state.users.set(user.id, { ...known, ...user });
}
