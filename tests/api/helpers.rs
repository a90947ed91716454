//! `TestApp`: the real server on a free port with its own temporary data directory, and its
//! own database: a SQLite file in that directory, or (in the `api_mongo` test binary) a fresh
//! database on the MongoDB at `TEST_MONGODB_URI`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palaver::app::Application;
use palaver::config::{
    Config, JwtSecret, LimitSettings, MongoSettings, MongoUri, RealtimeSettings,
};
use palaver_test_support::{fresh_database_name, test_mongodb_uri};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The secret test servers sign with, so tests can forge tokens the way an attacker would.
pub const TEST_JWT_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
pub const PASSWORD: &str = "correct horse battery";

/// Which store the servers of a test binary use; each crate root (`main.rs`, `mongo.rs`)
/// declares its own `STORE`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreKind {
    Sqlite,
    Mongo,
}

pub struct TestApp {
    pub address: String,
    /// What the server was started with, e.g. to restart it the same way.
    pub config: Config,
    pub client: reqwest::Client,
    pub data_dir: TempDir,
    /// The operator's listener (`METRICS_ADDR`), when the test's configuration sets one.
    operator: Option<String>,
    /// The MongoDB database this app owns and drops when it is dropped (not when stopped:
    /// a restarted app takes it over).
    mongodb: Option<MongoSettings>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

pub struct TestUser {
    pub id: String,
    pub email: String,
    pub token: String,
}

/// A parsed answer: status and JSON body (Null when the body is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_else(|| {
            panic!(
                "expected a JSON {{\"message\"}} body, got {} {}",
                self.status, self.body
            )
        })
    }
}

/// `METRICS_ADDR` on a free port: the operator's listener (`/metrics`, `/plugins`).
pub fn operator_listener() -> Option<std::net::SocketAddr> {
    Some(([127, 0, 0, 1], 0).into())
}

pub fn test_config(data_dir: &Path) -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        jwt_secret: Some(JwtSecret::new(TEST_JWT_SECRET.as_bytes().to_vec()).expect("secret")),
        token_ttl: Duration::from_secs(3600),
        data_dir: data_dir.to_path_buf(),
        sqlite_synchronous: Default::default(),
        mongodb: match crate::STORE {
            StoreKind::Sqlite => None,
            StoreKind::Mongo => Some(fresh_mongo_database()),
        },
        realtime: RealtimeSettings::default(),
        responder: Default::default(),
        limits: LimitSettings::default(),
        cors: Default::default(),
        metrics_addr: None,
        cluster: None,
    }
}

/// `TEST_MONGODB_URI`. Without it there is nothing for the MongoDB test binary to do: it says
/// so loudly and ends, successfully, unless `CI` is set (then it fails).
pub fn mongodb_uri_or_skip() -> String {
    match test_mongodb_uri() {
        Some(uri) => uri,
        None => std::process::exit(0),
    }
}

/// A database of its own on the test MongoDB.
fn fresh_mongo_database() -> MongoSettings {
    MongoSettings {
        uri: MongoUri::parse(&mongodb_uri_or_skip()).expect("TEST_MONGODB_URI is a MongoDB URI"),
        database: Some(fresh_database_name()),
    }
}

/// Drops a test database. `Drop` cannot await and the test's runtime is ending, so this uses
/// a runtime of its own on a thread of its own.
fn drop_mongo_database(settings: MongoSettings) {
    let dropping = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // TEST_MONGODB_URI, not the app's URI: that may lead through a relay that runs on
            // the test's runtime, which this thread is blocking.
            let client = mongodb::Client::with_uri_str(mongodb_uri_or_skip()).await?;
            let name = settings.database.as_deref().expect("a test database name");
            client.database(name).drop().await
        })
    });
    if let Ok(Err(e)) = dropping.join() {
        eprintln!("could not drop a test database: {e}");
    }
}

