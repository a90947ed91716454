//! A database outage as the server sees it: the server reaches MongoDB through a TCP relay
//! that the test cuts (every connection dropped, new ones refused) and later restores.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use palaver::config::MongoUri;
use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{TestApp, mongodb_uri_or_skip};

/// Longer than the store's 3 s server-selection timeout, with a margin for a busy machine.
const PROMPT_FAILURE: Duration = Duration::from_secs(10);
/// How long the server may take to notice that the database is back.
const RECOVERY: Duration = Duration::from_secs(30);

struct Relay {
    address: SocketAddr,
    target: SocketAddr,
    running: Option<JoinHandle<()>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let address = listener.local_addr().expect("relay address");
        Self {
            address,
            target,
            running: Some(tokio::spawn(relay(listener, target))),
        }
    }

    /// Drops every relayed connection and stops listening: to the server, the database is gone.
    fn cut(&mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.address)
            .await
            .expect("rebind the relay");
        self.running = Some(tokio::spawn(relay(listener, self.target)));
    }

    /// `uri` with its hosts replaced by this relay (credentials and options kept).
    fn uri_through(&self, uri: &MongoUri) -> MongoUri {
        let raw = uri.expose();
        let hosts_start = raw.find("://").expect("scheme") + 3;
        let hosts_start = raw[hosts_start..]
            .rfind('@')
            .map_or(hosts_start, |at| hosts_start + at + 1);
        let hosts_end = raw[hosts_start..]
            .find(['/', '?'])
            .map_or(raw.len(), |end| hosts_start + end);
        let rest = &raw[hosts_end..];
        let rest = if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        };
        // Talk to the relay only, never to replica-set members it might announce.
        let separator = if rest.contains('?') { '&' } else { '?' };
        MongoUri::parse(&format!(
            "mongodb://{}{}{rest}{separator}directConnection=true",
            &raw[raw.find("://").expect("scheme") + 3..hosts_start],
            self.address
        ))
        .expect("relay URI")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Dropping this future (abort) drops the listener and, with the `JoinSet`, every connection.
async fn relay(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The first host of `TEST_MONGODB_URI`, resolved.
async fn database_address() -> SocketAddr {
    let uri = mongodb_uri_or_skip();
    let options = mongodb::options::ClientOptions::parse(&uri)
        .await
        .expect("TEST_MONGODB_URI parses");
    let host = options.hosts.first().expect("a host").to_string();
    tokio::net::lookup_host(host)
        .await
        .expect("resolve the database host")
        .next()
        .expect("an address")
}

async fn wait_until_ready(app: &TestApp) {
    let started = Instant::now();
    loop {
        if app.readyz().await.status == StatusCode::OK {
            return;
        }
        assert!(
            started.elapsed() < RECOVERY,
            "not ready {RECOVERY:?} after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_outage_answers_503_promptly_and_the_server_recovers_by_itself() {
    let mut relay = Relay::start(database_address().await).await;
    let app = TestApp::spawn_configured(|config| {
        let mongo = config.mongodb.as_mut().expect("a MongoDB configuration");
        mongo.uri = relay.uri_through(&mongo.uri);
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.send_ok(&alice, &bob, "before the outage").await;

    relay.cut();
    let started = Instant::now();
    // Each waits for the database up to the store's timeout; they wait side by side.
    let (sent, login, history, ready) = tokio::join!(
        app.send(&alice, &bob, "during the outage"),
        app.login(&alice.email, crate::helpers::PASSWORD),
        app.messages(&bob, ""),
        app.readyz(),
    );
    assert!(
        started.elapsed() < PROMPT_FAILURE,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        sent.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        sent.body
    );
    assert_eq!(
        sent.message(),
        "The database is unavailable; please try again shortly"
    );
    assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(history.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.message(), "The database is unavailable");

    relay.restore().await;
    wait_until_ready(&app).await;
    app.send_ok(&alice, &bob, "after the outage").await;
    let history = app.messages(&bob, "").await;
    assert_eq!(history.status, StatusCode::OK);
    let contents: Vec<&str> = history
        .body
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect();
    assert_eq!(contents, ["before the outage", "after the outage"]);
}
