// Socket.IO with the real npm socket.io-client against a live server.
// Run: PALAVER_URL=http://127.0.0.1:3000 node --test tests/socketio/
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const BASE = process.env.PALAVER_URL ?? "http://127.0.0.1:3000";
const PASSWORD = "correct horse battery";
const DEADLINE_MS = 10_000;

async function api(method, path, { token, body } = {}) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(BASE + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function newUser(label) {
  const email = `${label}-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const registered = await api("POST", "/api/auth/register", { body: { email, password: PASSWORD } });
  assert.equal(registered.status, 201);
  const login = await api("POST", "/api/auth/login", { body: { email, password: PASSWORD } });
  assert.equal(login.status, 200);
  return { id: registered.body.id, email, token: login.body.token };
}

/** Resolves with the first `event` the socket gets; rejects after the deadline. */
function nextEvent(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${DEADLINE_MS} ms`)), DEADLINE_MS);
    socket.once(event, (payload) => {
      clearTimeout(timer);
      resolve(payload);
    });
  });
}

function connect(user, transports) {
  const options = { auth: { token: user.token }, reconnection: false, forceNew: true };
  if (transports) options.transports = transports;
  const socket = io(BASE, options);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

function refusal(auth) {
  const socket = io(BASE, { auth, reconnection: false, forceNew: true, transports: ["websocket"] });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => {
      socket.close();
      reject(new Error("connected without a valid token"));
    });
    socket.once("connect_error", (err) => {
      socket.close();
      resolve(err);
    });
  });
}

