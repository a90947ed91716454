"""The web chat page at /: three people in a group, each in their own browser context.

Ada creates a group with Bob and Carol by their emails; it appears in their lists at once. Ada
writes; Bob, who has not opened it, gets an unread badge, which the server keeps: it survives a
reload, and clears (and stays cleared) once he reads. Carol opens the group: she sees who wrote
what, and the member list; Ada sees "Seen by" Carol under her message and "… is typing" while Carol
types; Carol's answer reaches both.
"""

import sys
import unittest

from playwright.sync_api import expect

import harness
from test_web_chat import message, register_through_page, send


def group_entry(page, title):
    return page.get_by_test_id("conversation").and_(page.locator('[data-kind="group"]')).filter(has_text=title)


class WebGroupTest(harness.BrowserTestCase):
    def setUp(self):
        super().setUp()  # self.page: Ada
        self.others = {}
        for name in ("bob", "carol"):
            context = self.browser.new_context(viewport={"width": 1024, "height": 800})
            self.addCleanup(context.close)
            context.set_default_timeout(harness.TIMEOUT_MS)
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda err, errors=errors: errors.append(str(err)))
            page.on(
                "console",
                lambda msg, errors=errors: msg.type == "error" and errors.append(msg.text),
            )
            self.others[name] = (page, errors)

    def save_failure_artifacts(self):
        super().save_failure_artifacts()
        for name, (page, errors) in self.others.items():
            path = harness.ARTIFACTS / f"{self.id()}.{name}.png"
            try:
                page.screenshot(path=path, full_page=True)
                print(f"screenshot: {path.resolve()}", file=sys.stderr)
            except Exception as err:
                print(f"{name}'s screenshot failed: {err}", file=sys.stderr)
            for line in errors:
                print(f"{name}'s page error: {line}", file=sys.stderr)

    def test_three_people_in_a_group(self):
        ada = self.page
        bob, bob_errors = self.others["bob"]
        carol, carol_errors = self.others["carol"]
        emails = {name: harness.unique_email(name) for name in ("ada", "bob", "carol")}
        for page, name in ((ada, "ada"), (bob, "bob"), (carol, "carol")):
            register_through_page(page, emails[name])

        # Ada creates the group by emails; it opens, with its members.
        ada.get_by_test_id("new-group").click()
        ada.get_by_test_id("group-title").fill("Lunch crew")
        ada.get_by_test_id("group-members").fill(f"{emails['bob']}, {emails['carol']}")
        ada.get_by_test_id("group-create").click()
        expect(ada.get_by_test_id("peer-email")).to_have_text("Lunch crew")
        expect(ada.get_by_test_id("member")).to_have_count(3)
        expect(ada.get_by_test_id("member-list")).to_contain_text(emails["carol"])
        expect(ada.get_by_test_id("member-list")).to_contain_text("owner")

        # It is in Bob's and Carol's lists at once.
        for page in (bob, carol):
            expect(group_entry(page, "Lunch crew")).to_have_count(1)

        question = "Who's in for lunch?"
        send(ada, question)

        # Bob has not opened it: a badge, kept by the server across a reload.
        bob_group = group_entry(bob, "Lunch crew")
        expect(bob_group.get_by_test_id("unread")).to_have_text("1")

        # Carol opens it: the message, with who wrote it; Ada sees that Carol has seen it.
        group_entry(carol, "Lunch crew").click()
        expect(carol.get_by_test_id("peer-email")).to_have_text("Lunch crew")
        expect(carol.get_by_test_id("member")).to_have_count(3)
        expect(message(carol, question)).to_have_attribute("data-sender", "peer")
        expect(message(carol, question).get_by_test_id("message-sender")).to_have_text(emails["ada"])
        expect(message(ada, question).get_by_test_id("seen")).to_have_text(f"Seen by {emails['carol']}")

        # Carol types: Ada sees it; then Carol's answer reaches Ada and Bob.
        carol.get_by_test_id("message-input").press_sequentially("Me", delay=20)
        expect(ada.get_by_test_id("typing")).to_have_text(f"{emails['carol']} is typing…")
        carol.get_by_test_id("message-input").fill("")
        answer = "Me! Noon at the usual place?"
        send(carol, answer)
        expect(message(ada, answer)).to_have_attribute("data-sender", "peer")
        expect(ada.get_by_test_id("typing")).to_be_hidden()
        expect(bob_group.get_by_test_id("unread")).to_have_text("2")

        bob.reload()
        expect(bob.get_by_test_id("connection")).to_have_text("Live")
        expect(group_entry(bob, "Lunch crew").get_by_test_id("unread")).to_have_text("2")

        # Bob reads: the badge goes, also after another reload; Carol sees Bob has seen hers.
        group_entry(bob, "Lunch crew").click()
        expect(message(bob, answer)).to_be_visible()
        expect(group_entry(bob, "Lunch crew").get_by_test_id("unread")).to_have_count(0)
        expect(message(carol, answer).get_by_test_id("seen")).to_contain_text(emails["bob"])
        bob.reload()
        expect(bob.get_by_test_id("connection")).to_have_text("Live")
        expect(group_entry(bob, "Lunch crew")).to_have_count(1)
        expect(group_entry(bob, "Lunch crew").get_by_test_id("unread")).to_have_count(0)

        self.assertEqual(self.page_errors, [], "errors on Ada's page")
        self.assertEqual(bob_errors, [], "errors on Bob's page")
        self.assertEqual(carol_errors, [], "errors on Carol's page")


if __name__ == "__main__":
    unittest.main()
