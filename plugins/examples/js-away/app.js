// A Palaver responder plugin in JavaScript: the same away message as the Rust example
// (plugins/examples/away-message) and the Python one (plugins/examples/py-away).
//
// componentize-js turns this module into a WebAssembly component for the world `responder` in
// plugins/wit/responder.wit. How WIT maps to JavaScript here:
//   - the export `respond` is this module's exported function `respond`;
//   - WIT names become camelCase: `recipient-email` is `request.recipientEmail`;
//   - `list<tuple<string, string>>` is an array of [key, value] arrays;
//   - `result<option<string>, string>`: return a string for ok(some(text)), undefined for
//     ok(none) (the host sends its standard message); `throw "reason"` (a string) for
//     err(reason), which the server logs. Throwing anything else, an Error object included,
//     traps the call instead: the sender still gets the standard message, but the log shows
//     only a wasm backtrace;
//   - an enum (`log-level`) is its case name as a string: "debug", "info", "warn", "error".
//
// The build (`npm run build`) disables every WASI feature componentize-js would otherwise wire
// in (stdio, random, clocks, http, fetch-event): the component then imports nothing but
// palaver:responder/host, and console.log goes nowhere, so write to the server log with `log`.
// (Without `stdio` in the list console.log reaches the server log too, at the price of
// importing a dozen WASI interfaces, which the host links with an empty context.)
// Leave `http` and `fetch-event` disabled whatever else you change: the host does not link
// wasi:http, and a component that imports it does not load. Reach the network with the host's
// `httpFetch` instead (the manifest's allowed_hosts, narrowed by the operator's).
//
// Config keys: `message`, the reply. `{email}` in it becomes the busy user's email address and
// `{name}` the part of it before the '@'.

// The host's imports, named with the package version, exactly as in the WIT package.
import { log } from "palaver:responder/host@0.2.0";

const DEFAULT_MESSAGE = "{email} is away right now; they'll read your message soon.";

export function respond(request) {
  const settings = new Map(request.config);
  const template = settings.get("message") ?? DEFAULT_MESSAGE;
  const email = request.recipientEmail;
  const at = email.indexOf("@");
  const name = at < 0 ? email : email.slice(0, at);
  // One pass with a function: a "{name}" inside the email is not replaced again, and a `$&`
  // in it is not a replacement pattern.
  const reply = template.replace(/\{(email|name)\}/g, (_, key) => (key === "email" ? email : name));
  log("info", `answering for ${email} (${request.history.length} messages of history)`);
  return reply;
}
