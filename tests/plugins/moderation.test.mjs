// The moderation chain against a live server, over Socket.IO (socket.io-client) and HTTP: the
// word-filter examples in three languages, as CI starts them (.ci/run):
//   MODERATION_PLUGINS=word-filter,word-reject,js-word-filter,py-word-filter, with PLUGINS_DIR
//   holding the Rust word_filter.wasm as `word-filter` (its committed manifest: mask "darn",
//   "heck") and as `word-reject` (reject "forbidden"), the JavaScript one masking "gosh" and the
//   Python one rejecting "blimey".
// Run: PALAVER_URL=http://127.0.0.1:3000 node --test tests/plugins/moderation.test.mjs
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const BASE = process.env.PALAVER_URL;
if (!BASE) {
  throw new Error("PALAVER_URL is not set: point it at a running Palaver server");
}
const PASSWORD = "correct horse battery";
const DEADLINE_MS = 10_000;
const PLUGIN_WAIT_MS = Number(process.env.PALAVER_PLUGIN_WAIT_MS ?? 120_000);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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

function connect(user) {
  const socket = io(BASE, { auth: { token: user.token }, reconnection: false, forceNew: true });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

describe("moderation over Socket.IO and HTTP", () => {
  let alice, bob, aliceSocket, bobSocket;
  const pushedToBob = [];

  before(async () => {
    // Both moderators must be loaded (not "loading"), or they would fail open.
    const viewer = await newUser("viewer");
    const until = Date.now() + PLUGIN_WAIT_MS;
    for (;;) {
      const listed = await api("GET", "/api/plugins", { token: viewer.token });
      const ready = (name) => listed.body.some((p) => p.name === name && p.state !== "loading");
      if (["word-filter", "word-reject", "js-word-filter", "py-word-filter"].every(ready)) break;
      assert.ok(Date.now() < until, `moderators not loaded: ${JSON.stringify(listed.body)}`);
      await sleep(100);
    }
    alice = await newUser("alice");
    bob = await newUser("bob");
    aliceSocket = await connect(alice);
    bobSocket = await connect(bob);
    bobSocket.on("message", (message) => pushedToBob.push(message));
  });

  after(() => {
    aliceSocket?.close();
    bobSocket?.close();
  });

  test("a rejected send is acked with code 422 and the reason, and nothing is stored or pushed", async () => {
    const ack = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", {
      recipient: bob.id,
      content: "this is Forbidden talk",
    });
    assert.deepEqual(ack, { error: 'Your message contains the word "forbidden"', code: 422 });
    const http = await api("POST", "/api/chat/send", {
      token: alice.token,
      body: { recipient: bob.id, content: "forbidden again" },
    });
    assert.equal(http.status, 422);
    assert.deepEqual(http.body, { message: 'Your message contains the word "forbidden"' });
    // The Python moderator, last in the chain.
    const python = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", {
      recipient: bob.id,
      content: "Blimey!",
    });
    assert.deepEqual(python, { error: 'Your message contains the word "blimey"', code: 422 });
  });

  test("a masked send is stored and pushed masked", async () => {
    // Rust masks "Heck", then JavaScript masks "gosh".
    const ack = await aliceSocket.timeout(DEADLINE_MS).emitWithAck("send", {
      recipient: bob.id,
      content: "well, Heck, GOSH",
    });
    assert.equal(typeof ack.id, "string", JSON.stringify(ack));
    const history = await api("GET", `/api/chat/messages?with=${alice.id}`, { token: bob.token });
    assert.deepEqual(history.body.map((m) => m.content), ["well, ****, ****"]);
    const until = Date.now() + DEADLINE_MS;
    while (pushedToBob.length === 0 && Date.now() < until) await sleep(10);
    // Only the masked message ever reached Bob: the refused ones were never pushed.
    assert.deepEqual(pushedToBob.map((m) => m.content), ["well, ****, ****"]);
  });
});
