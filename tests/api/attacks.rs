//! Attack reproductions against the real binary, measured from `/proc`: a login flood from
//! clients that disconnect at once, and Engine.IO sessions that never finish a huge frame.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::PASSWORD;
use crate::process::{Server, Storage};

const FLOODERS: usize = 40;

/// Disconnecting clients used to free their hashing slot while the hash kept running, so 40 of
/// them ran 40 argon2 hashes (19 MiB each) at once. Now a slot is held until its hash is done:
/// memory stays flat, and a real user is answered (200, or 503 once the bounded wait is over)
/// instead of queueing without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_disconnecting_logins_runs_one_hash_per_slot() {
    let storage = Storage::new();
    let server = Server::start(
        &storage,
        &[
            ("PASSWORD_HASH_CONCURRENCY", "1"),
            ("PASSWORD_HASH_WAIT", "2s"),
            ("AUTH_RATE_LIMIT", "off"),
            ("LOGIN_FAILURE_LIMIT", "off"),
        ],
    );
    let client = reqwest::Client::new();
    let credentials = json!({"email": "victim@example.com", "password": PASSWORD});
    let register = client
        .post(server.url("/api/auth/register"))
        .json(&credentials)
        .send()
        .await
        .expect("register");
    assert_eq!(register.status(), StatusCode::CREATED);
    // Warm up the blocking pool the way normal traffic does.
    for _ in 0..3 {
        let login = client
            .post(server.url("/api/auth/login"))
            .json(&credentials)
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), StatusCode::OK);
    }
    let threads_before = server.status_field("Threads");
    let rss_before = server.status_field("VmRSS");

    // Each flooder sends a login and gives up after 20 ms, long before the hash is done. Over
    // HTTP/2 giving up resets the stream, and the server drops the request's handler at once.
    let impatient = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_millis(20))
        .build()
        .expect("client");
    futures_util::future::join_all((0..FLOODERS).map(|i| {
        let request = impatient
            .post(server.url("/api/auth/login"))
            .json(&json!({"email": "victim@example.com", "password": format!("guess {i:04}")}));
        async move { request.send().await.map(|r| r.status()) }
    }))
    .await;

    // Meanwhile a real user logs in: a bounded wait, then an answer.
    let started = std::time::Instant::now();
    let mut threads_max = server.status_field("Threads");
    let mut rss_max = server.status_field("VmRSS");
    let real = client
        .post(server.url("/api/auth/login"))
        .json(&credentials)
        .send();
    tokio::pin!(real);
    let status = loop {
        tokio::select! {
            answer = &mut real => break answer.expect("answered").status(),
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                threads_max = threads_max.max(server.status_field("Threads"));
                rss_max = rss_max.max(server.status_field("VmRSS"));
            }
        }
    };
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The peak matters: each argon2 hash holds 19 MiB while it runs.
    let rss_after = rss_max.max(server.status_field("VmRSS"));
    eprintln!(
        "login flood: threads {threads_before} -> max {threads_max}, RSS {} -> {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    // Before the fix the 40 hashes ran at once: RSS +200 MiB (and 28 more threads). Thread
    // counts are only printed: tokio's blocking pool also grows for the store's short calls
    // under 40 simultaneous logins, by an amount that depends on scheduling.
    assert!(
        rss_after < rss_before + 100 * 1024,
        "RSS {rss_before} kB -> {rss_after} kB: hashes ran past their slots"
    );
}

/// A WebSocket frame header announcing 16 MiB, then silence: the server must refuse it from the
/// header (the open packet advertises 64 KiB), not wait for and buffer the payload.
#[tokio::test]
async fn an_engine_io_frame_over_64_kib_is_refused_from_its_header() {
    let storage = Storage::new();
    let server = Server::start(&storage, &[]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let handshake = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {address}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(handshake.as_bytes())
        .await
        .expect("handshake");
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .expect("handshake answer");
        response.push(byte[0]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );

    // A masked text frame of 16 MiB (64-bit length), and only its first kilobyte.
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[b'4'; 1024]);
    stream.write_all(&frame).await.expect("partial frame");

    // The server ends the connection without waiting for the rest.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "the server kept the partial 16 MiB frame waiting"
    );
    let client = reqwest::Client::new();
    let ready = client
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
}
