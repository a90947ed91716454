//! The real `palaver` binary as a child process, for what needs a process of its own: being
//! killed with SIGKILL, or having its threads and memory counted from `/proc`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{StoreKind, TEST_JWT_SECRET};

pub const BINARY: &str = env!("CARGO_BIN_EXE_palaver");

pub struct Server {
    pub child: Child,
    pub base: String,
    /// `http://host:port` of `/metrics`, when started with `METRICS_ADDR`.
    pub metrics: Option<String>,
    /// The server's log lines after the start-up announcement, ANSI colours removed.
    pub log: std::sync::mpsc::Receiver<String>,
}

/// A registered user of a server process: id and token.
pub struct Account {
    pub id: String,
    pub token: String,
}

/// Where a server keeps its data: a directory, and on MongoDB a database too.
pub struct Storage {
    pub dir: tempfile::TempDir,
    pub mongodb_uri: Option<String>,
}

impl Storage {
    pub fn new() -> Self {
        let mongodb_uri = match crate::STORE {
            StoreKind::Sqlite => None,
            StoreKind::Mongo => Some(format!(
                "{}{}",
                crate::helpers::mongodb_uri_or_skip(),
                palaver_test_support::fresh_database_name()
            )),
        };
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            mongodb_uri,
        }
    }
}

impl Server {
    /// Starts the binary on a free port with the test secret, plus `env`; returns once it
    /// announces its address.
    pub fn start(storage: &Storage, env: &[(&str, &str)]) -> Self {
        Self::launch(storage, env, Some(TEST_JWT_SECRET))
    }

    /// As a newcomer starts it: no `JWT_SECRET`, so the server keeps its own in `DATA_DIR`;
    /// plus `env`.
    pub fn start_without_secret(storage: &Storage, env: &[(&str, &str)]) -> Self {
        Self::launch(storage, env, None)
    }

    fn launch(storage: &Storage, env: &[(&str, &str)], secret: Option<&str>) -> Self {
        let mut command = Command::new(BINARY);
        command
            .env_clear()
            .env("DATA_DIR", storage.dir.path())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .current_dir(storage.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(uri) = &storage.mongodb_uri {
            command.env("MONGODB_URI", uri);
        }
        if let Some(secret) = secret {
            command.env("JWT_SECRET", secret);
        }
        let mut child = command.spawn().expect("spawn palaver");
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keeps draining the log so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut metrics = None;
        let address = loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("palaver announces its address");
            let plain = strip_ansi(&line);
            let Some(rest) = plain.split("address=").nth(1) else {
                continue;
            };
            let address = rest.split_whitespace().next().expect("address").to_owned();
            if plain.contains("metrics at /metrics") {
                metrics = Some(format!("http://{address}"));
            } else if plain.contains("palaver is listening") {
                break address;
            }
        };
        Self {
            child,
            base: format!("http://{address}"),
            metrics,
            log: lines_rx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers `label@example.com` and logs in (each server has its own database).
    pub async fn account(&self, client: &reqwest::Client, label: &str) -> Account {
        let credentials = serde_json::json!({
            "email": format!("{label}@example.com"),
            "password": crate::helpers::PASSWORD,
        });
        let registered: serde_json::Value = client
            .post(self.url("/api/auth/register"))
            .json(&credentials)
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("json");
        let login: serde_json::Value = client
            .post(self.url("/api/auth/login"))
            .json(&credentials)
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        Account {
            id: registered["id"].as_str().expect("id").to_owned(),
            token: login["token"].as_str().expect("token").to_owned(),
        }
    }

    /// Every message `user` can see, oldest first, paged through as a client catches up.
    pub async fn everything(
        &self,
        client: &reqwest::Client,
        user: &Account,
    ) -> Vec<serde_json::Value> {
        let mut all: Vec<serde_json::Value> = Vec::new();
        loop {
            // Catch-up from the smallest id reads the whole history, oldest first.
            let after = all
                .last()
                .and_then(|m| m["id"].as_str())
                .unwrap_or("00000000-0000-0000-0000-000000000000");
            let page: Vec<serde_json::Value> = client
                .get(self.url(&format!("/api/chat/messages?limit=200&after={after}")))
                .bearer_auth(&user.token)
                .send()
                .await
                .expect("history")
                .json()
                .await
                .expect("json");
            let done = page.len() < 200;
            all.extend(page);
            if done {
                return all;
            }
        }
    }

    /// SIGKILL: no draining, no flushing, nothing.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// A field of `/proc/<pid>/status`, e.g. `Threads` or `VmRSS` (in kB).
    pub fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `content` from `from` to `to` with `content` as its idempotency key; `Some(id)` once acknowledged.
pub async fn send(
    client: &reqwest::Client,
    server: &str,
    from: &Account,
    to: &str,
    content: &str,
) -> Option<String> {
    let response = client
        .post(format!("{server}/api/chat/send"))
        .bearer_auth(&from.token)
        .header("Idempotency-Key", content)
        .json(&serde_json::json!({"recipient": to, "content": content}))
        .send()
        .await
        .ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["id"].as_str().map(str::to_owned)
}

pub fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
