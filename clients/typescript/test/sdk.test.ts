// The SDK against a live Palaver server, through the SDK only (no raw fetch).
// Run: PALAVER_URL=http://127.0.0.1:3000 npm test
//
// Stays well inside the default limits: 16 register/login requests (AUTH_RATE_LIMIT 60/m
// per address) and 12 sends per user (SEND_RATE_LIMIT bursts of 30). The lockout check uses an
// account of its own, so LOGIN_FAILURE_LIMIT (5 at once) locks nobody else out.
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import {
  createPalaverClient,
  type ErrorBody,
  type LoginToken,
  type Message,
  type MessageSent,
  type PalaverClient,
  type Status,
  type User,
} from "../src/index.js";

const BASE_URL = process.env["PALAVER_URL"];
if (!BASE_URL) {
  throw new Error(
    "PALAVER_URL is not set: point it at a running Palaver server, " +
      "e.g. PALAVER_URL=http://127.0.0.1:3000 npm test",
  );
}
const baseUrl: string = BASE_URL;

const PASSWORD = "correct horse battery";

/** Compile-time check that two types are the same (each assignable to the other). */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
function sameType<A, B>(_proof: Same<A, B>): void {}

function uniqueEmail(label: string): string {
  return `sdk-${label}-${Date.now()}-${randomUUID().slice(0, 8)}@example.com`;
}

interface Account {
  id: string;
  email: string;
  client: PalaverClient;
}

/** Registers a new account and logs it in; the returned client carries the token. */
async function signUp(label: string): Promise<Account> {
  const email = uniqueEmail(label);
  const client = createPalaverClient({ baseUrl });
  const registered = await client.POST("/api/auth/register", { body: { email, password: PASSWORD } });
  assert.equal(registered.response.status, 201, JSON.stringify(registered.error));
  assert.ok(registered.data);
  assert.equal(registered.data.message, "User registered successfully");

  const login = await client.POST("/api/auth/login", { body: { email, password: PASSWORD } });
  assert.equal(login.response.status, 200, JSON.stringify(login.error));
  assert.ok(login.data);
  const token: LoginToken = login.data;
  sameType<typeof login.data, LoginToken>(true);
  assert.equal(token.user_id, registered.data.id);
  assert.ok(token.token.length > 0);
  assert.ok(Date.parse(token.expires_at) > Date.now(), `expires_at ${token.expires_at}`);
  client.setToken(token.token);
  return { id: registered.data.id, email, client };
}

async function send(from: Account, to: Account, content: string): Promise<MessageSent> {
  const { data, error, response } = await from.client.POST("/api/chat/send", {
    body: { recipient: to.id, content },
  });
  assert.equal(response.status, 200, JSON.stringify(error));
  assert.ok(data);
  assert.equal(data.message, "Message sent successfully");
  return data;
}

async function history(
  who: Account,
  query: { with: string; after?: string; before?: string; limit?: number },
): Promise<Message[]> {
  const { data, error, response } = await who.client.GET("/api/chat/messages", { params: { query } });
  assert.equal(response.status, 200, JSON.stringify(error));
  assert.ok(data);
  return data;
}

