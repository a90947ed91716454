"""The web page's Auto-reply panel, a streamed auto-reply, and a moderator's refusal.

Bob opens the Auto-reply panel: it lists the server's responders (not its moderators), with his
current one chosen and a form built from its `user_settings`. He picks the away-message plugin,
writes his own message and saves; the choice survives closing the panel, and Alice's next message
(Bob is BUSY) gets his words back. He switches to the LLM responder with a persona: the stub LLM
streams its answer, and both pages show it growing, then replaced by the stored auto-reply. Alice
writes a word the operator's moderator refuses: her message is marked refused with the
moderator's reason, nothing reaches Bob or the history, and Edit puts her words back.

The server must run with:
  PLUGINS_DIR             holding away_message.wasm (its committed manifest) and word_filter.wasm
                          as `word-reject` (mode reject, words "forbidden")
  MODERATION_PLUGINS      word-reject
  LLM_API_URL             http://127.0.0.1:$LLM_STUB_PORT/v1/chat/completions
and the test gets LLM_STUB_PORT: it serves the stub LLM there while it runs (.ci/run does this).
"""

import json
import os
import re
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect

import harness
from test_web_chat import UUID, message, messages, register_through_page, send

LLM_STUB_PORT = os.environ.get("LLM_STUB_PORT")
FIRST_CHUNK = "Bob is in a meeting"
REST = " until three; he will call you after."
PLUGIN_WAIT_S = 120  # a debug server compiles the PLUGINS_DIR plugins after it listens