pub fn unique_email(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}@example.com",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_configured(|_| {}).await
    }

    /// A server whose configuration `adjust` changes first (e.g. shorter timeouts).
    pub async fn spawn_configured(adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let mut config = test_config(data_dir.path());
        adjust(&mut config);
        Self::spawn_with(config, data_dir).await
    }

    pub async fn spawn_with(config: Config, data_dir: TempDir) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            palaver::telemetry::init();
        }
        let mongodb = config.mongodb.clone();
        let kept = config.clone();
        let app = Application::build(config).await.expect("server starts");
        let address = format!("http://{}", app.address());
        let operator = app.metrics_address().map(|at| format!("http://{at}"));
        // Plugins compile in the background; tests start once they are ready.
        let plugins = app.plugins_settled();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = signal.await;
            })
            .await
            .expect("server runs");
        });
        plugins.await;
        Self {
            address,
            config: kept,
            client: reqwest::Client::new(),
            data_dir,
            operator,
            mongodb,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Stops the server gracefully and hands back its data directory, e.g. to restart on it.
    /// Its database is kept for the next server spawned with the same configuration.
    pub async fn stop(mut self) -> TempDir {
        self.mongodb = None;
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"))
    }

    /// A JSON route of the operator's listener; the test must have set `metrics_addr`
    /// (see [`operator_listener`]).
    pub async fn operator_get(&self, path: &str) -> Value {
        let base = self.operator.as_deref().expect("set config.metrics_addr");
        let response = self
            .client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("operator request");
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("JSON")
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("{}/ws{query}", self.address.replacen("http://", "ws://", 1))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::answer(request.send().await.expect("request reaches the server")).await
    }

    pub async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, body }
    }

    pub async fn readyz(&self) -> Answer {
        self.request(Method::GET, "/readyz", None, None).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn register(&self, email: &str, password: &str) -> Answer {
        self.post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Answer {
        self.post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// A freshly registered, logged-in user.
    pub async fn user(&self, label: &str) -> TestUser {
        let email = unique_email(label);
        let registered = self.register(&email, PASSWORD).await;
        assert_eq!(
            registered.status,
            StatusCode::CREATED,
            "{}",
            registered.body
        );
        let login = self.login(&email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        TestUser {
            id: registered.body["id"].as_str().expect("id").to_owned(),
            email,
            token: login.body["token"].as_str().expect("token").to_owned(),
        }
    }

    pub async fn send(&self, from: &TestUser, to: &TestUser, content: &str) -> Answer {
        self.post(
            "/api/chat/send",
            Some(&from.token),
            json!({"recipient": to.id, "content": content}),
        )
        .await
    }

    /// Sends and returns the new message's id, asserting success.
    pub async fn send_ok(&self, from: &TestUser, to: &TestUser, content: &str) -> String {
        let sent = self.send(from, to, content).await;
        assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
        sent.body["id"].as_str().expect("id").to_owned()
    }

    /// `PUT /api/user/status` as `user`.
    pub async fn set_status(&self, user: &TestUser, status: &str) -> Answer {
        self.request(
            Method::PUT,
            "/api/user/status",
            Some(&user.token),
            Some(json!({"status": status})),
        )
        .await
    }

    pub async fn messages(&self, user: &TestUser, query: &str) -> Answer {
        self.get(&format!("/api/chat/messages{query}"), &user.token)
            .await
    }

    /// Every password hash in the store, read behind the server's back.
    pub async fn stored_password_hashes(&self) -> Vec<String> {
        match &self.mongodb {
            None => {
                let db = self.data_dir.path().join("palaver.db");
                let conn = rusqlite::Connection::open(db).expect("open db");
                let mut query = conn
                    .prepare("SELECT password_hash FROM users")
                    .expect("query");
                query
                    .query_map([], |row| row.get(0))
                    .expect("rows")
                    .collect::<Result<_, _>>()
                    .expect("hashes")
            }
            Some(settings) => {
                use futures_util::TryStreamExt;
                let client = mongodb::Client::with_uri_str(settings.uri.expose())
                    .await
                    .expect("connect");
                let users = client
                    .database(settings.database.as_deref().expect("test database"))
                    .collection::<mongodb::bson::Document>("users");
                let documents: Vec<_> = users
                    .find(mongodb::bson::doc! {})
                    .await
                    .expect("find")
                    .try_collect()
                    .await
                    .expect("users");
                documents
                    .iter()
                    .map(|user| user.get_str("password_hash").expect("hash").to_owned())
                    .collect()
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(settings) = self.mongodb.take() {
            drop_mongo_database(settings);
        }
    }
}