describe("Palaver SDK against a live server", { concurrency: false }, () => {
  let alice: Account;
  let bob: Account;
  /** No token at all. */
  let anonymous: PalaverClient;

  before(async () => {
    alice = await signUp("alice");
    bob = await signUp("bob");
    anonymous = createPalaverClient({ baseUrl });
  });

  test("getMe answers the logged-in user, AVAILABLE at first", async () => {
    const { data, error, response } = await alice.client.GET("/api/users/me");
    assert.equal(response.status, 200, JSON.stringify(error));
    const me: User | undefined = data;
    assert.deepEqual(me, { id: alice.id, email: alice.email, status: "AVAILABLE" });
  });

  test("findUserByEmail finds a user, case-insensitively", async () => {
    const { data, response } = await alice.client.GET("/api/users", {
      params: { query: { email: bob.email.toUpperCase() } },
    });
    assert.equal(response.status, 200);
    assert.deepEqual(data, { id: bob.id, email: bob.email, status: "AVAILABLE" });
  });

  test("the token can be set after login and cleared again", async () => {
    const login = await anonymous.POST("/api/auth/login", { body: { email: bob.email, password: PASSWORD } });
    assert.ok(login.data);
    const client = createPalaverClient({ baseUrl });
    assert.equal(client.getToken(), undefined);
    client.setToken(login.data.token);
    const me = await client.GET("/api/users/me");
    assert.equal(me.response.status, 200);
    assert.equal(me.data?.id, bob.id);
    client.setToken(undefined);
    const after = await client.GET("/api/users/me");
    assert.equal(after.response.status, 401);
  });

  test("sendMessage with an Idempotency-Key: a retry answers the same id and stores nothing new", async () => {
    const key = randomUUID();
    const content = `idempotent ${key}`;
    const sendOnce = () =>
      alice.client.POST("/api/chat/send", {
        params: { header: { "Idempotency-Key": key } },
        body: { recipient: bob.id, content },
      });
    const first = await sendOnce();
    const retry = await sendOnce();
    assert.equal(first.response.status, 200, JSON.stringify(first.error));
    assert.equal(retry.response.status, 200, JSON.stringify(retry.error));
    assert.ok(first.data && retry.data);
    assert.deepEqual(retry.data, first.data);

    const stored = (await history(bob, { with: alice.id })).filter((m) => m.content === content);
    assert.equal(stored.length, 1);
    assert.equal(stored[0]?.id, first.data.id);

    // The same key for a different message is a conflict.
    const reused = await alice.client.POST("/api/chat/send", {
      params: { header: { "Idempotency-Key": key } },
      body: { recipient: bob.id, content: `${content} (edited)` },
    });
    assert.equal(reused.response.status, 409);
    assert.equal(reused.error?.message, "This idempotency key was already used for a different message");
  });

  test("listMessages pages forward with after=<id>", async () => {
    const tag = randomUUID().slice(0, 8);
    const sent: MessageSent[] = [];
    for (const n of [1, 2, 3]) sent.push(await send(alice, bob, `page ${tag} #${n}`));
    const [one, two, three] = sent.map((s) => s.id);
    assert.ok(one && two && three);

    // Without `after`: the newest `limit`, oldest first.
    const newest = await history(alice, { with: bob.id, limit: 3 });
    assert.deepEqual(
      newest.map((m) => m.id),
      [one, two, three],
    );
    const first = newest[0];
    assert.ok(first);
    assert.equal(first.sender, alice.id);
    assert.equal(first.recipient, bob.id);
    assert.equal(first.content, `page ${tag} #1`);
    assert.equal(first.kind, "user");
    assert.match(first.sent_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

    // With `after`: exactly the newer ones, in order; the recipient sees the same.
    assert.deepEqual(
      (await history(alice, { with: bob.id, after: one })).map((m) => m.id),
      [two, three],
    );
    assert.deepEqual(
      (await history(bob, { with: alice.id, after: one, limit: 1 })).map((m) => m.id),
      [two],
    );
    assert.deepEqual(
      (await history(bob, { with: alice.id, after: two, limit: 1 })).map((m) => m.id),
      [three],
    );
    assert.deepEqual(await history(alice, { with: bob.id, after: three }), []);

    // And back with `before`.
    assert.deepEqual(
      (await history(alice, { with: bob.id, before: three, limit: 2 })).map((m) => m.id),
      [one, two],
    );
  });

  test("setStatus BUSY shows in getMe and getUser", async () => {
    const busy: Status = "BUSY";
    const { data, error, response } = await alice.client.PUT("/api/user/status", { body: { status: busy } });
    assert.equal(response.status, 200, JSON.stringify(error));
    assert.deepEqual(data, { message: "User status updated", status: "BUSY" });

    const me = await alice.client.GET("/api/users/me");
    assert.equal(me.data?.status, "BUSY");
    const seen = await bob.client.GET("/api/users/{id}", { params: { path: { id: alice.id } } });
    assert.equal(seen.response.status, 200);
    assert.deepEqual(seen.data, { id: alice.id, email: alice.email, status: "BUSY" });

    if (false as boolean) {
      // @ts-expect-error: the generated Status enum has no "AWAY".
      await alice.client.PUT("/api/user/status", { body: { status: "AWAY" } });
      // @ts-expect-error: `recipient` is required.
      await alice.client.POST("/api/chat/send", { body: { content: "hi" } });
    }
  });

  describe("typed errors: status and exact message", () => {
    test("400: blank content", async () => {
      const { data, error, response } = await alice.client.POST("/api/chat/send", {
        body: { recipient: bob.id, content: "   " },
      });
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 400);
      assert.equal(data, undefined);
      assert.equal(error?.message, "Content must not be empty");
    });

    test("400: limit out of range", async () => {
      const { error, response } = await alice.client.GET("/api/chat/messages", {
        params: { query: { limit: 0 } },
      });
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 400);
      assert.equal(error?.message, "Limit must be between 1 and 200");
    });

    test("400: `with` is not a user id", async () => {
      const { error, response } = await alice.client.GET("/api/chat/messages", {
        params: { query: { with: "not-a-uuid" } },
      });
      assert.equal(response.status, 400);
      assert.equal(error?.message, "With must be a valid user id");
    });

    test("401: no token", async () => {
      const { error, response } = await anonymous.GET("/api/users/me");
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 401);
      assert.equal(error?.message, "Authentication required: send Authorization: Bearer <token>");
    });

    test("401: a forged token", async () => {
      const forged = createPalaverClient({ baseUrl, token: "not.a.token" });
      const { error, response } = await forged.GET("/api/users/me");
      assert.equal(response.status, 401);
      assert.equal(error?.message, "Invalid token");
    });

    test("401: wrong password", async () => {
      const { data, error, response } = await anonymous.POST("/api/auth/login", {
        body: { email: alice.email, password: "wrong password" },
      });
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 401);
      assert.equal(data, undefined);
      assert.equal(error?.message, "Invalid email or password");
    });

    test("404: findUserByEmail for an unknown email", async () => {
      const { error, response } = await alice.client.GET("/api/users", {
        params: { query: { email: uniqueEmail("nobody") } },
      });
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 404);
      assert.deepEqual(error, { message: "User not found" });
    });

    test("404: sendMessage to an unknown recipient", async () => {
      const { error, response } = await alice.client.POST("/api/chat/send", {
        body: { recipient: "01930000-0000-7000-8000-000000000000", content: "anyone?" },
      });
      assert.equal(response.status, 404);
      assert.equal(error?.message, "Recipient not found");
    });

    test("409: registering the same email twice (any case)", async () => {
      const { error, response } = await anonymous.POST("/api/auth/register", {
        body: { email: alice.email.toUpperCase(), password: PASSWORD },
      });
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 409);
      assert.equal(error?.message, "Email is already registered");
    });

    test("429: the 6th wrong password locks the account, with Retry-After", async () => {
      // An account of its own: the lockout must not touch alice or bob.
      const carol = await signUp("carol");
      const wrong = { email: carol.email, password: "not carol's password" };
      for (let attempt = 1; attempt <= 5; attempt++) {
        const { error, response } = await anonymous.POST("/api/auth/login", { body: wrong });
        assert.equal(response.status, 401, `attempt ${attempt}: ${JSON.stringify(error)}`);
        assert.equal(error?.message, "Invalid email or password");
      }

      const { data, error, response } = await anonymous.POST("/api/auth/login", { body: wrong });
      sameType<NonNullable<typeof error>, ErrorBody>(true);
      assert.equal(response.status, 429);
      assert.equal(data, undefined);
      const retryAfter = Number(response.headers.get("Retry-After"));
      assert.ok(Number.isInteger(retryAfter) && retryAfter > 0, `Retry-After: ${retryAfter}`);
      assert.equal(error?.message, `Too many failed logins for this account; try again in ${retryAfter} s`);

      // Locked out means locked out: the right password is refused too, for now.
      const right = await anonymous.POST("/api/auth/login", { body: { email: carol.email, password: PASSWORD } });
      assert.equal(right.response.status, 429);
      assert.match(right.error?.message ?? "", /^Too many failed logins for this account; try again in \d+ s$/);
    });
  });
});
