// Palaver's TypeScript SDK: openapi-fetch typed by the generated `paths`, plus a bearer-token
// middleware. `schema.d.ts` is generated (`npm run generate`); this file is the only hand-written one.
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type { components, operations, paths } from "./schema.js";

type Schemas = components["schemas"];

/** A stored message, as `listMessages` returns it. */
export type Message = Schemas["MessageView"];
/** `"user"`, or `"auto_reply"` when the responder answered for a BUSY user. */
export type MessageKind = Schemas["MessageKind"];
/** A user's public view (`getMe`, `getUser`, `findUserByEmail`). */
export type User = Schemas["UserView"];
/** `"AVAILABLE"` or `"BUSY"`. */
export type Status = Schemas["Status"];
/** The body of every error answer: `{ message }`. */
export type ErrorBody = Schemas["ErrorBody"];
export type Credentials = Schemas["CredentialsBody"];
export type LoginToken = Schemas["LoginToken"];
export type Registered = Schemas["Registered"];
export type SendMessageBody = Schemas["SendMessageBody"];
export type MessageSent = Schemas["MessageSent"];
export type StatusUpdated = Schemas["StatusUpdated"];
export type PasswordChanged = Schemas["PasswordChanged"];
export type Plugin = Schemas["PluginView"];
export type Done = Schemas["Done"];

export interface PalaverClientOptions {
  /** The server's origin, e.g. `http://127.0.0.1:3000` (no `/api`). */
  baseUrl: string;
  /** A token from `login`; sent as `Authorization: Bearer <token>`. */
  token?: string;
}

export interface PalaverClient extends Client<paths> {
  /** Use this token from the next request on (`undefined`: send none). */
  setToken(token: string | undefined): void;
  /** The token in use, if any. */
  getToken(): string | undefined;
}

export function createPalaverClient(options: PalaverClientOptions): PalaverClient {
  let token = options.token;
  const client = createClient<paths>({ baseUrl: options.baseUrl });
  client.use({
    onRequest({ request }) {
      // A per-call `Authorization` header wins over the client's token.
      if (token !== undefined && !request.headers.has("Authorization")) {
        request.headers.set("Authorization", `Bearer ${token}`);
      }
      return request;
    },
  });
  return Object.assign(client, {
    setToken(next: string | undefined) {
      token = next;
    },
    getToken() {
      return token;
    },
  });
}
