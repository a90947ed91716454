//! Plugins from `PLUGINS_DIR`, built from source by the build: the example that answers from its
//! configuration, and hostile ones that must never delay the fallback or hurt anyone else.

use std::path::Path;
use std::time::{Duration, Instant};

use palaver::config::{HostPattern, SqliteSynchronous};
use palaver::wasm::PLUGIN_BUILD_DIR;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, operator_listener};

use palaver::config::DEFAULT_FALLBACK_MESSAGE as FALLBACK;

/// A plugins folder holding `<name>.wasm` (a copy of a built plugin) and `<name>.toml`.
fn plugins_dir(name: &str, built: &str, manifest: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("plugins dir");
    let source = Path::new(PLUGIN_BUILD_DIR).join(built);
    std::fs::copy(&source, dir.path().join(format!("{name}.wasm")))
        .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    std::fs::write(dir.path().join(format!("{name}.toml")), manifest).expect("manifest");
    dir
}

async fn app_with_plugin(
    dir: &TempDir,
    name: &str,
    timeout: Duration,
    allowed: &[&str],
) -> TestApp {
    let (path, name) = (dir.path().to_path_buf(), name.to_owned());
    let allowed: Vec<HostPattern> = allowed
        .iter()
        .map(|h| HostPattern::parse(h).expect("host pattern"))
        .collect();
    TestApp::spawn_configured(move |config| {
        config.responder.plugins_dir = Some(path);
        config.responder.plugin = name;
        config.responder.timeout = timeout;
        config.responder.allowed_hosts = allowed;
        config.sqlite_synchronous = SqliteSynchronous::Normal;
    })
    .await
}

/// Bob is BUSY and Alice writes to him; meanwhile Carol writes to Dave, who is AVAILABLE.
/// Returns Bob's auto-reply to Alice and how long it took, after checking that Dave got
/// Carol's message while the plugin was running and the server is still ready.
async fn busy_bob_answers(app: &TestApp) -> (Value, Duration) {
    let (alice, bob, carol, dave) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    app.set_status(&bob, "BUSY").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut dave_ws = app.ws(&dave).await;

    let started = Instant::now();
    let sent = app.send_ok(&alice, &bob, "hello bob").await;
    let to_dave = app.send_ok(&carol, &dave, "unaffected").await;
    assert_eq!(dave_ws.next_json().await["message"]["id"], to_dave.as_str());
    let during = started.elapsed();

    let reply = loop {
        let frame = alice_ws.next_json().await;
        if frame["type"] == "message" && frame["message"]["id"] != sent.as_str() {
            break frame["message"].clone();
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(reply["kind"], "auto_reply");
    assert_eq!(reply["sender"], bob.id.as_str());
    assert!(
        during < Duration::from_millis(500),
        "others are not held up: {during:?}"
    );
    assert_eq!(app.readyz().await.status, StatusCode::OK);
    (reply, elapsed)
}

fn hostile_manifest(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"0.0.1\"\nmemory_mb = 16\n{extra}\n[config]\nmode = \"{mode}\"\n"
    )
}

async fn assert_hostile_gets_fallback(mode: &str, at_deadline: bool) {
    let timeout = Duration::from_millis(1000);
    let name = format!("hostile-{mode}");
    let dir = plugins_dir(&name, "hostile.wasm", &hostile_manifest(&name, mode, ""));
    let app = app_with_plugin(&dir, &name, timeout, &[]).await;
    let (reply, elapsed) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], FALLBACK, "{mode}");
    assert!(
        elapsed <= timeout + Duration::from_millis(100),
        "{mode}: fallback on time, {elapsed:?}"
    );
    if at_deadline {
        assert!(elapsed >= timeout, "{mode}: {elapsed:?}");
    } else {
        assert!(elapsed < timeout, "{mode}: fails fast, {elapsed:?}");
    }
}

#[tokio::test]
async fn an_infinite_loop_is_cut_off_at_the_deadline() {
    assert_hostile_gets_fallback("loop", true).await;
}

