"""Shared helpers for the browser tests: Playwright (sync API) on Debian's chromium, stdlib unittest.

Environment:
  PALAVER_URL   base URL of a running server, e.g. http://127.0.0.1:3000 (required)
  CHROMIUM      browser binary (default /usr/bin/chromium); Playwright's own browsers are never used
  CI_ARTIFACTS  where failure screenshots go (default ./ci-artifacts)
"""

import functools
import json
import os
import sys
import unittest
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

BASE_URL = os.environ.get("PALAVER_URL", "").rstrip("/")
CHROMIUM = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CI_ARTIFACTS") or "ci-artifacts")
PASSWORD = "correct horse battery staple"

# Short enough that a broken page fails a test well inside 30 s, long enough for a slow CI box.
TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


def unique_email(label):
    """A fresh address per call, so runs against the same server never collide."""
    return f"{label}-{uuid.uuid4().hex[:12]}@example.com"


def api(method, path, body=None, token=None):
    """One request to the server. Returns (status, body parsed as JSON, or the raw text);
    error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE_URL + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def _expect_status(expected, what, status, body):
    if status != expected:
        raise AssertionError(f"{what}: expected {expected}, got {status} {body!r}")
    return body


def register(email, password=PASSWORD):
    """POST /api/auth/register -> {"message", "id"}."""
    status, body = api("POST", "/api/auth/register", {"email": email, "password": password})
    return _expect_status(201, f"register {email}", status, body)


def login(email, password=PASSWORD):
    """POST /api/auth/login -> {"token", "user_id", "expires_at"}."""
    status, body = api("POST", "/api/auth/login", {"email": email, "password": password})
    return _expect_status(200, f"login {email}", status, body)


def find_user(email, token):
    """GET /api/users?email= -> {"id", "email", "status"}."""
    status, body = api("GET", "/api/users?" + urllib.parse.urlencode({"email": email}), token=token)
    return _expect_status(200, f"find user {email}", status, body)


def launch_browser(playwright):
    # --no-sandbox: CI runs as root, where Chromium refuses to start with its sandbox.
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def _screenshot_on_failure(test):
    @functools.wraps(test)
    def wrapper(self, *args, **kwargs):
        try:
            return test(self, *args, **kwargs)
        except unittest.SkipTest:
            raise
        except Exception:
            self.save_failure_artifacts()
            raise

    return wrapper


class BrowserTestCase(unittest.TestCase):
    """One browser per class, a fresh context (cookies, storage) and `self.page` per test.
    A test that fails leaves a full-page screenshot in ARTIFACTS."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Wrapping the test methods themselves takes the screenshot while the page is still open,
        # without reaching into unittest's private outcome state from tearDown.
        for name, attr in list(vars(cls).items()):
            if name.startswith("test") and callable(attr):
                setattr(cls, name, _screenshot_on_failure(attr))

    @classmethod
    def setUpClass(cls):
        if not BASE_URL:
            raise RuntimeError("set PALAVER_URL to a running server's base URL, e.g. http://127.0.0.1:3000")
        cls._playwright = sync_playwright().start()
        try:
            cls.browser = launch_browser(cls._playwright)
        except Exception:
            cls._playwright.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls._playwright.stop()

    def setUp(self):
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        self.addCleanup(self.context.close)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.page_errors = []
        self.page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        self.page.on(
            "console",
            lambda msg: msg.type == "error"
            and self.page_errors.append(f"{msg.text} ({msg.location.get('url')})"),
        )

    def save_failure_artifacts(self):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.id()}.png"
        try:
            self.page.screenshot(path=path, full_page=True)
            print(f"\nscreenshot: {path.resolve()}", file=sys.stderr)
        except Exception as err:
            print(f"\nscreenshot failed: {err}", file=sys.stderr)
        for line in self.page_errors:
            print(f"page error: {line}", file=sys.stderr)
