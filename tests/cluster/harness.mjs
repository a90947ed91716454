// The cluster suites' harness: three Palaver nodes on one NATS and one MongoDB-wire database,
// driven by real clients (the `ws` package and socket.io-client). Each suite file runs its own
// cluster (its own processes, ports and database) and starts and kills the processes itself.
//
//   PALAVER_BIN=target/debug/palaver NATS_SERVER_BIN=$(scripts/nats.sh install) \
//   CLUSTER_MONGODB_URI=mongodb://127.0.0.1:27017/ node --test tests/cluster/
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import net from "node:net";
import WebSocket from "ws";
import { io } from "socket.io-client";

export const BIN = process.env.PALAVER_BIN ?? "target/debug/palaver";
export const NATS_BIN = process.env.NATS_SERVER_BIN;
export const MONGO = process.env.CLUSTER_MONGODB_URI;
export const PASSWORD = "correct horse battery";
export const FALLBACK =
  "This user is unavailable right now. Your message was delivered and they will see it later.";
/** The responder's deadline on these nodes, and how much later a dead node's fallback may come
 * (docs/cluster.md: the silence before a node is taken for dead, 3 s, plus a margin). */
export const RESPONDER_TIMEOUT_MS = 6000;
export const TAKEOVER_MARGIN_MS = 4000;
/** How long any one expected event may take. Generous: a debug build on two busy cores. */
export const EVENT_MS = 20_000;

if (!NATS_BIN || !MONGO) {
  throw new Error("set NATS_SERVER_BIN and CLUSTER_MONGODB_URI (see the comment at the top)");
}

export const work = mkdtempSync(join(tmpdir(), "palaver-cluster-"));
export const database = `palaver_cluster_${Date.now()}_${process.pid}`;
export const secret = "cluster test secret 0123456789abcdef";
export let nats;
export let natsPort;
let llm;
let llmUrl;
export const nodes = {};

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once `check` returns a truthy value; polls, because the thing awaited (a process
 * becoming ready, a connection coming back) has no event a client could subscribe to. */
