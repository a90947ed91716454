#!/usr/bin/env node
// Watches a streaming responder answer, the way the people in the conversation see it: two new
// accounts, the second picks PLUGIN (with optional settings) and goes BUSY, the first listens on
// the WebSocket and writes to it. Prints each `reply_progress` push for that message, then the
// stored auto-reply:
//
//   progress 1: Rust here: out for lunch,
//   reply: Rust here: out for lunch, back at two.
//
//   PALAVER_URL=http://127.0.0.1:3000 node plugins/try-streaming.mjs my-plugin
//
// Exits non-zero unless at least one progress push came before a reply that is not the
// server's standard "unavailable" message. Needs Node.js 20.10 or later: its own fetch and
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

const socket = new WebSocket(`${base.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(sender.token)}`);
await new Promise((resolve, reject) => {
  socket.addEventListener("open", resolve, { once: true });
  socket.addEventListener("error", () => reject(new Error("the WebSocket did not open")), { once: true });
});
const frames = [];
let arrived = () => {};
socket.addEventListener("message", (event) => {
  frames.push(JSON.parse(event.data));
  arrived();
});

const sent = await call("POST", "/api/chat/send", sender.token, { recipient: busy.user_id, content: "Are you there?" });
// The reply comes within the responder's deadline (10 s by default).
const deadline = Date.now() + 11_000;
let progress = 0;
for (;;) {
  const frame = frames.shift();
  if (!frame) {
    if (Date.now() > deadline) {
      console.error("no auto-reply within 11 s");
      process.exit(1);
    }
    await new Promise((resolve) => {
      arrived = resolve;
      setTimeout(resolve, deadline - Date.now() + 1);
    });
    continue;
  }
  if (frame.type === "reply_progress" && frame.reply_to === sent.id) {
    progress += 1;
    console.log(`progress ${frame.seq}: ${frame.text}`);
  } else if (frame.type === "message" && frame.message.reply_to === sent.id) {
    console.log(`reply: ${frame.message.content}`);
    socket.close();
    if (frame.message.content.startsWith(FALLBACK)) process.exit(1);
    if (progress === 0) {
      console.error("the reply came without any progress before it");
      process.exit(1);
    }
    process.exit(0);
  }
}