class StreamingLlm:
    """An OpenAI-compatible chat-completion endpoint that streams (SSE): the first chunk at once,
    the rest only when the test says so, so the page is seen mid-answer without any timing."""

    def __init__(self, port):
        self.requests = []
        self.asked = threading.Event()
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.chunk(FIRST_CHUNK)
                stub.asked.set()
                # Well inside the responder's 10 s deadline, in case the test died first.
                stub.release.wait(timeout=8)
                self.chunk(REST)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def chunk(self, text):
                event = {"choices": [{"index": 0, "delta": {"content": text}}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for_plugins(token, names):
    """GET /api/plugins until every plugin in `names` is ready (they load in the background)."""
    deadline = time.monotonic() + PLUGIN_WAIT_S
    while True:
        status, plugins = harness.api("GET", "/api/plugins", token=token)
        ready = {p["name"] for p in plugins if p.get("state") == "ready"} if status == 200 else set()
        if names <= ready:
            return plugins
        if time.monotonic() > deadline:
            raise AssertionError(f"plugins {sorted(names - ready)} not ready: {status} {plugins!r}")
        time.sleep(0.25)


class WebAutoReplyTest(harness.BrowserTestCase):
    @classmethod
    def setUpClass(cls):
        if not LLM_STUB_PORT:
            if os.environ.get("CI"):
                raise RuntimeError("set LLM_STUB_PORT (and the server's plugins): see this file's docstring")
            raise unittest.SkipTest("LLM_STUB_PORT is not set: see this file's docstring")
        super().setUpClass()

    def setUp(self):
        super().setUp()  # self.page: Alice, desktop-sized
        self.llm = StreamingLlm(LLM_STUB_PORT)
        self.addCleanup(self.llm.close)
        context = self.browser.new_context(viewport={"width": 1024, "height": 800})
        self.addCleanup(context.close)
        context.set_default_timeout(harness.TIMEOUT_MS)
        self.bob = context.new_page()
        self.bob.on("pageerror", lambda err: self.page_errors.append(f"bob: {err}"))

    def test_choose_a_responder_see_it_stream_and_see_a_refusal(self):
        alice, bob = self.page, self.bob
        alice_email, bob_email = harness.unique_email("alice"), harness.unique_email("bob")
        register_through_page(alice, alice_email)
        register_through_page(bob, bob_email)
        bob_token = harness.login(bob_email)["token"]
        alice_token = harness.login(alice_email)["token"]
        wait_for_plugins(bob_token, {"away-message", "word-reject", "llm-responder"})

        # The panel: responders only, today's choice (the default) checked, its settings as a form.
        bob.get_by_test_id("autoreply-open").click()
        panel = bob.get_by_test_id("autoreply-panel")
        expect(panel).to_be_visible()
        options = panel.get_by_test_id("responder-option")
        expect(options.and_(bob.locator('[data-name="away-message"]'))).to_have_count(1)
        expect(options.and_(bob.locator('[data-name="llm-responder"]'))).to_contain_text(
            "OpenAI-compatible"
        )
        expect(options.and_(bob.locator('[data-name="word-reject"]'))).to_have_count(0)
        expect(panel.locator("#responder-llm-responder")).to_be_checked()
        expect(panel.get_by_test_id("setting-persona")).to_be_visible()
        expect(panel.get_by_test_id("setting-language")).to_be_visible()

        # Bob picks the away message and writes his own.
        away = "Gone fishing until Monday."
        panel.locator("#responder-away-message").check()
        expect(panel.get_by_test_id("setting-persona")).to_have_count(0)
        panel.get_by_test_id("setting-message").fill(away)
        panel.get_by_test_id("autoreply-save").click()
        expect(panel.get_by_test_id("autoreply-status")).to_contain_text("Saved")
        status, saved = harness.api("GET", "/api/users/me/responder", token=bob_token)
        self.assertEqual((status, saved), (200, {"plugin": "away-message", "config": {"message": away}}))

        # Closed and opened again: the panel shows what the server keeps.
        panel.get_by_test_id("autoreply-close").click()
        expect(panel).to_be_hidden()
        bob.get_by_test_id("autoreply-open").click()
        expect(panel.locator("#responder-away-message")).to_be_checked()
        expect(panel.get_by_test_id("setting-message")).to_have_value(away)
        panel.get_by_test_id("autoreply-close").click()

        # Bob is BUSY: Alice's message gets his own words back.
        bob.get_by_test_id("status-toggle").click()
        expect(bob.get_by_test_id("status-toggle")).to_have_attribute("data-status", "BUSY")
        alice.get_by_test_id("search-input").fill(bob_email)
        alice.get_by_test_id("search-button").click()
        expect(alice.get_by_test_id("peer-status")).to_have_attribute("data-status", "BUSY")
        send(alice, "Are you around?")
        expect(message(alice, away)).to_have_attribute("data-kind", "auto_reply")

        # Bob switches to the LLM responder, with a persona.
        persona = "Short and friendly. Never promise a time."
        bob.get_by_test_id("autoreply-open").click()
        panel.locator("#responder-llm-responder").check()
        panel.get_by_test_id("setting-persona").fill(persona)
        panel.get_by_test_id("autoreply-save").click()
        expect(panel.get_by_test_id("autoreply-status")).to_contain_text("Saved")
        panel.get_by_test_id("autoreply-close").click()
        bob.get_by_test_id("conversation").filter(has_text=alice_email).click()

        # Alice asks; the model has written its first words and waits: both pages show them.
        question = "Lunch tomorrow?"
        asked = send(alice, question)
        question_id = asked.get_attribute("data-id")
        self.assertTrue(self.llm.asked.wait(timeout=10), "the LLM was never asked")
        self.assertIn(persona, json.dumps(self.llm.requests[-1]))
        self.assertTrue(self.llm.requests[-1].get("stream"), "the responder did not ask for a stream")
        for page, side in ((alice, "theirs"), (bob, "mine")):
            draft = page.get_by_test_id("reply-draft")
            expect(draft).to_have_count(1)
            expect(draft).to_have_attribute("data-reply-to", question_id)
            expect(draft.get_by_test_id("message-text")).to_have_text(FIRST_CHUNK)
            expect(draft).to_have_class(re.compile(rf"\bmsg {side} auto draft\b"))
            expect(draft).to_contain_text("Auto-reply")

        # The model finishes: the stored auto-reply takes the growing text's place, on both pages.
        self.llm.release.set()
        for page in (alice, bob):
            final = message(page, FIRST_CHUNK + REST)
            expect(final).to_have_attribute("data-kind", "auto_reply")
            expect(final).to_have_attribute("data-id", UUID)
            expect(page.get_by_test_id("reply-draft")).to_have_count(0)

        # A refused word: marked refused with the moderator's reason; nothing stored or pushed.
        refused_text = "This plan is forbidden, sorry"
        box = alice.get_by_test_id("message-input")
        box.fill(refused_text)
        box.press("Enter")
        refused = messages(alice).filter(has_text=refused_text)
        expect(refused).to_have_attribute("data-state", "refused")
        expect(refused.get_by_test_id("send-error")).to_have_text(
            'Your message contains the word "forbidden"'
        )
        expect(refused.get_by_role("button", name="Retry")).to_be_hidden()
        status, history = harness.api(
            "GET", f"/api/chat/messages?with={saved_id(bob_token)}&limit=50", token=alice_token
        )
        self.assertEqual(status, 200)
        self.assertNotIn(refused_text, [m["content"] for m in history])
        expect(messages(bob).filter(has_text=refused_text)).to_have_count(0)

        # Edit: the words go back to the composer, the refused bubble goes.
        refused.get_by_role("button", name="Edit").click()
        expect(box).to_have_value(refused_text)
        expect(messages(alice).filter(has_text=refused_text)).to_have_count(0)
        self.assertEqual(self.page_errors, [])


def saved_id(token):
    status, me = harness.api("GET", "/api/users/me", token=token)
    assert status == 200, (status, me)
    return me["id"]


if __name__ == "__main__":
    unittest.main()
