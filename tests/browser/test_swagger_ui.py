"""Swagger UI at /docs: authorize with a login token, then send a message with "Try it out"."""

import json
import re
import unittest

from playwright.sync_api import expect

import harness

CONTENT = "hello from Swagger UI"


class SwaggerUITest(harness.BrowserTestCase):
    def test_send_message_with_try_it_out(self):
        alice_email, bob_email = harness.unique_email("alice"), harness.unique_email("bob")
        harness.register(alice_email)
        harness.register(bob_email)
        alice = harness.login(alice_email)
        bob_id = harness.find_user(bob_email, alice["token"])["id"]

        page = self.page
        page.goto(f"{harness.BASE_URL}/docs")

        page.get_by_role("button", name="Authorize", exact=True).click()
        # The dialog has one form per security scheme (BearerAuth and the x-auth-token apiKey);
        # pick the bearer one by its type rather than by the scheme's name.
        bearer = page.locator(".auth-container").filter(has_text="(http, Bearer)")
        bearer.get_by_role("textbox").fill(alice["token"])
        # Swagger UI gives the dialog's Authorize button aria-label "Apply credentials".
        bearer.get_by_role("button", name="Apply credentials").click()
        expect(bearer.get_by_text("Authorized", exact=True)).to_be_visible()
        bearer.get_by_role("button", name="Close").click()
        expect(page.locator(".dialog-ux")).to_have_count(0)

        # Found by path, not by element id: ids derive from operationIds, which are changing.
        # data-path holds the raw path; the visible text has <wbr> between segments.
        send = page.locator(".opblock-post").filter(
            has=page.locator('.opblock-summary-path[data-path="/api/chat/send"]')
        )
        send.locator(".opblock-summary-path").click()
        send.get_by_role("button", name="Try it out").click()
        # Replace the whole example body: it carries a placeholder "sender", which the server
        # rejects (403) when it is not the caller.
        send.locator("textarea.body-param__text").fill(
            json.dumps({"recipient": bob_id, "content": CONTENT})
        )
        send.get_by_role("button", name="Execute").click()

        # The live answer; the documented responses below it use the same row classes.
        live = send.locator(".live-responses-table .response")
        code = live.locator(".response-col_status")
        # Wait for any code, then compare once: a wrong code is final, and the message then
        # shows the response body instead of retrying for the whole timeout.
        expect(code).to_have_text(re.compile(r"^\s*\d{3}\s*$"))
        self.assertEqual(code.inner_text().strip(), "200", live.inner_text())
        expect(live.locator(".response-col_description")).to_contain_text(
            '"Message sent successfully"'
        )

        status, messages = harness.api(
            "GET", f"/api/chat/messages?with={bob_id}", token=alice["token"]
        )
        self.assertEqual(status, 200, messages)
        sent = [
            m for m in messages
            if (m["sender"], m["recipient"], m["content"]) == (alice["user_id"], bob_id, CONTENT)
        ]
        self.assertEqual(len(sent), 1, messages)


if __name__ == "__main__":
    unittest.main()
