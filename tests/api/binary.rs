//! The real `palaver` binary: configuration errors, secrets kept out of the log, clean shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::process::{BINARY, strip_ansi};

fn palaver(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .env("DATA_DIR", data_dir)
        .env("HOST", "127.0.0.1")
        .current_dir(data_dir)
        .stdin(Stdio::null());
    command
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, value) in [
        ("PORT", "http"),
        ("JWT_SECRET", "short-secret"),
        ("TOKEN_TTL", "forever"),
    ] {
        let output = palaver(dir.path())
            .env(name, value)
            .output()
            .expect("run palaver");
        assert!(
            !output.status.success(),
            "{name}={value} must stop start-up"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(name), "names {name}: {stderr}");
        if name == "JWT_SECRET" {
            assert!(!stderr.contains(value), "does not echo the secret");
        }
    }
}

/// An unreachable or malformed `MONGODB_URI` stops start-up within seconds, with one line
/// that names the variable and shows the URI without its password.
#[test]
fn an_unusable_mongodb_uri_stops_start_up_promptly_without_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let password = "hunter2-do-not-log";
    for uri in [
        format!("mongodb://palaver:{password}@127.0.0.1:{closed_port}/chat"),
        format!("mongodb://palaver:{password}@127.0.0.1:notaport/chat"),
        format!("mongodb://palaver:{password}@/chat"),
        format!("mysql://palaver:{password}@127.0.0.1/chat"),
    ] {
        let started = std::time::Instant::now();
        let output = palaver(dir.path())
            .env("PORT", "0")
            .env("MONGODB_URI", &uri)
            .output()
            .expect("run palaver");
        let took = started.elapsed();
        assert!(!output.status.success(), "{uri} must stop start-up");
        assert!(took < Duration::from_secs(10), "{uri}: took {took:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains("MONGODB_URI"), "{stderr}");
        assert!(lines[0].contains("palaver:***@"), "{stderr}");
        assert!(!stderr.contains(password) && !stdout.contains(password));
    }
}

#[test]
fn openapi_command_prints_the_committed_spec() {
    let output = Command::new(BINARY)
        .arg("openapi")
        .output()
        .expect("run palaver openapi");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../openapi/openapi.json"
    ))
    .expect("committed spec");
    similar_asserts::assert_eq!(
        committed: committed.trim_end(),
        printed: printed.trim_end(),
        "regenerate openapi/openapi.json with `cargo run --quiet -- openapi > openapi/openapi.json`"
    );
}

/// Drives the binary through register, login and send with debug logging on, stops it with
/// SIGTERM, and checks that it exited cleanly and logged no password, hash, token or secret.
#[tokio::test]
async fn logs_hold_no_secrets_and_sigterm_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt_secret = "binary-test-secret-0123456789abcdef-XYZ";
    let mut child = palaver(dir.path())
        .env("PORT", "0")
        .env("JWT_SECRET", jwt_secret)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palaver");

    // The log announces the bound address; read until it does.
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let address = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("palaver announces its address");
        log.push(line.clone());
        if line.contains("palaver is listening") {
            let plain = strip_ansi(&line);
            let address = plain
                .split("address=")
                .nth(1)
                .expect("address field")
                .split_whitespace()
                .next()
                .expect("address")
                .to_owned();
            break address;
        }
    };

    let client = reqwest::Client::new();
    let base = format!("http://{address}");
    let password = "a-very-secret-password";
    let email = "logs@example.com";
    let credentials = json!({"email": email, "password": password});
    let registered = client
        .post(format!("{base}/api/auth/register"))
        .json(&credentials)
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), StatusCode::CREATED);
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&credentials)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token").to_owned();
    let user_id = login["user_id"].as_str().expect("id").to_owned();
    let bad_login = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email, "password": "wrong-password-attempt"}))
        .send()
        .await
        .expect("login");
    assert_eq!(bad_login.status(), StatusCode::UNAUTHORIZED);
    let sent = client
        .post(format!("{base}/api/chat/send"))
        .header("x-auth-token", &token)
        .json(&json!({"recipient": user_id, "content": "note to self"}))
        .send()
        .await
        .expect("send");
    assert_eq!(sent.status(), StatusCode::OK);
    let _ = client
        .get(format!("{base}/api/chat/messages?token={token}"))
        .send()
        .await
        .expect("list");

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = child.wait_with_output().expect("palaver exits");
    assert!(
        output.status.success(),
        "clean exit after SIGTERM: {:?}",
        output.status
    );
    log.extend(lines_rx.try_iter());
    let log = format!(
        "{}\n{}",
        log.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(
        log.contains("/api/auth/login"),
        "requests are logged: {log}"
    );
    let hash_prefix = "$argon2id$";
    for secret in [
        password,
        "wrong-password-attempt",
        &token,
        jwt_secret,
        hash_prefix,
    ] {
        assert!(!log.contains(secret), "the log leaks {secret:?}");
    }
}
