// The JavaScript and Python example responders (plugins/examples/js-away, py-away) against a
// live server, through the HTTP API only.
//
// Run: PALAVER_URL=http://127.0.0.1:3000 node --test tests/plugins/
// The server needs both plugins in its PLUGINS_DIR: build them (`npm ci && npm run build` in
// plugins/examples/js-away, `./build.sh` in plugins/examples/py-away) and copy each .wasm with
// its .toml there. They may also be dropped in after start: the test first waits (up to
// PALAVER_PLUGIN_WAIT_MS, default 120 s; a debug server takes tens of seconds to compile them)
// until GET /api/plugins lists both. Registers 15 accounts (30 auth requests): under the
// default AUTH_RATE_LIMIT (60/m per address) run it on a server other suites have not just used.
//
// For each plugin: a BUSY user whose responder it is, with no settings of their own (the
// manifest's [config] message), then with their own message; every auto-reply must be the
// plugin's exact text, never the standard fallback. The time from send to auto-reply is printed
// as diagnostics, not asserted.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const BASE = process.env.PALAVER_URL;
if (!BASE) {
  throw new Error("PALAVER_URL is not set: point it at a running Palaver server (e.g. http://127.0.0.1:3000)");
}
const PLUGIN_WAIT_MS = Number(process.env.PALAVER_PLUGIN_WAIT_MS ?? 120_000);
const PASSWORD = "correct horse battery";
/** The server's rule: an auto-reply within 10 s of receipt (RESPONDER_TIMEOUT_MS), plus slack. */
const REPLY_DEADLINE_MS = 10_500;
const POLL_MS = 25;
const SAMPLES = 5;

const PLUGINS = [
  { name: "js-away", manifest: "../../plugins/examples/js-away/js_away.toml" },
  { name: "py-away", manifest: "../../plugins/examples/py-away/py_away.toml" },
];

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
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // keep the text: the assertion that fails shows it
  }
  return { status: response.status, body: parsed };
}

