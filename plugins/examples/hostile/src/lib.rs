//! A responder that misbehaves on purpose, for Palaver's sandbox tests. The config key `mode`
//! picks how; `url` is the target of the HTTP modes, `method` its method (default GET) and
//! `header` one `Name: value` header to send.

wit_bindgen::generate!({ path: "../../wit", world: "responder" });

use palaver::responder::host::{HttpRequest, LogLevel, http_fetch, log};

struct Hostile;

fn config<'a>(request: &'a RespondRequest, key: &str) -> Option<&'a str> {
    request
        .config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Guest for Hostile {
    fn respond(request: RespondRequest) -> Result<Option<String>, String> {
        match config(&request, "mode").unwrap_or("") {
            // Never returns and never calls the host: only epoch interruption or fuel stop it.
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            // Grows memory until the host's cap says no.
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // A reply far over the size cap.
            "huge" => Ok(Some("x".repeat(1 << 20))),
            // An HTTP call to whatever `url` says (a host that is not allowed, or one that is
            // slower than the deadline).
            "fetch" => {
                let url = config(&request, "url").unwrap_or("http://example.com/").to_owned();
                let headers = config(&request, "header")
                    .and_then(|h| h.split_once(':'))
                    .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                    .into_iter()
                    .collect();
                let response = http_fetch(&HttpRequest {
                    method: config(&request, "method").unwrap_or("GET").into(),
                    url,
                    headers,
                    body: None,
                    timeout_ms: None,
                })?;
                Ok(Some(String::from_utf8_lossy(&response.body).into_owned()))
            }
            // Tries to forge log lines (a newline, then what looks like a server line) and to
            // flood the log.
            "log" => {
                for n in 0..50 {
                    log(
                        LogLevel::Error,
                        &format!("line {n}\nFORGED 2026-01-01T00:00:00Z ERROR palaver: fake"),
                    );
                }
                Ok(Some("logged".into()))
            }
            "panic" => panic!("hostile plugin panicking on purpose"),
            "error" => Err("hostile plugin refusing on purpose".into()),
            "decline" => Ok(None),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(Hostile);
