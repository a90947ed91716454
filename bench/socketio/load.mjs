// Socket.IO load generator: the same load against any server that speaks Palaver's contract
// (register and log in over HTTP, send with POST /api/chat/send or a Socket.IO `send` event,
// receive Socket.IO `message` events), so Palaver and another stack (the classic Express +
// Socket.IO + Mongoose one) can be measured side by side, in one run, on one machine.
//
//   npm ci --prefix bench/socketio
//   node bench/socketio/load.mjs --url http://127.0.0.1:3000 --pid <server pid>[,<db pid>] \
//        [--rates 500,4000] [--seconds 10] [--users 100] [--send http|socketio] [--check]
//
// Each user holds one Socket.IO connection (WebSocket transport). Sends go out at a fixed rate
// (open loop: a slow server falls behind instead of slowing the load), user i to user i+1.
// Printed per rate: messages sent and delivered to the recipient's socket, send → delivery
// latency, and the server's CPU time (user + system, from /proc/<pid>/stat, summed over every
// --pid: give a database's process too when it is separate) per delivered message.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:3000" },
    pid: { type: "string" },
    rates: { type: "string", default: "500,4000" },
    seconds: { type: "string", default: "10" },
    users: { type: "string", default: "100" },
    send: { type: "string", default: "http" },
    // Exit 1 unless every send was delivered (CI's smoke run, at a rate any server keeps up with).
    check: { type: "boolean", default: false },
  },
});
const BASE = args.url.replace(/\/$/, "");
const PIDS = (args.pid ?? "").split(",").filter(Boolean);
const SECONDS = Number(args.seconds);
const USERS = Number(args.users);
if (!["http", "socketio"].includes(args.send)) throw new Error("--send is http or socketio");
if (!(USERS >= 2)) throw new Error("--users must be at least 2");
const TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
const PASSWORD = "correct horse battery";

/** Each --pid process's CPU seconds so far, by its command name. */
function cpuSeconds() {
  const seconds = {};
  for (const pid of PIDS) {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    // After the command name (which may hold spaces): utime and stime are fields 12 and 13.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    seconds[`${name} ${pid}`] = (Number(fields[11]) + Number(fields[12])) / TICKS;
  }
  return seconds;
}

async function api(path, { token, body }) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(BASE + path, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function newUser(i) {
  const email = `load-${Date.now()}-${i}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const registered = await api("/api/auth/register", { body: { email, password: PASSWORD } });
  if (registered.status !== 201) throw new Error(`register: ${registered.status} ${JSON.stringify(registered.body)}`);
  const login = await api("/api/auth/login", { body: { email, password: PASSWORD } });
  if (login.status !== 200) throw new Error(`login: ${login.status} ${JSON.stringify(login.body)}`);
  return { id: registered.body.id ?? login.body.user_id, token: login.body.token };
}

function connect(user) {
  const socket = io(BASE, { auth: { token: user.token }, transports: ["websocket"], reconnection: false, forceNew: true });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
}

/** Server CPU µs per delivered message: in all, and per process when there are several. */
function cpuPerMessage(before, after, delivered) {
  const per = (from, to) => (delivered === 0 ? "n/a" : Math.round(((to - from) * 1e6) / delivered));
  const names = Object.keys(before);
  if (names.length === 0) return { "server CPU µs/msg": "n/a" };
  const total = (seconds) => names.reduce((sum, name) => sum + seconds[name], 0);
  const columns = { "server CPU µs/msg": per(total(before), total(after)) };
  if (names.length > 1) for (const name of names) columns[`of which ${name}`] = per(before[name], after[name]);
  return columns;
}

function quantile(sorted, q) {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function run(users, sockets, rate, label) {
  const tag = `load:${label}:`;
  const latencies = [];
  let delivered = 0;
  let failed = 0;
  const why = new Map();
  const fail = (reason) => {
    failed += 1;
    why.set(reason, (why.get(reason) ?? 0) + 1);
  };
  const onMessage = (me) => (message) => {
    if (message.sender === me || typeof message.content !== "string" || !message.content.startsWith(tag)) return;
    const sentAt = Number(message.content.slice(message.content.lastIndexOf(":") + 1));
    latencies.push(performance.now() - sentAt);
    delivered += 1;
  };
  const listeners = sockets.map((socket, i) => {
    const listener = onMessage(users[i].id);
    socket.on("message", listener);
    return listener;
  });
  const total = Math.round(rate * SECONDS);
  const cpuBefore = cpuSeconds();
  const started = performance.now();
  let sent = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate));
      for (; sent < due; sent++) {
        const from = sent % users.length;
        const to = (from + 1) % users.length;
        const body = { recipient: users[to].id, content: `${tag}${sent}:${performance.now()}` };
        const done = args.send === "http"
          ? api("/api/chat/send", { token: users[from].token, body }).then((r) => (r.status < 300 ? null : `HTTP ${r.status}`))
          : sockets[from].timeout(10_000).emitWithAck("send", body).then((ack) => ack.error ?? null);
        done.then(
          (why) => why !== null && fail(why),
          (error) => fail(error.cause?.code ?? error.message),
        );
      }
      if (sent < total) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });
  // Whatever is still on its way: until every send is delivered or failed, or 10 s of quiet.
  let last = delivered;
  let quietSince = performance.now();
  while (delivered + failed < total && performance.now() - quietSince < 10_000) {
    await new Promise((r) => setTimeout(r, 20));
    if (delivered !== last) {
      last = delivered;
      quietSince = performance.now();
    }
  }
  const elapsed = (performance.now() - started) / 1000;
  const cpuAfter = cpuSeconds();
  sockets.forEach((socket, i) => socket.off("message", listeners[i]));
  latencies.sort((a, b) => a - b);
  if (why.size > 0) console.log(`failed sends at ${rate}/s:`, Object.fromEntries(why));
  return {
    run: `${args.send} send at ${rate}/s`,
    sent,
    delivered,
    failed,
    "msg/s": Math.round(delivered / elapsed),
    "p50 ms": quantile(latencies, 0.5).toFixed(2),
    "p99 ms": quantile(latencies, 0.99).toFixed(2),
    "max ms": (latencies.at(-1) ?? NaN).toFixed(2),
    ...cpuPerMessage(cpuBefore, cpuAfter, delivered),
  };
}

const users = [];
for (let i = 0; i < USERS; i += 10) {
  users.push(...(await Promise.all(Array.from({ length: Math.min(10, USERS - i) }, (_, j) => newUser(i + j)))));
}
const sockets = await Promise.all(users.map(connect));
console.log(`socketio-load: ${USERS} users connected to ${BASE}; ${SECONDS} s per rate`);
const rows = [];
for (const rate of args.rates.split(",").map(Number)) {
  rows.push(await run(users, sockets, rate, `${rate}-${Date.now()}`));
}
console.table(rows);
console.log("(delivered: `message` events at the recipient's socket; CPU: the --pid processes' user + system time over the run, per delivered message)");
sockets.forEach((socket) => socket.close());
const short = rows.filter((row) => row.failed > 0 || row.delivered !== row.sent);
if (args.check && short.length > 0) {
  console.error("socketio-load: not every send was delivered:", short.map((row) => row.run));
  process.exit(1);
}
// Sends still in flight to a server that fell behind would keep Node running.
process.exit(0);