async function newUser(label) {
  const email = `${label}-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const registered = await api("POST", "/api/auth/register", { body: { email, password: PASSWORD } });
  assert.equal(registered.status, 201, `register ${email}: ${JSON.stringify(registered.body)}`);
  const login = await api("POST", "/api/auth/login", { body: { email, password: PASSWORD } });
  assert.equal(login.status, 200, `login ${email}: ${JSON.stringify(login.body)}`);
  assert.equal(login.body.user_id, registered.body.id);
  return { id: login.body.user_id, email, token: login.body.token };
}

/** The `message` default under `[config]` in a committed manifest (a TOML basic string). */
function manifestDefault(relativePath) {
  const text = readFileSync(new URL(relativePath, import.meta.url), "utf8");
  const config = text.split(/^\[config\]\s*$/m)[1]?.split(/^\[/m)[0] ?? "";
  const line = config.match(/^message\s*=\s*(".*")\s*$/m);
  assert.ok(line, `no [config] message in ${relativePath}`);
  return JSON.parse(line[1]);
}

/** What both plugins make of a template: `{email}` and `{name}` (the part before '@'). */
function expectedReply(template, email) {
  const name = email.split("@")[0];
  return template.replace(/\{(email|name)\}/g, (_, key) => (key === "email" ? email : name));
}

async function pluginList(token) {
  const listed = await api("GET", "/api/plugins", { token });
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  return listed.body;
}

/**
 * Sends one message from `sender` to the BUSY `busy` and polls the conversation until an
 * auto-reply arrives, at most REPLY_DEADLINE_MS. Returns it with the time it took to see it
 * and the gap between the two stored timestamps (the server's own measure).
 */
async function sendAndAwaitAutoReply(sender, busy, content) {
  const started = performance.now();
  const sent = await api("POST", "/api/chat/send", {
    token: sender.token,
    body: { recipient: busy.id, content },
  });
  assert.equal(sent.status, 200, `send: ${JSON.stringify(sent.body)}`);
  let messages = [];
  while (performance.now() - started < REPLY_DEADLINE_MS) {
    const page = await api("GET", `/api/chat/messages?with=${busy.id}`, { token: sender.token });
    assert.equal(page.status, 200, `history: ${JSON.stringify(page.body)}`);
    messages = page.body;
    const reply = messages.find((m) => m.kind === "auto_reply");
    if (reply) {
      const seenMs = performance.now() - started;
      const original = messages.find((m) => m.id === sent.body.id);
      assert.ok(original, "the sent message is in the history");
      const storedMs = Date.parse(reply.sent_at) - Date.parse(original.sent_at);
      return { reply, seenMs, storedMs };
    }
    await sleep(POLL_MS);
  }
  assert.fail(`no auto-reply within ${REPLY_DEADLINE_MS} ms; the conversation: ${JSON.stringify(messages)}`);
}

/** An assertion message that says why the plugin failed, if the server knows: the error text
 * is the operator's (`GET /plugins` on METRICS_ADDR, given as PALAVER_OPERATOR_URL). */
async function failureContext(token, plugin) {
  const entry = (await pluginList(token)).find((p) => p.name === plugin);
  if (!entry) return `${plugin} is not loaded`;
  const operator = process.env.PALAVER_OPERATOR_URL;
  const report = operator
    ? (await (await fetch(`${operator}/plugins`)).json()).find((p) => p.name === plugin)
    : undefined;
  return report
    ? `${plugin}: state ${report.state}, consecutive_failures ${report.consecutive_failures}, last_error ${report.last_error ?? "none"}`
    : `${plugin}: state ${entry.state} (the reason is in GET /plugins on METRICS_ADDR)`;
}

function summary(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  return `min ${sorted[0].toFixed(0)}, median ${median.toFixed(0)}, max ${sorted.at(-1).toFixed(0)} ms`;
}

let observer;

before(async () => {
  observer = await newUser("plugins-observer");
  const deadline = performance.now() + PLUGIN_WAIT_MS;
  for (;;) {
    // Listed as "loading" while the server compiles them, in the background.
    const names = (await pluginList(observer.token)).filter((p) => p.state !== "loading").map((p) => p.name);
    if (PLUGINS.every((p) => names.includes(p.name))) return;
    if (performance.now() > deadline) {
      assert.fail(
        `after ${PLUGIN_WAIT_MS} ms the server lists ${JSON.stringify(names)}, not ` +
          `${PLUGINS.map((p) => p.name).join(" and ")}: put each built .wasm with its .toml in PLUGINS_DIR`,
      );
    }
    await sleep(500);
  }
});

test("GET /api/plugins lists both plugins, each letting users set `message`", async () => {
  const listed = await pluginList(observer.token);
  for (const { name } of PLUGINS) {
    const plugin = listed.find((p) => p.name === name);
    assert.ok(plugin, `${name} is listed: ${JSON.stringify(listed.map((p) => p.name))}`);
    assert.equal(plugin.state, "ready", JSON.stringify(plugin));
    assert.ok(
      plugin.user_settings.some((s) => s.key === "message" && s.description.length > 0),
      `${name} offers "message": ${JSON.stringify(plugin.user_settings)}`,
    );
  }
});

for (const { name: plugin, manifest } of PLUGINS) {
  describe(plugin, () => {
    let bob;

    before(async () => {
      bob = await newUser(`${plugin}-bob`);
      const chosen = await api("PUT", "/api/users/me/responder", { token: bob.token, body: { plugin, config: {} } });
      assert.equal(chosen.status, 200, JSON.stringify(chosen.body));
      const busy = await api("PUT", "/api/user/status", { token: bob.token, body: { status: "BUSY" } });
      assert.equal(busy.status, 200, JSON.stringify(busy.body));
      assert.equal(busy.body.status, "BUSY");
    });

    test("with no settings of the user's, answers with the manifest's [config] message", async () => {
      const alice = await newUser(`${plugin}-alice`);
      const expected = expectedReply(manifestDefault(manifest), bob.email);
      const { reply } = await sendAndAwaitAutoReply(alice, bob, "hi");
      assert.equal(reply.content, expected, await failureContext(observer.token, plugin));
      assert.equal(reply.sender, bob.id);
      assert.equal(reply.recipient, alice.id);
    });

    test(`with the user's own message, answers with it (${SAMPLES} senders, timed)`, async (t) => {
      const template = `Hi, this is {name} ({email}), answered by ${plugin}: back at 4 pm. {name} says bye!`;
      const chosen = await api("PUT", "/api/users/me/responder", {
        token: bob.token,
        body: { plugin, config: { message: template } },
      });
      assert.equal(chosen.status, 200, JSON.stringify(chosen.body));
      assert.deepEqual(chosen.body, { plugin, config: { message: template } });
      const expected = expectedReply(template, bob.email);
      assert.ok(!expected.includes("{"), expected);

      // A new sender each time: the server runs one auto-reply at a time per (sender,
      // recipient) and at most AUTO_REPLY_LIMIT (10/h) per pair.
      const senders = [];
      for (let i = 0; i < SAMPLES; i += 1) senders.push(await newUser(`${plugin}-sender${i}`));
      const seen = [];
      const stored = [];
      for (const [i, sender] of senders.entries()) {
        const { reply, seenMs, storedMs } = await sendAndAwaitAutoReply(sender, bob, `hello #${i}`);
        assert.equal(reply.content, expected, await failureContext(observer.token, plugin));
        assert.equal(reply.sender, bob.id);
        assert.equal(reply.recipient, sender.id);
        seen.push(seenMs);
        stored.push(storedMs);
      }
      const line =
        `${plugin}: send -> auto-reply seen (client, polling every ${POLL_MS} ms): ` +
        `${seen.map((ms) => ms.toFixed(0)).join(", ")} ms (${summary(seen)}); ` +
        `message -> reply sent_at (server): ${stored.join(", ")} ms (${summary(stored)})`;
      t.diagnostic(line);

      const entry = (await pluginList(observer.token)).find((p) => p.name === plugin);
      assert.equal(entry.state, "ready", JSON.stringify(entry));
    });
  });
}
