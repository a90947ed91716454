#!/usr/bin/env node
// Watches a streaming responder answer, the way the people in the conversation see it: two new
// accounts, the second picks PLUGIN (with optional settings) and goes BUSY, both listen on the
// WebSocket, and the first writes to the second. Prints each `reply_progress` push the sender
// gets, then the stored auto-reply, with the time since the send:
//
//   progress 1 (+4 ms): Rust here: out for lunch,
//   reply (+9 ms, both sides): Rust here: out for lunch, back at two.
//
//   PALAVER_URL=http://127.0.0.1:3000 node plugins/try-streaming.mjs my-plugin
//
// Exits non-zero unless both sides got at least one progress push before a reply that is not
// the server's standard "unavailable" message. Needs Node.js 20.10 or later: its own fetch and
// WebSocket, no packages.
const [plugin, config = "{}"] = process.argv.slice(2);
if (!plugin) {
  console.error("usage: try-streaming.mjs PLUGIN [CONFIG_JSON]");
  process.exit(2);
}
if (typeof WebSocket === "undefined") {
  // Node.js 20 and 21 have it behind a flag: run again with it.
  if (process.execArgv.includes("--experimental-websocket")) {
    console.error("this Node.js has no WebSocket: use Node.js 20.10 or later");
    process.exit(2);
  }
  const { spawnSync } = await import("node:child_process");
  const again = spawnSync(process.execPath, ["--experimental-websocket", ...process.argv.slice(1)], {
    stdio: "inherit",
  });
  process.exit(again.status ?? 1);
}
const base = process.env.PALAVER_URL ?? "http://127.0.0.1:3000";
const waitS = Number(process.env.TRY_PLUGIN_WAIT_S ?? 120);
const password = "try-plugin password";
const FALLBACK = "This user is unavailable right now";

async function call(method, path, token, body) {
  const response = await fetch(base + path, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function account(label) {
  const email = `try-${label}-${crypto.randomUUID()}@example.com`;
  await call("POST", "/api/auth/register", null, { email, password });
  return call("POST", "/api/auth/login", null, { email, password });
}

// A plugin just dropped into PLUGINS_DIR is "loading" until it is compiled.
const lister = await account("lister");
for (let waited = 0; ; waited += 100) {
  const plugins = await call("GET", "/api/plugins", lister.token);
  if (plugins.some((p) => p.name === plugin && p.state !== "loading")) break;
  if (waited > waitS * 1000) {
    console.error(`plugin ${plugin} is not loaded (see the server log)`);
    process.exit(1);
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
}

const sender = await account("sender");
const busy = await account("busy");
await call("PUT", "/api/users/me/responder", busy.token, { plugin, config: JSON.parse(config) });
await call("PUT", "/api/user/status", busy.token, { status: "BUSY" });

// Both people listen: the reply is written for the busy user, to the sender.
function listen(user, onProgress = () => {}) {
  const socket = new WebSocket(`${base.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(user.token)}`);
  const seen = { progress: [], reply: null };
  // Fresh accounts: every reply_progress and auto-reply they get is this conversation's.
  seen.done = new Promise((resolve) => {
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "reply_progress") {
        seen.progress.push(frame);
        onProgress(frame);
      } else if (frame.type === "message" && frame.message.reply_to) {
        seen.reply = frame.message;
        socket.close();
        resolve();
      }
    });
  });
  return new Promise((resolve, reject) => {
    socket.addEventListener("open", () => resolve(seen), { once: true });
    socket.addEventListener("error", () => reject(new Error("the WebSocket did not open")), { once: true });
  });
}

let sentAt = 0;
const senderSide = await listen(sender, (frame) =>
  console.log(`progress ${frame.seq} (+${Date.now() - sentAt} ms): ${frame.text}`),
);
const busySide = await listen(busy);
sentAt = Date.now();
const sent = await call("POST", "/api/chat/send", sender.token, { recipient: busy.user_id, content: "Are you there?" });
// The reply comes within the responder's deadline (10 s by default).
const timeout = new Promise((resolve) => setTimeout(resolve, 11_000).unref());
await Promise.race([Promise.all([senderSide.done, busySide.done]), timeout]);

const problems = [];
for (const [who, side] of [["the sender", senderSide], ["the busy user", busySide]]) {
  if (!side.reply) problems.push(`${who} got no auto-reply within 11 s`);
  else if (side.reply.reply_to !== sent.id) problems.push(`${who}'s auto-reply answers another message`);
  else if (side.reply.content.startsWith(FALLBACK)) problems.push(`${who} got the fallback: the plugin failed`);
  if (!side.progress.length) problems.push(`${who} saw no progress before the reply`);
  if (side.progress.some((frame) => frame.reply_to !== sent.id)) problems.push(`${who} saw progress for another message`);
}
if (senderSide.reply) console.log(`reply (+${Date.now() - sentAt} ms, both sides): ${senderSide.reply.content}`);
for (const problem of problems) console.error(problem);
process.exit(problems.length ? 1 : 0);
