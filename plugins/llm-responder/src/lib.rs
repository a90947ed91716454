//! Palaver's default responder: asks an OpenAI-compatible chat-completion API to answer for the
//! busy user, through the host's `http-fetch` (which adds the API key and enforces the rules).
//!
//! Config keys (the host fills the first two from `LLM_API_URL` and `LLM_MODEL`):
//! - `llm_api_url`: the chat-completions endpoint, e.g. `https://api.openai.com/v1/chat/completions`
//! - `llm_model`: the model name
//! - `system_prompt`: replaces the default instructions (`{email}` becomes the busy user's email)
//! - `max_tokens`: an upper bound on the answer's length (default 200)
//!
//! Keys each user may set for themselves (the manifest's `user_config`):
//! - `persona`: how to answer for them, in their own words; added to the instructions
//! - `language`: the language to answer in (default: the language of the last message)
//!
//! It asks with `"stream": true` and reads the answer as server-sent events (`data: {json}`
//! lines up to `data: [DONE]`, the text in `choices[0].delta.content`), reporting the text so
//! far with the host's `progress` as it grows; a server that answers plain JSON instead
//! (`choices[0].message.content`) works too.
//!
//! Any failure (non-2xx including 429, malformed JSON, no choices, empty content) is an `err`,
//! so the host sends the standard "unavailable" message instead.

wit_bindgen::generate!({ path: "../wit", world: "responder" });

use palaver::responder::host::{HttpRequest, LogLevel, http_fetch_stream, log, progress};
use serde_json::{Value, json};

struct LlmResponder;

const DEFAULT_PROMPT: &str = "You are replying on behalf of {email}, who is busy right now and \
    cannot answer in person. Reply briefly and politely in the language of the last message. \
    Say they are busy and will get back to the person later; answer simple questions if the \
    conversation makes the answer clear. Never invent commitments, facts or plans for them.";

fn config<'a>(request: &'a RespondRequest, key: &str) -> Option<&'a str> {
    request
        .config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

/// The chat-completion request: instructions, then the conversation as user/assistant turns
/// (the busy user's own messages are the assistant's).
fn completion_request(request: &RespondRequest, model: &str) -> Value {
    let mut prompt = config(request, "system_prompt")
        .unwrap_or(DEFAULT_PROMPT)
        .replace("{email}", &request.recipient_email);
    if let Some(persona) = config(request, "persona") {
        // The user's words come after the operator's rules, framed as theirs, so they shape the
        // tone and content without replacing the rules.
        prompt.push_str("\n\nThe busy user's own instructions for these replies: ");
        prompt.push_str(persona);
    }
    if let Some(language) = config(request, "language") {
        prompt.push_str(&format!("\n\nAlways answer in {language}."));
    }
    let max_tokens = config(request, "max_tokens")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(200);
    let mut messages = vec![json!({"role": "system", "content": prompt})];
    for turn in &request.history {
        let role = if turn.sender == request.recipient_id {
            "assistant"
        } else {
            "user"
        };
        messages.push(json!({"role": role, "content": turn.content}));
    }
    json!({"model": model, "messages": messages, "max_tokens": max_tokens, "stream": true})
}

/// The text of a streamed answer: every `data:` event's `choices[0].delta.content`, in order,
/// reported to the host as it grows.
struct Streamed {
    /// Bytes of a line not yet complete.
    pending: Vec<u8>,
    text: String,
    done: bool,
}

impl Streamed {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
            text: String::new(),
            done: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.pending.extend_from_slice(chunk);
        let before = self.text.len();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue; // comments, `event:`, `id:` and blank separators
            };
            let data = data.trim();
            if data == "[DONE]" {
                self.done = true;
                break;
            }
            let event: Value = serde_json::from_str(data)
                .map_err(|e| format!("LLM streamed malformed JSON: {e}"))?;
            if let Some(piece) = event
                .get("choices")
                .and_then(|c| c.get(0))
                .and_then(|c| c.get("delta"))
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
            {
                self.text.push_str(piece);
            }
        }
        // Trimmed at both ends, as the final answer is: each text shown is then a prefix of
        // the reply (a trailing space of the last piece is not).
        if self.text.len() > before && !self.text.trim().is_empty() {
            progress(self.text.trim());
        }
        Ok(())
    }
}

/// `choices[0].message.content`, trimmed and not empty.
fn reply_text(body: &[u8]) -> Result<String, String> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| format!("LLM answered malformed JSON: {e}"))?;
    let content = parsed
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .ok_or("LLM answer has no choices[0].message.content")?;
    let content = content.trim();
    if content.is_empty() {
        return Err("LLM answered with empty content".into());
    }
    Ok(content.to_owned())
}

impl Guest for LlmResponder {
    fn respond(request: RespondRequest) -> Result<Option<String>, String> {
        let url = config(&request, "llm_api_url").ok_or("no LLM configured (LLM_API_URL)")?;
        let model = config(&request, "llm_model").unwrap_or("gpt-4o-mini");
        let body = completion_request(&request, model).to_string().into_bytes();
        let response = http_fetch_stream(&HttpRequest {
            method: "POST".into(),
            url: url.to_owned(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("accept".into(), "text/event-stream, application/json".into()),
            ],
            body: Some(body),
            timeout_ms: None,
        })?;
        if !(200..300).contains(&response.status) {
            log(
                LogLevel::Warn,
                &format!("LLM answered HTTP {}", response.status),
            );
            return Err(format!("LLM answered HTTP {}", response.status));
        }
        let streamed = response.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("content-type") && value.starts_with("text/event-stream")
        });
        if !streamed {
            let mut body = Vec::new();
            while let Some(chunk) = response.body.next()? {
                body.extend_from_slice(&chunk);
            }
            return reply_text(&body).map(Some);
        }
        let mut answer = Streamed::new();
        while let Some(chunk) = response.body.next()? {
            answer.feed(&chunk)?;
            if answer.done {
                break;
            }
        }
        let text = answer.text.trim();
        if text.is_empty() {
            return Err("LLM streamed no content".into());
        }
        Ok(Some(text.to_owned()))
    }
}

export!(LlmResponder);