export async function eventually(what, check, ms = EVENT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function startNats() {
  nats = spawn(NATS_BIN, ["--addr", "127.0.0.1", "--port", String(natsPort)], {
    stdio: ["ignore", "ignore", openSync(join(work, "nats.log"), "a")],
  });
  return eventually("nats-server", () => new Promise((resolve) => {
    const socket = net.connect(natsPort, "127.0.0.1", () => { socket.destroy(); resolve(true); });
    socket.on("error", () => resolve(false));
  }));
}

export async function startNode(name, extraEnv = {}) {
  extraEnv = { ...nodeEnv(name), ...extraEnv };
  const port = await freePort();
  const metricsPort = await freePort();
  const log = openSync(join(work, `${name}.log`), "a");
  const child = spawn(BIN, [], {
    env: {
      ...process.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      DATA_DIR: join(work, name),
      NATS_URL: `nats://127.0.0.1:${natsPort}`,
      MONGODB_URI: `${MONGO}${database}`,
      JWT_SECRET: secret,
      NODE_ID: name,
      LLM_API_URL: llmUrl,
      RESPONDER_TIMEOUT_MS: String(RESPONDER_TIMEOUT_MS),
      AUTH_RATE_LIMIT: "off",
      SEND_RATE_LIMIT: "off",
      AUTO_REPLY_LIMIT: "off",
      AUTO_REPLY_TOTAL_LIMIT: "off",
      RUST_LOG: "info",
      METRICS_ADDR: `127.0.0.1:${metricsPort}`,
      ...extraEnv,
    },
    stdio: ["ignore", log, log],
  });
  const node = {
    name,
    url: `http://127.0.0.1:${port}`,
    metrics: `http://127.0.0.1:${metricsPort}/metrics`,
    child,
    alive: true,
  };
  child.on("exit", () => { node.alive = false; });
  nodes[name] = node;
  await eventually(`${name} ready`, async () => {
    if (!node.alive) throw new Error(`${name} exited; see ${work}/${name}.log`);
    return (await fetch(`${node.url}/readyz`)).status === 200;
  }, 60_000);
  return node;
}

/** A metric's value (no labels) from the node's Prometheus text. */
export async function metric(node, name) {
  const text = await (await fetch(node.metrics)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

export function kill(node) {
  return new Promise((resolve) => {
    if (!node.alive) return resolve();
    node.child.once("exit", resolve);
    node.child.kill("SIGKILL");
  });
}

export async function api(node, method, path, { token, body, headers = {} } = {}) {
  const response = await fetch(node.url + path, {
    method,
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

export async function newUser(node, label) {
  const email = `${label}-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const registered = await api(node, "POST", "/api/auth/register", { body: { email, password: PASSWORD } });
  assert.equal(registered.status, 201, JSON.stringify(registered.body));
  const login = await api(node, "POST", "/api/auth/login", { body: { email, password: PASSWORD } });
  assert.equal(login.status, 200);
  return { id: registered.body.id, token: login.body.token };
}

/** All of `user`'s messages (optionally after an id), paged through on `node`. */
export async function history(node, user, after) {
  const all = [];
  for (;;) {
    const query = after ? `?after=${after}&limit=200` : "?after=00000000-0000-0000-0000-000000000000&limit=200";
    const page = await api(node, "GET", `/api/chat/messages${query}`, { token: user.token });
    assert.equal(page.status, 200, JSON.stringify(page.body));
    all.push(...page.body);
    if (page.body.length < 200) return all;
    after = page.body[page.body.length - 1].id;
  }
}

/** A WebSocket client that records every frame, and any push out of id order. */
export class WsClient {
  static open(node, user) {
    const client = new WsClient(node, user);
    return new Promise((resolve, reject) => {
      client.ws.once("open", () => resolve(client));
      client.ws.once("error", reject);
    });
  }

  constructor(node, user) {
    this.node = node;
    this.frames = [];
    this.waiters = [];
    this.lastPushed = "";
    this.outOfOrder = [];
    this.ws = new WebSocket(`${node.url.replace("http", "ws")}/ws?token=${user.token}`);
    this.arrivals = [];
    this.isClosed = false;
    this.closed = new Promise((resolve) => this.ws.once("close", () => {
      this.isClosed = true;
      this.arrivals.splice(0).forEach((r) => r());
      resolve();
    }));
    this.ws.on("error", () => {});
    this.ws.on("message", (data) => {
      const frame = JSON.parse(data.toString());
      if (frame.type === "message") {
        if (frame.message.id <= this.lastPushed) this.outOfOrder.push(frame.message.id);
        this.lastPushed = frame.message.id;
      }
      this.frames.push(frame);
      this.waiters = this.waiters.filter((w) => !w(frame));
      this.arrivals.splice(0).forEach((r) => r());
    });
  }

  /** Resolves at the next frame or when the socket closes. */
  arrival() {
    return this.isClosed ? Promise.resolve() : new Promise((r) => this.arrivals.push(r));
  }

  /** The first frame (already received or still to come) that `match` accepts. */
  next(what, match) {
    const found = this.frames.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.node.name}: no ${what}`)), EVENT_MS);
      this.waiters.push((frame) => {
        if (!match(frame)) return false;
        clearTimeout(timer);
        resolve(frame);
        return true;
      });
    });
  }

  message(id) {
    return this.next(`message ${id}`, (f) => f.type === "message" && f.message.id === id);
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  close() {
    this.ws.close();
  }
}

export function socketIo(node, user) {
  const socket = io(node.url, { auth: { token: user.token }, reconnection: false, forceNew: true });
  socket.pushes = [];
  socket.on("message", (m) => socket.pushes.push(m));
  socket.on("status", (s) => socket.pushes.push(s));
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
}

export function socketIoPush(socket, what, match) {
  const found = socket.pushes.find(match);
  if (found) return Promise.resolve(found);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket.io: no ${what}`)), EVENT_MS);
    const check = () => {
      const hit = socket.pushes.find(match);
      if (!hit) return;
      clearTimeout(timer);
      socket.off("message", check);
      socket.off("status", check);
      resolve(hit);
    };
    socket.on("message", check);
    socket.on("status", check);
  });
}

export const pick = (list) => list[Math.floor(Math.random() * list.length)];
export const alive = () => Object.values(nodes).filter((n) => n.alive);

/**
 * Senders on every node and a roaming reader, while `nemesis` does its worst: the run that the
 * fault tests share. `nemesis({ frozen, sendingDone })` runs alongside; nodes it puts in
 * `frozen` are still sent to (a send in flight when its node stops) but not read from. Every
 * catch-up page must be exactly the history after its `after=`, every push in id order, every
 * acknowledged message stored once. Returns the counts, for the log.
 */
export async function roamingRun(label, { sends, senders: senderCount, rate, nemesis }) {
  const frozen = new Set();
  const answering = () => alive().filter((n) => !frozen.has(n.name));
  const target = await newUser(nodes.n1, `${label}-target`);
  const senders = await Promise.all(Array.from({ length: senderCount }, (_, i) => newUser(pick(alive()), `${label}-${i}`)));
  const acked = new Set();
  let refused = 0;

  async function sendOnce(sender, key, content) {
    for (let attempt = 0; attempt < 100; attempt++) {
      const node = pick(alive()); // frozen ones too
      try {
        const response = await fetch(`${node.url}/api/chat/send`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${sender.token}`, "idempotency-key": key },
          body: JSON.stringify({ recipient: target.id, content }),
          signal: AbortSignal.timeout(20_000),
        });
        const body = await response.json();
        if (response.status === 200) return body.id;
        assert.equal(response.status, 503, JSON.stringify(body));
        refused++;
      } catch (e) {
        if (e instanceof assert.AssertionError) throw e;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no node acknowledged ${key}`);
  }

  const started = Date.now();
  let sent = 0;
  const sending = Promise.all(senders.map(async (sender, s) => {
    for (;;) {
      const n = sent++;
      if (n >= sends) return;
      const due = started + (n * 1000) / rate;
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
      acked.add(await sendOnce(sender, `${label}${s}-${n}`, `paced ${n}`));
    }
  }));
  const state = { frozen, sendingDone: false, target };
  const settled = sending.then(() => {}, () => {});
  settled.then(() => { state.sendingDone = true; });
  const fault = nemesis(state);

  const seen = [];
  const pages = [];
  const connections = [];
  let last;
  let gaveUp = false;
  const giveUp = Promise.all([settled, fault])
    .then(() => new Promise((r) => setTimeout(r, EVENT_MS).unref()))
    .then(() => { gaveUp = true; });
  const complete = () => state.sendingDone && seen.length >= acked.size;
  const quiet = (ms) => new Promise((r) => setTimeout(r, ms));
  while (!complete() && !gaveUp) {
    const node = pick(answering());
    if (!node) { await quiet(100); continue; }
    let ws;
    try {
      ws = await Promise.race([WsClient.open(node, target), quiet(2000).then(() => { throw new Error("slow"); })]);
    } catch {
      continue;
    }
    connections.push(ws);
    try {
      const after = last;
      const caughtUp = await history(node, target, after);
      pages.push({ after, ids: caughtUp.map((m) => m.id) });
      for (const m of caughtUp) {
        seen.push(m.id);
        last = m.id;
      }
    } catch {
      ws.close();
      continue;
    }
    const quota = 20 + Math.floor(Math.random() * 200);
    let taken = 0;
    let index = 0;
    while (taken < quota && !complete() && !gaveUp) {
      if (index >= ws.frames.length) {
        if (ws.isClosed || frozen.has(node.name)) break;
        // A node frozen under the reader sends nothing: move on after a quiet second.
        const arrived = await Promise.race([ws.arrival().then(() => true), quiet(1000).then(() => false), giveUp]);
        if (arrived === false && state.sendingDone) break;
        continue;
      }
      const frame = ws.frames[index++];
      if (frame.type !== "message") continue;
      if (last && frame.message.id <= last) continue;
      seen.push(frame.message.id);
      last = frame.message.id;
      taken++;
    }
    ws.close();
  }
  await sending;
  await fault;
  const truth = (await history(pick(alive()), target)).map((m) => m.id);
  const position = new Map(truth.map((id, i) => [id, i]));
  let badPages = 0;
  for (const { after, ids } of pages) {
    const from = after === undefined ? 0 : position.get(after) + 1;
    if (JSON.stringify(ids) !== JSON.stringify(truth.slice(from, from + ids.length))) badPages++;
  }
  const outOfOrder = connections.flatMap((c) => c.outOfOrder);
  const counts = `${sends} sends, ${acked.size} acknowledged, ${truth.length} found, ${refused} refused with 503 ` +
    `and retried, ${pages.length} catch-up pages checked (${badPages} wrong), ${connections.length} reader ` +
    `sessions, ${outOfOrder.length} pushes out of order`;
  assert.equal(acked.size, sends, `every message acknowledged once (${counts})`);
  assert.deepEqual([...truth].sort(), [...acked].sort(), "the database holds each acknowledged message once");
  assert.equal(badPages, 0, `every after= page is exactly the history after it (${counts})`);
  assert.deepEqual(outOfOrder, [], "every connection got pushes in id order");
  assert.deepEqual(seen, truth, "the reader saw exactly the history, in order, nothing twice");
  return { counts, target };
}

export async function allThreeListening() {
  for (const node of alive()) {
    await eventually(`${node.name} to hear the others`, async () => (await metric(node, "palaver_cluster_nodes")) === 2, 60_000);
  }
}

/** What every node of this suite gets on top of the defaults (`setUp`'s `nodeEnv`). */
let nodeEnv = () => ({});

/** NATS, the LLM stub and nodes n1–n3. `nodeEnv(name)` adds to a node's environment, at every
 * start (say, to reach NATS or MongoDB through a proxy). */
export async function setUp(options = {}) {
  nodeEnv = options.nodeEnv ?? nodeEnv;
  natsPort = options.natsPort ?? (await freePort());
  await startNats();
  // The LLM the responder asks never answers: replies come from the deadline (or a takeover).
  llm = http.createServer(() => {});
  await new Promise((resolve) => llm.listen(0, "127.0.0.1", resolve));
  llmUrl = `http://127.0.0.1:${llm.address().port}/v1/chat/completions`;
  await Promise.all(["n1", "n2", "n3"].map((name) => startNode(name)));
}

export async function tearDown() {
  await Promise.all(Object.values(nodes).map(kill));
  nats?.kill("SIGKILL");
  llm?.closeAllConnections();
  llm?.close();
  if (!process.exitCode && !process.env.KEEP_CLUSTER_LOGS) rmSync(work, { recursive: true, force: true });
  else console.log(`node logs kept in ${work}`);
}
