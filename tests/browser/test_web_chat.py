"""The web chat page at /: two people, each in their own browser context, chat live.

Alice uses a desktop-sized window, Bob a phone-sized one. Both register through the page; Alice
finds Bob by email and they exchange messages that arrive without reloading; Bob turns BUSY and
Alice's next message gets an auto-reply, marked as one; Bob writes while Alice is offline and she
gets it when she is back (the socket is down meanwhile, so only the page's ?after= catch-up can
bring it); after a reload Alice sees the whole conversation again, once each, as the server has
it.
"""

import re
import sys
import unittest

from playwright.sync_api import expect

import harness

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PHONE = {"width": 390, "height": 844}


def messages(page):
    return page.get_by_test_id("message-list").get_by_test_id("message")


def message(page, text):
    """The bubble whose text is exactly `text`."""
    return messages(page).filter(
        has=page.get_by_test_id("message-text").get_by_text(text, exact=True)
    )


def register_through_page(page, email):
    page.goto(harness.BASE_URL + "/")
    page.get_by_test_id("login-email").fill(email)
    page.get_by_test_id("login-password").fill(harness.PASSWORD)
    page.get_by_test_id("register-button").click()
    expect(page.get_by_test_id("connection")).to_have_text("Live")
    expect(page.get_by_test_id("status-toggle")).to_have_attribute("data-status", "AVAILABLE")


def send(page, text, key="Enter"):
    box = page.get_by_test_id("message-input")
    box.fill(text)
    if key == "Enter":
        box.press("Enter")
    else:
        page.get_by_test_id("send-button").click()
    expect(box).to_have_value("")
    bubble = message(page, text)
    # Confirmed by the server: it has the stored message's id, and is no longer pending.
    expect(bubble).to_have_attribute("data-id", UUID)
    expect(bubble).to_have_attribute("data-state", "sent")
    expect(bubble).to_have_attribute("data-sender", "me")
    return bubble


class WebChatTest(harness.BrowserTestCase):
    def setUp(self):
        super().setUp()  # self.page: Alice, desktop-sized
        self.bob_context = self.browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
        self.addCleanup(self.bob_context.close)
        self.bob_context.set_default_timeout(harness.TIMEOUT_MS)
        self.bob_page = self.bob_context.new_page()
        self.bob_errors = []
        self.bob_page.on("pageerror", lambda err: self.bob_errors.append(str(err)))
        self.bob_page.on(
            "console",
            lambda msg: msg.type == "error"
            and self.bob_errors.append(f"{msg.text} ({msg.location.get('url')})"),
        )

    def save_failure_artifacts(self):
        super().save_failure_artifacts()  # Alice's page
        path = harness.ARTIFACTS / f"{self.id()}.bob.png"
        try:
            self.bob_page.screenshot(path=path, full_page=True)
            print(f"screenshot: {path.resolve()}", file=sys.stderr)
        except Exception as err:
            print(f"bob's screenshot failed: {err}", file=sys.stderr)
        for line in self.bob_errors:
            print(f"bob's page error: {line}", file=sys.stderr)

    def test_two_people_chat_live(self):
        alice, bob = self.page, self.bob_page
        alice_email, bob_email = harness.unique_email("alice"), harness.unique_email("bob")
        register_through_page(alice, alice_email)
        register_through_page(bob, bob_email)

        # Alice finds Bob and writes; Bob's list shows the new conversation without a reload.
        alice.get_by_test_id("search-input").fill(bob_email)
        alice.get_by_test_id("search-button").click()
        expect(alice.get_by_test_id("peer-email")).to_have_text(bob_email)
        expect(alice.get_by_test_id("peer-status")).to_have_attribute("data-status", "AVAILABLE")
        hello = "Hi Bob! Lunch at noon?"
        send(alice, hello)

        bob.get_by_test_id("conversation").filter(has_text=alice_email).click()
        expect(bob.get_by_test_id("peer-email")).to_have_text(alice_email)
        expect(message(bob, hello)).to_have_attribute("data-sender", "peer")

        reply = "Sure,\nsee you there."  # a newline survives the round trip
        send(bob, reply, key="click")
        expect(message(alice, reply)).to_have_attribute("data-sender", "peer")

        # Bob turns BUSY; Alice sees it live, and her next message gets an auto-reply.
        bob.get_by_test_id("status-toggle").click()
        expect(bob.get_by_test_id("status-toggle")).to_have_attribute("data-status", "BUSY")
        expect(alice.get_by_test_id("peer-status")).to_have_attribute("data-status", "BUSY")
        question = "Are you still coming?"
        send(alice, question)
        auto = messages(alice).and_(alice.locator('[data-kind="auto_reply"]'))
        expect(auto).to_have_count(1)
        expect(auto).to_have_attribute("data-sender", "peer")
        expect(auto).to_have_attribute("data-id", UUID)
        expect(auto).to_contain_text("Auto-reply")
        expect(messages(alice).last).to_have_attribute("data-kind", "auto_reply")
        # Bob's devices get the auto-reply too, marked the same way.
        expect(messages(bob).and_(bob.locator('[data-kind="auto_reply"]'))).to_have_count(1)

        # Alice goes offline; Bob writes; back online, her page catches up with ?after=.
        catch_ups = []
        alice.on("request", lambda r: "after=" in r.url and catch_ups.append(r.url))
        self.context.set_offline(True)
        expect(alice.get_by_test_id("connection")).to_have_text("Offline")
        missed = "Running late, sorry!"
        send(bob, missed)
        self.context.set_offline(False)
        expect(message(alice, missed)).to_have_attribute("data-sender", "peer")
        expect(alice.get_by_test_id("connection")).to_have_text("Live")
        self.assertTrue(catch_ups, "the message arrived without a catch-up request")

        # After a reload, the conversation is back as the server has it: all of it, once each.
        expected = self.server_conversation(bob_email, alice_email)
        self.assertEqual(len(expected), 5, expected)
        alice.reload()
        expect(alice.get_by_test_id("connection")).to_have_text("Live")
        expect(alice.get_by_test_id("peer-email")).to_have_text(bob_email)
        expect(messages(alice)).to_have_count(len(expected))
        expect(alice.get_by_test_id("message-list").get_by_test_id("message-text")).to_have_text(
            [m["content"] for m in expected]
        )
        shown = [
            (node.get_attribute("data-id"), node.get_attribute("data-kind"))
            for node in messages(alice).all()
        ]
        self.assertEqual(shown, [(m["id"], m["kind"]) for m in expected])

        self.assertEqual(self.page_errors, [], "errors on Alice's page")
        self.assertEqual(self.bob_errors, [], "errors on Bob's page")

    def server_conversation(self, email, peer_email):
        token = harness.login(email)["token"]
        peer = harness.find_user(peer_email, token)["id"]
        status, body = harness.api("GET", f"/api/chat/messages?with={peer}&limit=50", token=token)
        self.assertEqual(status, 200, body)
        return body


if __name__ == "__main__":
    unittest.main()
