//! A moderator that misbehaves (or answers a fixed verdict) on purpose, for Palaver's sandbox
//! and moderation tests. The config key `mode` picks: the hostile example's misbehaviours
//! (`loop`, `memory`, `huge`, `fetch`, `log`, `panic`, `error`), or a verdict: `allow`,
//! `reject` (with `reason`), `replace` (with `replacement`, `{content}` standing for the text),
//! `stamp` (the text and a random stamp, different every call).

wit_bindgen::generate!({ path: "../../wit", world: "moderator" });

use palaver::responder::host::{HttpRequest, LogLevel, http_fetch, log};

struct HostileModerator;

fn config<'a>(request: &'a ModerateRequest, key: &str) -> Option<&'a str> {
    request
        .config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Guest for HostileModerator {
    fn moderate(request: ModerateRequest) -> Result<Verdict, String> {
        match config(&request, "mode").unwrap_or("") {
            "allow" => Ok(Verdict::Allow),
            "reject" => Ok(Verdict::Reject(
                config(&request, "reason").unwrap_or("rejected").to_owned(),
            )),
            "replace" => Ok(Verdict::Replace(
                config(&request, "replacement")
                    .unwrap_or("{content}")
                    .replace("{content}", &request.content),
            )),
            // A different text every call (a random stamp): proves a retry is not moderated again.
            "stamp" => {
                use std::hash::{BuildHasher, RandomState};
                let stamp = RandomState::new().hash_one(&request.content);
                Ok(Verdict::Replace(format!("{} #{stamp:x}", request.content)))
            }
            // Never returns and never calls the host: only epoch interruption or fuel stop it.
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // A replacement far over the content limit.
            "huge" => Ok(Verdict::Replace("x".repeat(1 << 20))),
            "fetch" => {
                let url = config(&request, "url").unwrap_or("http://example.com/").to_owned();
                http_fetch(&HttpRequest {
                    method: "GET".into(),
                    url,
                    headers: Vec::new(),
                    body: None,
                    timeout_ms: None,
                })?;
                Ok(Verdict::Allow)
            }
            "log" => {
                for n in 0..50 {
                    log(
                        LogLevel::Error,
                        &format!("line {n}\nFORGED 2026-01-01T00:00:00Z ERROR palaver: fake"),
                    );
                }
                Ok(Verdict::Allow)
            }
            "panic" => panic!("hostile moderator panicking on purpose"),
            "error" => Err("hostile moderator refusing on purpose".into()),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(HostileModerator);
