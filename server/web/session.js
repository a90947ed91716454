// The stored session: the token and when it expires, kept across reloads of the tab.
//
// Owns sessionStorage's one key. Imports nothing.
//
// The token lives in sessionStorage rather than localStorage: it survives reloading the tab (the
// session is restored without logging in again) but not closing it, so a forgotten tab on a
// shared computer does not leave a valid token on disk for the next person, and every tab is its
// own session (two people, or two accounts, can use two tabs side by side). Script on the page
// could read either kind of storage; the strict CSP is what keeps foreign script off the page.

const TOKEN_KEY = "palaver.session";

export const session = {
  token: null,
  expiresAt: null,
  load() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
      if (saved?.token) Object.assign(this, { token: saved.token, expiresAt: saved.expiresAt ?? null });
    } catch {
      /* unreadable: no session */
    }
    return Boolean(this.token);
  },
  save(token, expiresAt) {
    Object.assign(this, { token, expiresAt });
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ token, expiresAt }));
  },
  clear() {
    this.token = null;
    this.expiresAt = null;
    sessionStorage.removeItem(TOKEN_KEY);
  },
};
