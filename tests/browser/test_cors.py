"""CORS_ALLOWED_ORIGINS in a real browser: a page served from another origin uses the HTTP API,
/ws and Socket.IO when its origin is allowed, and is kept out of all three when it is not.

The server under test must run with CORS_ALLOWED_ORIGINS=http://127.0.0.1:$CORS_PAGE_PORT; this
test serves its page on that port (allowed) and on a free port (not allowed)."""

import functools
import http.server
import os
import socket
import threading
import unittest
from pathlib import Path

import harness

ALLOWED_PORT = int(os.environ.get("CORS_PAGE_PORT") or 0)
# The Socket.IO browser client from the npm packages tests/ already installs (npm ci in tests/).
SOCKET_IO_JS = Path(__file__).resolve().parent.parent / "node_modules/socket.io-client/dist/socket.io.min.js"

PAGE = b"""<!doctype html><meta charset="utf-8"><title>another origin</title>
<script src="/socket.io.min.js"></script><p>A page on another origin.</p>"""

# Runs in the page: every way a front end reaches the server, each reported as ok or an error.
PROBE = """async ({ base, email, password, token }) => {
  const report = {};
  if (token) {
    report.token = token;
  } else try {
    const login = await fetch(base + "/api/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email, password }),
    });
    const { token } = await login.json();
    const me = await fetch(base + "/api/users/me", { headers: { Authorization: "Bearer " + token } });
    report.http = me.status === 200 ? "ok:" + (await me.json()).email : "status " + me.status;
    report.token = token;
  } catch (err) {
    report.http = "error: " + err.message;
    return report;
  }
  report.websocket = await new Promise((resolve) => {
    const ws = new WebSocket(base.replace(/^http/, "ws") + "/ws?token=" + report.token);
    ws.onopen = () => { ws.close(); resolve("ok"); };
    ws.onerror = () => resolve("error");
  });
  report.socketio = await new Promise((resolve) => {
    const socket = io(base, { auth: { token: report.token }, reconnection: false, forceNew: true });
    const done = (result) => { socket.disconnect(); resolve(result); };
    socket.on("connect", () => {
      // Connected over long-polling; wait for the upgrade to WebSocket too.
      const engine = socket.io.engine;
      if (engine.transport.name === "websocket") return done("ok:websocket");
      engine.once("upgrade", () => done("ok:" + engine.transport.name));
      engine.once("upgradeError", (err) => done("error: upgrade: " + err.message));
    });
    socket.on("connect_error", (err) => resolve("error: " + err.message));
  });
  return report;
}"""


def serve_page(port):
    """A static server for PAGE and the Socket.IO client on 127.0.0.1:port (0: any free port)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/socket.io.min.js":
                body, kind = SOCKET_IO_JS.read_bytes(), "text/javascript"
            else:
                body, kind = PAGE, "text/html"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class CorsTest(harness.BrowserTestCase):
    @classmethod
    def setUpClass(cls):
        if not ALLOWED_PORT:
            raise RuntimeError("set CORS_PAGE_PORT to the port the server's CORS_ALLOWED_ORIGINS allows")
        super().setUpClass()
        cls.allowed = serve_page(ALLOWED_PORT)
        cls.foreign = serve_page(0)

    @classmethod
    def tearDownClass(cls):
        cls.allowed.shutdown()
        cls.foreign.shutdown()
        super().tearDownClass()

    def probe(self, server, token=None):
        """Runs PROBE on a page served by `server`; with `token`, only the sockets are tried."""
        email = harness.unique_email("cors")
        harness.register(email)
        port = server.server_address[1]
        self.page.goto(f"http://127.0.0.1:{port}/")
        args = {"base": harness.BASE_URL, "email": email, "password": harness.PASSWORD, "token": token}
        return email, self.page.evaluate(PROBE, args)

    def test_an_allowed_origin_reaches_the_api_and_both_socket_transports(self):
        email, report = self.probe(self.allowed)
        self.assertEqual(report.get("http"), f"ok:{email}", report)
        self.assertEqual(report.get("websocket"), "ok", report)
        # Long-polling first (CORS applies), then the upgrade to WebSocket (origin check).
        self.assertEqual(report.get("socketio"), "ok:websocket", report)

    def test_another_origin_is_kept_out(self):
        _, report = self.probe(self.foreign)
        # The browser refuses to hand the page the login answer: no token, nothing else tried.
        self.assertTrue(report.get("http", "").startswith("error:"), report)
        self.assertNotIn("token", report)
        # Browsers do not apply CORS to WebSocket handshakes: the server refuses them itself, even
        # when the page has a valid token.
        email = harness.unique_email("cors-token")
        harness.register(email)
        token = harness.login(email)["token"]
        _, report = self.probe(self.foreign, token=token)
        self.assertEqual(report.get("websocket"), "error", report)
        self.assertTrue(report.get("socketio", "").startswith("error"), report)


if __name__ == "__main__":
    unittest.main()