#[tokio::test]
async fn a_memory_bomb_hits_its_cap() {
    assert_hostile_gets_fallback("memory", false).await;
}

#[tokio::test]
async fn a_huge_reply_is_refused() {
    assert_hostile_gets_fallback("huge", false).await;
}

#[tokio::test]
async fn a_panic_is_a_fallback() {
    assert_hostile_gets_fallback("panic", false).await;
}

#[tokio::test]
async fn a_host_not_on_the_list_is_refused() {
    // `url` defaults to http://example.com/, which no one allowed: refused without a request.
    assert_hostile_gets_fallback("fetch", false).await;
}

#[tokio::test]
async fn a_host_call_slower_than_the_deadline_is_cut_off() {
    let slow = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("late")
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&slow)
        .await;
    let timeout = Duration::from_millis(1000);
    let manifest = format!(
        "name = \"slow\"\nversion = \"1\"\nallowed_hosts = [\"{host}\"]\n[config]\nmode = \"fetch\"\nurl = \"{}/\"\n",
        slow.uri(),
        host = slow.address()
    );
    let dir = plugins_dir("slow", "hostile.wasm", &manifest);
    let app = app_with_plugin(&dir, "slow", timeout, &[&slow.address().to_string()]).await;
    let (reply, elapsed) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], FALLBACK);
    assert!(
        elapsed >= timeout && elapsed <= timeout + Duration::from_millis(100),
        "{elapsed:?}"
    );
    assert_eq!(
        slow.received_requests().await.map(|r| r.len()),
        Some(1),
        "the call was made"
    );
}

#[tokio::test]
async fn the_away_message_example_answers_from_its_config() {
    let manifest = "name = \"away\"\nversion = \"0.1.0\"\ndescription = \"Canned away message\"\n\
                    [config]\nmessage = \"{email} is on holiday until Monday.\"\n";
    let dir = plugins_dir("away", "away_message.wasm", manifest);
    let app = app_with_plugin(&dir, "away", Duration::from_secs(5), &[]).await;
    let (reply, elapsed) = busy_bob_answers(&app).await;
    let content = reply["content"].as_str().expect("content");
    assert!(
        content.ends_with("@example.com is on holiday until Monday."),
        "{content}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    let user = app.user("viewer").await;
    let listed = app.get("/api/plugins", &user.token).await;
    assert_eq!(listed.status, StatusCode::OK);
    let plugins = listed.body.as_array().expect("array");
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["away", "llm-responder"]);
    assert_eq!(plugins[0]["active"], true);
    assert_eq!(plugins[0]["description"], "Canned away message");
    assert_eq!(plugins[1]["active"], false);
    // Users see what a plugin is and what they may set; the LLM's host, the fuel and memory
    // budgets and error texts are the operator's (`GET /plugins` on METRICS_ADDR).
    for plugin in plugins {
        let mut keys: Vec<&str> = plugin
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "active",
                "description",
                "name",
                "roles",
                "state",
                "user_settings",
                "version"
            ],
            "{plugin}"
        );
    }
}

#[tokio::test]
async fn a_broken_plugin_is_skipped_not_fatal() {
    let dir = plugins_dir(
        "broken",
        "away_message.wasm",
        "name = \"broken\"\nversion = \"1\"\n",
    );
    std::fs::write(dir.path().join("garbage.wasm"), b"not wasm").expect("write");
    std::fs::write(
        dir.path().join("garbage.toml"),
        "name = \"garbage\"\nversion = \"1\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("nomanifest.wasm"), b"\0asm").expect("write");
    let app = app_with_plugin(&dir, "garbage", Duration::from_secs(5), &[]).await;
    let user = app.user("viewer").await;
    let listed = app.get("/api/plugins", &user.token).await.body;
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["broken", "llm-responder"]);
    // RESPONDER_PLUGIN names a plugin that did not load: the built-in one answers instead.
    let active: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter(|p| p["active"] == true)
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(active, ["llm-responder"]);
}

