//! Responder numbers: the cost of one plugin call, and how late fallbacks are under load.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use palaver::wasm::{
    ChatMessage, ComponentCache, Destination, HostRules, Manifest, ModerateRequest, NetworkPolicy,
    PLUGIN_BUILD_DIR, PluginHost, RespondRequest, Verdict,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Args, Server, create_users};

const CALLS: u64 = 10_000;

fn request() -> RespondRequest {
    let message = ChatMessage {
        id: "01a21ad6-1116-770e-912c-0b82997c7500".into(),
        sender: "01a21ad6-1116-770e-912c-0b82997c7501".into(),
        recipient: "01a21ad6-1116-770e-912c-0b82997c7502".into(),
        content: "are you there?".into(),
        sent_at: "2026-11-27T00:00:00.000Z".into(),
        auto_reply: false,
    };
    RespondRequest {
        history: vec![message.clone()],
        message,
        recipient_id: "01a21ad6-1116-770e-912c-0b82997c7502".into(),
        recipient_email: "bench@example.com".into(),
        config: vec![("message".into(), "away".into())],
        time_left_ms: 10_000,
    }
}

/// Instantiate + call of a constant plugin (`away-message`), in process, on the pooling
/// allocator: a fresh store and instance per call, as the server does.
pub async fn overhead(args: &Args) -> anyhow::Result<()> {
    let cache = args
        .plugin_cache
        .as_deref()
        .map(ComponentCache::open)
        .transpose()?;
    let host = PluginHost::new(NetworkPolicy::new(HostRules::new([]), None)?, cache)?;
    let wasm = std::fs::read(Path::new(PLUGIN_BUILD_DIR).join("away_message.wasm"))?;
    let manifest =
        Manifest::parse("name = \"away\"\nversion = \"1\"").map_err(anyhow::Error::msg)?;
    let plugin = host.load(manifest, &wasm)?;
    let deadline = || Instant::now() + Duration::from_secs(10);
    for _ in 0..200 {
        host.run(&plugin, request(), deadline()).await?;
    }
    let mut in_place = Histogram::<u64>::new(3)?;
    for _ in 0..CALLS {
        let request = request();
        let started = Instant::now();
        let reply = host.run(&plugin, request, deadline()).await?;
        in_place.record(started.elapsed().as_nanos() as u64)?;
        debug_assert_eq!(reply.as_deref(), Some("away"));
    }
    let mut via_runtime = Histogram::<u64>::new(3)?;
    for _ in 0..CALLS {
        let request = request();
        let started = Instant::now();
        host.respond(plugin.clone(), request, deadline(), None)
            .await?;
        via_runtime.record(started.elapsed().as_nanos() as u64)?;
    }
    println!();
    println!("responder overhead, constant plugin, {CALLS} calls each (pooling allocator)");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "", "median µs", "p99 µs", "max µs"
    );
    for (label, h) in [
        ("instantiate + call", &in_place),
        ("  + hop to the plugin runtime and back", &via_runtime),
    ] {
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "{label:<44} {:>10.1} {:>10.1} {:>10.1}",
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.max())
        );
    }
    moderation_overhead(&host).await?;
    plugins_by_language(&host, args.plugin_calls).await
}