for (const [name, transports] of [["websocket transport", ["websocket"]], ["default transports", undefined]]) {
  describe(`Socket.IO over the ${name}`, () => {
    let alice, bob, aliceSocket, bobSocket;

    before(async () => {
      [alice, bob] = await Promise.all([newUser("alice"), newUser("bob")]);
      [aliceSocket, bobSocket] = await Promise.all([connect(alice, transports), connect(bob, transports)]);
    });

    after(() => {
      aliceSocket?.close();
      bobSocket?.close();
    });

    test("receives a message sent over HTTP", async () => {
      const arriving = nextEvent(bobSocket, "message");
      const sent = await api("POST", "/api/chat/send", {
        token: alice.token,
        body: { recipient: bob.id, content: "hello over http" },
      });
      assert.equal(sent.status, 200);
      assert.equal(sent.body.message, "Message sent successfully");
      const message = await arriving;
      assert.equal(message.id, sent.body.id);
      assert.equal(message.sender, alice.id);
      assert.equal(message.recipient, bob.id);
      assert.equal(message.content, "hello over http");
      assert.equal(message.kind, "user");
    });

    test("sends with an acknowledgement carrying the new id", async () => {
      const arriving = nextEvent(bobSocket, "message");
      const ack = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", { recipient: bob.id, content: "hello over socket.io" });
      assert.equal(typeof ack.id, "string");
      const message = await arriving;
      assert.equal(message.id, ack.id);
      assert.equal(message.content, "hello over socket.io");
      const history = await api("GET", `/api/chat/messages?with=${alice.id}&after=${ack.id}`, { token: bob.token });
      assert.deepEqual(history.body, []);
    });

    test("a refused send is acknowledged with the error", async () => {
      const ack = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", {
        recipient: "01a21ad6-1116-770e-912c-0b82997c7500",
        content: "anyone?",
      });
      assert.deepEqual(ack, { error: "Recipient not found", code: 404 });
      const blank = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", { recipient: bob.id, content: " " });
      assert.deepEqual(blank, { error: "Content must not be empty", code: 400 });
    });

    test("a send retried with the same client_id is stored once", async () => {
      const clientId = `retry-${name}-${Date.now()}`;
      const send = () =>
        aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", { recipient: bob.id, content: "only once", client_id: clientId });
      const first = await send();
      const again = await send();
      assert.equal(typeof first.id, "string");
      assert.equal(again.id, first.id);
      const history = await api("GET", `/api/chat/messages?with=${alice.id}&limit=200`, { token: bob.token });
      assert.equal(history.body.filter((m) => m.id === first.id).length, 1);
      assert.equal(history.body.filter((m) => m.content === "only once").length, 1);
    });

    test("status changes are pushed to conversation partners", async () => {
      const arriving = nextEvent(bobSocket, "status");
      const updated = await api("PUT", "/api/user/status", { token: alice.token, body: { status: "BUSY" } });
      assert.equal(updated.status, 200);
      assert.deepEqual(await arriving, { user: alice.id, status: "BUSY" });
    });

    test("groups: sends with a conversation, read marks, typing, removal", async () => {
      const carol = await newUser("carol");
      const carolSocket = await connect(carol, transports);
      try {
        const told = Promise.all([bobSocket, carolSocket].map((s) => nextEvent(s, "conversation")));
        const created = await api("POST", "/api/conversations", {
          token: alice.token,
          body: { title: `Socket.IO ${name}`, members: [bob.id, carol.id] },
        });
        assert.equal(created.status, 201);
        const group = created.body.id;
        for (const conversation of (await told).map((t) => t.conversation)) {
          assert.equal(conversation.id, group);
          assert.deepEqual(conversation.members.map((m) => m.id), [alice.id, bob.id, carol.id]);
        }

        const arriving = Promise.all([bobSocket, carolSocket].map((s) => nextEvent(s, "message")));
        const ack = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", { conversation: group, content: "hi all" });
        assert.equal(typeof ack.id, "string");
        for (const message of await arriving) {
          assert.equal(message.id, ack.id);
          assert.equal(message.conversation, group);
          assert.equal(message.recipient, undefined);
        }

        const typing = nextEvent(carolSocket, "typing");
        assert.deepEqual(await bobSocket.timeout(DEADLINE_MS).emitWithAck("typing", { conversation: group }), {});
        assert.deepEqual(await typing, { conversation: group, user: bob.id });

        const read = Promise.all([aliceSocket, carolSocket].map((s) => nextEvent(s, "read")));
        const marked = await api("POST", `/api/conversations/${group}/read`, { token: bob.token, body: { upto: ack.id } });
        assert.equal(marked.status, 200);
        for (const mark of await read) assert.deepEqual(mark, { conversation: group, user: bob.id, upto: ack.id });

        const removed = nextEvent(carolSocket, "removed");
        const gone = await api("DELETE", `/api/conversations/${group}/members/${carol.id}`, { token: alice.token });
        assert.equal(gone.status, 204);
        assert.deepEqual(await removed, { conversation: group });
        const refused = await carolSocket.timeout(DEADLINE_MS).emitWithAck("send", { conversation: group, content: "still here?" });
        assert.deepEqual(refused, { error: "Conversation not found", code: 404 });
      } finally {
        carolSocket.close();
      }
    });
  });
}

describe("Socket.IO handshake", () => {
  test("is refused without a token", async () => {
    const err = await refusal({});
    assert.equal(err.message, "Authentication required: send Authorization: Bearer <token>");
  });

  test("logging out everywhere ends the session with session_ended", async () => {
    const carol = await newUser("carol");
    const socket = await connect(carol, ["websocket"]);
    const ended = nextEvent(socket, "session_ended");
    const disconnected = nextEvent(socket, "disconnect");
    const out = await api("POST", "/api/auth/logout-all", { token: carol.token });
    assert.equal(out.status, 200);
    assert.deepEqual(await ended, { reason: "session ended: log in again" });
    assert.equal(await disconnected, "io server disconnect");
    const again = await refusal({ token: carol.token });
    assert.equal(again.message, "Token is no longer valid; please log in again");
  });

  test("is refused with a forged token", async () => {
    const err = await refusal({ token: "forged.token.value" });
    assert.equal(err.message, "Invalid token");
  });
});