#[tokio::test]
async fn running_out_of_fuel_is_a_prompt_fallback() {
    let timeout = Duration::from_millis(3000);
    let manifest =
        "name = \"frugal\"\nversion = \"1\"\nfuel = 1000000\n[config]\nmode = \"loop\"\n";
    let dir = plugins_dir("frugal", "hostile.wasm", manifest);
    let app = app_with_plugin(&dir, "frugal", timeout, &[]).await;
    let (reply, elapsed) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], FALLBACK);
    assert!(
        elapsed < Duration::from_millis(1000),
        "out of fuel long before the deadline: {elapsed:?}"
    );
}

#[tokio::test]
async fn plugins_dropped_into_the_folder_load_without_a_restart() {
    let dir = tempfile::tempdir().expect("plugins dir");
    let app = app_with_plugin(&dir, "late", Duration::from_secs(5), &[]).await;
    let user = app.user("viewer").await;
    // Ready plugins only: a dropped-in plugin is listed as "loading" while it compiles.
    let names = |body: Value| -> Vec<String> {
        body.as_array()
            .expect("array")
            .iter()
            .filter(|p| p["state"] != "loading")
            .map(|p| p["name"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(
        names(app.get("/api/plugins", &user.token).await.body),
        ["llm-responder"]
    );

    std::fs::copy(
        Path::new(PLUGIN_BUILD_DIR).join("away_message.wasm"),
        dir.path().join("late.wasm"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("late.toml"),
        "name = \"late\"\nversion = \"1\"\n[config]\nmessage = \"loaded on the fly\"\n",
    )
    .expect("manifest");
    // The folder is re-read every 2 s: wait for the plugin to show up (bounded).
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = names(app.get("/api/plugins", &user.token).await.body);
        if listed == ["late", "llm-responder"] {
            break;
        }
        assert!(Instant::now() < give_up, "never loaded: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (reply, _) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], "loaded on the fly");

    std::fs::remove_file(dir.path().join("late.wasm")).expect("remove");
    let give_up = Instant::now() + Duration::from_secs(10);
    while names(app.get("/api/plugins", &user.token).await.body) != ["llm-responder"] {
        assert!(Instant::now() < give_up, "never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Allowed by a pattern but not named exactly, a host may not be an internal address.
/// (`*.0.0.1` matches 127.0.0.1 as text, the way `*.example.com` might match a name whose DNS
/// points inside the network.)
#[tokio::test]
async fn an_internal_address_the_operator_did_not_name_is_refused() {
    let internal = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("secret internal data"))
        .mount(&internal)
        .await;
    let manifest = format!(
        "name = \"sneaky\"\nversion = \"1\"\nallowed_hosts = [\"{host}\"]\n[config]\nmode = \"fetch\"\nurl = \"{}/\"\n",
        internal.uri(),
        host = internal.address()
    );
    let dir = plugins_dir("sneaky", "hostile.wasm", &manifest);
    let pattern = format!("*.0.0.1:{}", internal.address().port());
    let app = app_with_plugin(&dir, "sneaky", Duration::from_secs(3), &[&pattern]).await;
    let (reply, elapsed) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], FALLBACK);
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(
        internal.received_requests().await.map(|r| r.len()),
        Some(0),
        "never reached"
    );
}

/// Fails fast on every call (its fetch answer is over the 1 MiB cap) until the stub changes.
#[tokio::test]
async fn a_plugin_that_keeps_failing_is_benched_then_comes_back_by_itself() {
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'x'; 2 << 20]))
        .mount(&stub)
        .await;
    let manifest = format!(
        "name = \"flaky\"\nversion = \"1\"\nallowed_hosts = [\"{host}\"]\n[config]\nmode = \"fetch\"\nurl = \"{}/\"\n",
        stub.uri(),
        host = stub.address()
    );
    let allowed = HostPattern::parse(&stub.address().to_string()).expect("pattern");
    let dir = plugins_dir("flaky", "hostile.wasm", &manifest);
    let path = dir.path().to_path_buf();
    let app = TestApp::spawn_configured(move |config| {
        config.responder.plugins_dir = Some(path);
        config.responder.plugin = "flaky".into();
        config.responder.allowed_hosts = vec![allowed];
        config.responder.bench_after = Some(2);
        config.responder.bench_for = Duration::from_millis(1500);
        config.sqlite_synchronous = SqliteSynchronous::Normal;
        config.metrics_addr = operator_listener();
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.set_status(&bob, "BUSY").await;
    let mut socket = app.ws(&alice).await;
    let mut reply_to = async |text: &str| -> String {
        let sent = app.send_ok(&alice, &bob, text).await;
        loop {
            let frame = socket.next_json().await;
            if frame["type"] == "message" && frame["message"]["id"] != sent.as_str() {
                return frame["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned();
            }
        }
    };
    let calls = async || stub.received_requests().await.map_or(0, |r| r.len());
    // Users see whether it answers; the operator also sees why not.
    let named = |list: &Value| -> Value {
        list.as_array()
            .expect("plugins")
            .iter()
            .find(|p| p["name"] == "flaky")
            .expect("flaky")
            .clone()
    };
    let flaky = async || -> Value {
        let public = named(&app.get("/api/plugins", &alice.token).await.body);
        let report = named(&app.operator_get("/plugins").await);
        // The bench can end between the two reads: only what never changes is compared.
        assert!(public.get("last_error").is_none(), "{public}");
        report
    };

    for n in 1..=2 {
        assert_eq!(reply_to(&format!("failure {n}")).await, FALLBACK);
    }
    assert_eq!(calls().await, 2);
    let benched = flaky().await;
    assert_eq!(benched["state"], "benched", "{benched}");
    assert_eq!(benched["consecutive_failures"], 2);
    assert!(benched["benched_until"].is_string(), "{benched}");
    let error = benched["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("response body over 1048576 bytes"),
        "{error}"
    );

    // Benched: the fallback comes without the plugin running.
    let started = Instant::now();
    assert_eq!(reply_to("while benched").await, FALLBACK);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls().await, 2, "the benched plugin did not run");

    // The cool-down ends by itself; the plugin (its host answering sensibly now) answers again.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("Back in business"))
        .with_priority(1)
        .mount(&stub)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while flaky().await["state"] == "benched" {
        assert!(Instant::now() < deadline, "the bench never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reply_to("are you back?").await, "Back in business");
    let healthy = flaky().await;
    assert_eq!(healthy["state"], "ready");
    assert_eq!(healthy["consecutive_failures"], 0);
}

/// What a plugin may not do with `http-fetch`: set headers the host owns, or get the LLM key
/// sent anywhere but the one request `LLM_API_URL` names. Bob tries each through his own
/// responder settings.
#[tokio::test]
async fn plugin_requests_get_no_forged_headers_and_the_llm_key_only_on_the_llm_call() {
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("listed"))
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("posted"))
        .mount(&stub)
        .await;
    let manifest = format!(
        "name = \"probe\"\nversion = \"1\"\nallowed_hosts = [\"{host}\"]\n\
         [config]\nmode = \"fetch\"\nurl = \"{uri}/v1/models\"\n\
         [user_config]\nurl = \"where\"\nmethod = \"how\"\nheader = \"with what\"\n",
        uri = stub.uri(),
        host = stub.address()
    );
    let dir = plugins_dir("probe", "hostile.wasm", &manifest);
    let allowed = HostPattern::parse(&stub.address().to_string()).expect("pattern");
    let (path, llm) = (
        dir.path().to_path_buf(),
        format!("{}/v1/chat/completions", stub.uri()),
    );
    let app = TestApp::spawn_configured(move |config| {
        config.responder.plugins_dir = Some(path);
        config.responder.plugin = "probe".into();
        config.responder.allowed_hosts = vec![allowed];
        config.responder.llm_api_url = Some(llm.parse().expect("url"));
        config.responder.llm_api_key = Some(palaver::config::Secret::new("sk-test-key".into()));
        // Seven refusals in a row would bench the plugin, and eleven auto-replies use up the
        // pair's hourly quota, before the last check.
        config.responder.bench_after = None;
        config.limits.auto_replies_per_pair = None;
        config.sqlite_synchronous = SqliteSynchronous::Normal;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.set_status(&bob, "BUSY").await;
    let mut socket = app.ws(&alice).await;
    let mut try_with = async |settings: Value| -> (String, Option<wiremock::Request>) {
        let before = stub.received_requests().await.map_or(0, |r| r.len());
        let choice = serde_json::json!({"plugin": "probe", "config": settings});
        let chosen = app
            .request(
                reqwest::Method::PUT,
                "/api/users/me/responder",
                Some(&bob.token),
                Some(choice),
            )
            .await;
        assert_eq!(chosen.status, StatusCode::OK, "{}", chosen.body);
        let sent = app.send_ok(&alice, &bob, "ping").await;
        let reply = loop {
            let frame = socket.next_json().await;
            if frame["type"] == "message" && frame["message"]["id"] != sent.as_str() {
                break frame["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned();
            }
        };
        let requests = stub.received_requests().await.unwrap_or_default();
        (reply, requests.get(before).cloned())
    };
    let llm_url = format!("{}/v1/chat/completions", stub.uri());
    let has_key = |request: &wiremock::Request| {
        request
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };

    // Same origin as the LLM, other paths or methods: no key.
    let (reply, request) = try_with(serde_json::json!({})).await;
    assert_eq!(reply, "listed");
    assert_eq!(has_key(&request.expect("GET /v1/models")), None);
    let files = format!("{}/v1/files", stub.uri());
    let (reply, request) = try_with(serde_json::json!({"method": "POST", "url": files})).await;
    assert_eq!(reply, "posted");
    assert_eq!(has_key(&request.expect("POST /v1/files")), None);
    let (_, request) = try_with(serde_json::json!({"url": llm_url})).await;
    assert_eq!(has_key(&request.expect("GET on the LLM's path")), None);

    // Headers the host owns are refused outright: the fallback, and nothing is sent.
    for header in [
        "Authorization: Bearer forged",
        "Host: internal.example",
        "Proxy-Authorization: Basic x",
        "Cookie: session=1",
        "Transfer-Encoding: chunked",
        "Content-Length: 5",
        "Connection: close",
    ] {
        let (reply, request) = try_with(serde_json::json!({"header": header})).await;
        assert_eq!(reply, FALLBACK, "{header}");
        assert!(request.is_none(), "{header} was sent");
    }

    // The LLM call itself (POST to LLM_API_URL) is the one that carries the key.
    let (reply, request) = try_with(serde_json::json!({"method": "POST", "url": llm_url})).await;
    let request = request.unwrap_or_else(|| panic!("the LLM call was not made: {reply}"));
    assert_eq!(has_key(&request).as_deref(), Some("Bearer sk-test-key"));
}

/// An operator's `llm-responder` replaces the built-in one while its files are there; removing
/// them brings the built-in one back, without a restart.
#[tokio::test]
async fn removing_an_override_of_the_built_in_responder_brings_it_back() {
    let manifest = "name = \"llm-responder\"\nversion = \"9.9.9\"\ndescription = \"override\"\n\
                    [config]\nmessage = \"the override answers\"\n";
    let dir = plugins_dir("llm-responder", "away_message.wasm", manifest);
    let app = app_with_plugin(&dir, "llm-responder", Duration::from_secs(5), &[]).await;
    let user = app.user("viewer").await;
    let version = async || -> String {
        let listed = app.get("/api/plugins", &user.token).await;
        let plugins = listed.body.as_array().expect("array").clone();
        assert_eq!(plugins.len(), 1, "{plugins:?}");
        plugins[0]["version"].as_str().expect("version").to_owned()
    };
    assert_eq!(version().await, "9.9.9");
    let (reply, _) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], "the override answers");

    std::fs::remove_file(dir.path().join("llm-responder.wasm")).expect("remove");
    let give_up = Instant::now() + Duration::from_secs(10);
    while version().await == "9.9.9" {
        assert!(
            Instant::now() < give_up,
            "the built-in responder never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The built-in one answers again (no LLM configured here: the standard message).
    let (reply, _) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], FALLBACK);
}

/// Allowing a host allows the port named with it (or 80 and 443), not every port of the host.
#[tokio::test]
async fn another_port_of_an_allowed_host_is_refused() {
    let allowed = MockServer::start().await;
    let other = MockServer::start().await;
    for stub in [&allowed, &other] {
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_string("reached"))
            .mount(stub)
            .await;
    }
    let manifest = format!(
        "name = \"porty\"\nversion = \"1\"\nallowed_hosts = [\"{host}\"]\n[config]\nmode = \"fetch\"\nurl = \"{url}/\"\n",
        host = allowed.address(),
        url = other.uri()
    );
    let dir = plugins_dir("porty", "hostile.wasm", &manifest);
    let pattern = allowed.address().to_string();
    let app = app_with_plugin(&dir, "porty", Duration::from_secs(3), &[&pattern]).await;
    let (reply, _) = busy_bob_answers(&app).await;
    assert_eq!(reply["content"], FALLBACK);
    assert_eq!(other.received_requests().await.map(|r| r.len()), Some(0));
}

/// A pattern that is not a host (a URL, a wildcard over a top-level domain) rejects the plugin
/// when its manifest is read, with the reason in the log; the server carries on without it.
#[tokio::test]
async fn a_manifest_with_a_bad_host_pattern_is_rejected() {
    let dir = plugins_dir(
        "careless",
        "away_message.wasm",
        "name = \"careless\"\nversion = \"1\"\nallowed_hosts = [\"https://api.example.com/v1\"]\n",
    );
    let app = app_with_plugin(&dir, "careless", Duration::from_secs(3), &[]).await;
    let user = app.user("viewer").await;
    let listed = app.get("/api/plugins", &user.token).await;
    let names: Vec<&str> = listed
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["llm-responder"]);
}

/// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` in the server's environment do not apply to
/// plugins: a proxy would resolve names itself, past the private-address filter. The proxy
/// here is a port nobody listens on, so a plugin request through it could not succeed.
#[tokio::test]
async fn plugin_requests_ignore_proxy_settings() {
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("direct"))
        .mount(&stub)
        .await;
    let manifest = format!(
        "name = \"direct\"\nversion = \"1\"\nallowed_hosts = [\"{host}\"]\n[config]\nmode = \"fetch\"\nurl = \"{url}/\"\n",
        host = stub.address(),
        url = stub.uri()
    );
    let dir = plugins_dir("direct", "hostile.wasm", &manifest);
    let storage = crate::process::Storage::new();
    let (plugins, allowed) = (dir.path().display().to_string(), stub.address().to_string());
    let dead_proxy = "http://127.0.0.1:9";
    let server = crate::process::Server::start(
        &storage,
        &[
            ("PLUGINS_DIR", &plugins),
            ("RESPONDER_PLUGIN", "direct"),
            ("PLUGIN_ALLOWED_HOSTS", &allowed),
            ("HTTP_PROXY", dead_proxy),
            ("http_proxy", dead_proxy),
            ("HTTPS_PROXY", dead_proxy),
            ("ALL_PROXY", dead_proxy),
        ],
    );
    assert_eq!(busy_reply(&server).await, "direct");
}

/// Against a server process: Alice writes to BUSY Bob; Bob's auto-reply, once stored.
async fn busy_reply(server: &crate::process::Server) -> String {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let alice = server.account(&client, "alice").await.token;
    // Plugins compile in the background after the server listens: wait until none is loading.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let plugins: Value = client
            .get(server.url("/api/plugins"))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("plugins")
            .json()
            .await
            .expect("json");
        let loading = plugins
            .as_array()
            .expect("array")
            .iter()
            .any(|p| p["state"] == "loading");
        if !loading {
            break;
        }
        assert!(Instant::now() < give_up, "plugins still loading: {plugins}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob = server.account(&client, "bob").await;
    let (bob_id, bob) = (bob.id, bob.token);
    client
        .put(server.url("/api/user/status"))
        .bearer_auth(&bob)
        .json(&serde_json::json!({"status": "BUSY"}))
        .send()
        .await
        .expect("busy");
    let sent = client
        .post(server.url("/api/chat/send"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"recipient": bob_id, "content": "hi"}))
        .send()
        .await
        .expect("send");
    assert_eq!(sent.status(), StatusCode::OK);
    // The auto-reply is stored within the responder's deadline (10 s).
    let give_up = Instant::now() + Duration::from_secs(11);
    let reply = loop {
        let page: Value = client
            .get(server.url(&format!("/api/chat/messages?with={bob_id}")))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        let auto = page
            .as_array()
            .expect("array")
            .iter()
            .find(|m| m["kind"] == "auto_reply")
            .cloned();
        if let Some(auto) = auto {
            break auto;
        }
        assert!(Instant::now() < give_up, "no auto-reply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    reply["content"].as_str().expect("content").to_owned()
}

/// A plugin cannot forge server log lines (its newlines are escaped) or flood the log (20 lines
/// per call are written, the rest counted).
#[tokio::test]
async fn plugin_log_lines_are_escaped_and_capped() {
    let dir = plugins_dir("loud", "hostile.wasm", &hostile_manifest("loud", "log", ""));
    let storage = crate::process::Storage::new();
    let plugins = dir.path().display().to_string();
    let server = crate::process::Server::start(
        &storage,
        &[("PLUGINS_DIR", &plugins), ("RESPONDER_PLUGIN", "loud")],
    );
    assert_eq!(busy_reply(&server).await, "logged");
    let mut lines = Vec::new();
    loop {
        let line = server
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("the server logs the dropped lines");
        let line = crate::process::strip_ansi(&line);
        let done = line.contains("plugin log lines dropped");
        lines.push(line);
        if done {
            break;
        }
    }
    let from_plugin: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("plugin=loud") && l.contains("line "))
        .collect();
    assert_eq!(from_plugin.len(), 20, "{lines:#?}");
    assert!(
        from_plugin[0].contains("line 0\\nFORGED"),
        "escaped: {}",
        from_plugin[0]
    );
    assert!(!lines.iter().any(|l| l.starts_with("FORGED")), "{lines:#?}");
    assert!(
        lines.last().is_some_and(|l| l.contains("dropped=30")),
        "{lines:#?}"
    );
}

/// The compiled components of the built-in responder and of `PLUGINS_DIR` are kept in
/// `PLUGIN_CACHE_DIR`; the next start reads them instead of compiling (the entries are not
/// written again) and the plugin answers from them.
#[tokio::test]
async fn compiled_plugins_are_kept_for_the_next_start() {
    let manifest = "name = \"away\"\nversion = \"0.1.0\"\n[config]\nmessage = \"Back soon.\"\n";
    let dir = plugins_dir("away", "away_message.wasm", manifest);
    let cache = tempfile::tempdir().expect("cache dir");
    let entries = || {
        let mut found: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(cache.path())
            .expect("cache dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .map(|e| {
                let modified = e.metadata().and_then(|m| m.modified()).expect("mtime");
                (e.file_name().to_string_lossy().into_owned(), modified)
            })
            .collect();
        found.sort();
        found
    };
    let start = || {
        let (plugins, cache) = (dir.path().to_path_buf(), cache.path().to_path_buf());
        TestApp::spawn_configured(move |config| {
            config.responder.plugins_dir = Some(plugins);
            config.responder.plugin_cache_dir = Some(cache);
            config.responder.plugin = "away".into();
            config.sqlite_synchronous = SqliteSynchronous::Normal;
        })
    };

    let first = start().await;
    let written = entries();
    assert_eq!(
        written.len(),
        2,
        "the built-in responder and `away`: {written:?}"
    );
    first.stop().await;

    let second = start().await;
    assert_eq!(entries(), written, "read, not compiled and written again");
    let (reply, _) = busy_bob_answers(&second).await;
    assert_eq!(reply["content"], "Back soon.");
}