/// What one moderator adds to a send, in process: the word-filter example's `moderate`, as the
/// send path calls it (on the caller's runtime).
async fn moderation_overhead(host: &std::sync::Arc<PluginHost>) -> anyhow::Result<()> {
    let wasm = std::fs::read(Path::new(PLUGIN_BUILD_DIR).join("word_filter.wasm"))?;
    let manifest = Manifest::parse(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/examples/word-filter/word_filter.toml"),
    )?)
    .map_err(anyhow::Error::msg)?;
    let plugin = host.load(manifest, &wasm)?;
    let request = || ModerateRequest {
        sender_id: "01a21ad6-1116-770e-912c-0b82997c7501".into(),
        sender_email: "bench@example.com".into(),
        destination: Destination::Recipient("01a21ad6-1116-770e-912c-0b82997c7502".into()),
        content: "see you at the darn meeting at noon".into(),
        config: plugin.manifest.config.clone().into_iter().collect(),
        time_left_ms: 100,
    };
    let deadline = || Instant::now() + Duration::from_secs(1);
    for _ in 0..200 {
        host.moderate(&plugin, request(), deadline()).await?;
    }
    let mut timings = Histogram::<u64>::new(3)?;
    for _ in 0..CALLS {
        let started = Instant::now();
        let verdict = host.moderate(&plugin, request(), deadline()).await?;
        timings.record(started.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(
            matches!(verdict, Verdict::Replace(ref text) if text.contains("****")),
            "the word filter did not mask: {verdict:?}"
        );
    }
    println!();
    println!("moderation, the word-filter example (mask), {CALLS} calls");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "", "median µs", "p99 µs", "max µs"
    );
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "{:<44} {:>10.1} {:>10.1} {:>10.1}",
        "instantiate + moderate",
        us(timings.value_at_quantile(0.5)),
        us(timings.value_at_quantile(0.99)),
        us(timings.max())
    );
    Ok(())
}

/// The example plugins that answer alike in three languages: size, compile time, and
/// instantiate + call. The JavaScript and Python ones are built outside cargo (npm, pip); the
/// bench says how when they are missing.
async fn plugins_by_language(host: &std::sync::Arc<PluginHost>, calls: u64) -> anyhow::Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples");
    let plugins = [
        (
            "Rust",
            Path::new(PLUGIN_BUILD_DIR).join("away_message.wasm"),
            examples.join("away-message/away_message.toml"),
            "cargo build (automatic)",
        ),
        (
            "JavaScript",
            examples.join("js-away/js_away.wasm"),
            examples.join("js-away/js_away.toml"),
            "(cd plugins/examples/js-away && npm ci && npm run build)",
        ),
        (
            "Python",
            examples.join("py-away/py_away.wasm"),
            examples.join("py-away/py_away.toml"),
            "plugins/examples/py-away/build.sh",
        ),
    ];
    println!();
    println!("the away-message example in three languages, {calls} calls each (pooling allocator)");
    println!(
        "{:<12} {:>9} {:>11} {:>13} {:>10} {:>10} {:>10}",
        "", "size MB", "ready ms", "Cranelift ms", "median µs", "p99 µs", "max µs"
    );
    for (language, wasm_path, manifest_path, build) in plugins {
        let Ok(wasm) = std::fs::read(&wasm_path) else {
            println!("{language:<12} not built: {build}");
            continue;
        };
        let manifest = Manifest::parse(&std::fs::read_to_string(&manifest_path)?)
            .map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let name = manifest.name.clone();
        let first = host.load(manifest, &wasm)?;
        let ready = started.elapsed();
        // A big component with nothing cached starts on Winch's code; the calls are timed on
        // Cranelift's, once it is swapped in (and cached for the next run).
        host.settled().await;
        let plugin = host.get(&name).unwrap_or_else(|| first.clone());
        let optimized = (!std::sync::Arc::ptr_eq(&plugin, &first)).then(|| started.elapsed());
        let deadline = || Instant::now() + Duration::from_secs(10);
        for _ in 0..20 {
            host.run(&plugin, request(), deadline()).await?;
        }
        let mut timings = Histogram::<u64>::new(3)?;
        for _ in 0..calls {
            let started = Instant::now();
            let reply = host.run(&plugin, request(), deadline()).await?;
            timings.record(started.elapsed().as_nanos() as u64)?;
            anyhow::ensure!(reply.is_some(), "{language}: no reply");
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "{language:<12} {:>9.1} {:>11.0} {:>13} {:>10.1} {:>10.1} {:>10.1}",
            wasm.len() as f64 / 1e6,
            ready.as_secs_f64() * 1000.0,
            optimized.map_or_else(
                || "-".to_owned(),
                |t| format!("{:.0}", t.as_secs_f64() * 1000.0)
            ),
            us(timings.value_at_quantile(0.5)),
            us(timings.value_at_quantile(0.99)),
            us(timings.max())
        );
    }
    Ok(())
}

