// What the page knows: me, the users seen, the conversations and their messages, my sends not
// yet acknowledged, and the catch-up cursor.
//
// Owns the state object and the updates that keep its invariants. Imports nothing and touches no
// DOM: an update says what changed, and its caller (chat.js) decides what to draw.
//
// Messages are kept per conversation in a Map by id, so a message seen twice (pushed and
// fetched) shows once; ids are UUIDv7, so sorting ids sorts by send time.

/** @typedef {{id:string,sender:string,recipient:string,content:string,sent_at:string,kind:string}} Message */

export const state = {
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

/** Forgets everything of the session that ended (`generation` stays: it outlives sessions). */
export function resetState() {
  Object.assign(state, {
    me: null,
    openPeer: null,
    cursor: null,
    users: new Map(),
    conversations: new Map(),
    pending: new Map(),
  });
}

export function conversation(peerId) {
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
 *   unknown   peers whose user is not known yet.
 */
export function addMessages(messages, { live = false, visible = false } = {}) {
  const changed = new Set();
  const replaced = [];
  const arrived = [];
  const unknown = new Set();
  for (const message of messages) {
    const peer = peerOf(message);
    const conv = conversation(peer);
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
      const looking = state.openPeer === peer && visible;
      if (!looking) conv.unread += 1;
      arrived.push(message);
    }
    if (!state.users.has(peer)) unknown.add(peer);
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