/// 100 concurrent sends to BUSY users against an LLM that accepts connections and never
/// answers: every sender must get the fallback no later than deadline + 100 ms.
pub async fn fallback_lateness(args: &Args) -> anyhow::Result<()> {
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let llm_url = format!("http://{}/v1/chat/completions", black_hole.local_addr()?);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket); // read nothing, answer nothing
        }
    });
    let timeout = Duration::from_millis(args.responder_timeout_ms);
    let server = Server::start_with(
        args,
        &[
            ("LLM_API_URL", llm_url),
            (
                "RESPONDER_TIMEOUT_MS",
                args.responder_timeout_ms.to_string(),
            ),
        ],
    )
    .await?;
    let users = create_users(&server, 20).await?;
    let (busy, senders) = users.split_at(10);
    let http = reqwest::Client::new();
    for user in busy {
        http.put(format!("{}/api/user/status", server.url))
            .bearer_auth(&user.token)
            .json(&json!({"status": "BUSY"}))
            .send()
            .await?
            .error_for_status()?;
    }

    // Each sender's socket reports (sender, busy user) -> when the auto-reply arrived.
    let (arrivals, mut arrived) =
        tokio::sync::mpsc::unbounded_channel::<((String, String), Instant)>();
    for sender in senders {
        let (stream, _) = tokio_tungstenite::connect_async(server.ws_url(&sender.token)).await?;
        let (arrivals, me) = (arrivals.clone(), sender.id.clone());
        tokio::spawn(async move {
            let (_sink, mut stream) = stream.split();
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let message = &frame["message"];
                if message["kind"] == "auto_reply" && message["recipient"] == me.as_str() {
                    let from = message["sender"].as_str().unwrap_or_default().to_owned();
                    let _ = arrivals.send(((me.clone(), from), Instant::now()));
                }
            }
        });
    }

    let mut sent_at = HashMap::new();
    let mut sends = Vec::new();
    for sender in senders {
        for recipient in busy {
            let request = http
                .post(format!("{}/api/chat/send", server.url))
                .bearer_auth(&sender.token)
                .json(&json!({"recipient": recipient.id, "content": "are you there?"}));
            sent_at.insert((sender.id.clone(), recipient.id.clone()), Instant::now());
            sends.push(tokio::spawn(request.send()));
        }
    }
    for send in sends {
        send.await??.error_for_status()?;
    }
    let mut lateness = Histogram::<u64>::new(3)?;
    let mut early = 0;
    let give_up = tokio::time::Instant::now() + timeout + Duration::from_secs(10);
    while lateness.len() + early < sent_at.len() as u64 {
        let Ok(Some((pair, at))) = tokio::time::timeout_at(give_up, arrived.recv()).await else {
            break;
        };
        let Some(sent) = sent_at.get(&pair) else {
            continue;
        };
        let deadline = *sent + timeout;
        match at.checked_duration_since(deadline) {
            Some(late) => lateness.record(late.as_micros() as u64 + 1)?,
            None => early += 1,
        }
    }
    let received = lateness.len() + early;
    let ms = |v: u64| v as f64 / 1000.0;
    println!();
    println!(
        "fallback lateness: {} concurrent sends to BUSY users, LLM never answers, deadline {} ms",
        sent_at.len(),
        timeout.as_millis()
    );
    println!(
        "received {received}/{}; before the deadline {early}; after it by median {:.1} ms, p99 {:.1} ms, max {:.1} ms; within +100 ms: {}",
        sent_at.len(),
        ms(lateness.value_at_quantile(0.5)),
        ms(lateness.value_at_quantile(0.99)),
        ms(lateness.max()),
        lateness.count_between(0, 100_000) + early,
    );
    println!(
        "(lateness is measured from just before each HTTP send, so it includes the request and the push)"
    );
    server.stop().await;
    Ok(())
}
