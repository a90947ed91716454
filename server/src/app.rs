//! Start-up, wiring only: open the store, create the services and hand each what it uses, bind.
//! `server` serves what this builds.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::accounts::Accounts;
use crate::api::AppState;
use crate::auth::{PasswordHasher, Sessions, TokenService, load_or_create_secret};
use crate::cluster::{Cluster, Parts as ClusterParts};
use crate::config::Config;
use crate::conversations::Conversations;
use crate::limits::Limits;
use crate::messaging::{BusyRecipients, FanOut, Messaging, Recipients, Sequencer, Writer};
use crate::metrics::MetricsServer;
use crate::realtime::{ConnectionCaps, Hub, Live, LocalFanOut, socketio};
use crate::responder::{Moderation, Responder, watch_plugins_dir};
use crate::server::Server;
use crate::store::{ClusterLog, MongoStore, SqliteStore, Store};

pub struct Application {
    server: Server,
    plugins: Arc<crate::wasm::PluginHost>,
}

impl Application {
    /// Everything that can fail at start-up fails here, before the port is announced.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First: the recorder must exist before anything (the cluster merger) records.
        let metrics = match config.metrics_addr {
            Some(address) => Some(MetricsServer::bind(address).await?),
            None => None,
        };
        create_private_dir(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        // Before the database: on a disk too full for both, the one-line error names the
        // smaller, clearer thing (the secret's file).
        let secret = load_or_create_secret(config.jwt_secret.clone(), &config.data_dir)?;
        let (store, cluster_log): (Arc<dyn Store>, Option<Arc<dyn ClusterLog>>) =
            match &config.mongodb {
                Some(mongo) => {
                    let mut mongo = MongoStore::connect(mongo).await?;
                    if let Some(cluster) = &config.cluster {
                        mongo = mongo.with_origin(cluster.node_id.clone());
                    }
                    let mongo = Arc::new(mongo);
                    (mongo.clone(), Some(mongo))
                }
                None => (
                    Arc::new(
                        SqliteStore::open(
                            &config.data_dir.join("palaver.db"),
                            config.sqlite_synchronous,
                        )
                        .await?,
                    ),
                    None,
                ),
            };
        let hub = Hub::new(
            config.realtime.queue_capacity,
            ConnectionCaps {
                per_user: config.limits.connections_per_user,
                total: config.limits.connections_total,
            },
        );
        let limits = Arc::new(Limits::new(&config.limits));
        let ids = Arc::new(Sequencer::new());
        let local: Arc<dyn FanOut> = LocalFanOut::new(hub.clone());
        let recipients = Arc::new(Recipients::default());
        let (fanout, orphans): (Arc<dyn FanOut>, _) = match (&config.cluster, cluster_log) {
            (None, _) => (local, None),
            (Some(settings), Some(log)) => {
                let (orphans, orphaned) = tokio::sync::mpsc::unbounded_channel();
                let parts = ClusterParts {
                    store: store.clone(),
                    log,
                    local,
                    ids: ids.clone(),
                    orphans,
                    responder_timeout: config.responder.timeout,
                    recipients: recipients.clone(),
                };
                (Cluster::join(settings, parts).await?, Some(orphaned))
            }
            (Some(_), None) => anyhow::bail!("MONGODB_URI: a cluster needs MongoDB"),
        };
        let writer = Arc::new(Writer::start(store.clone(), fanout.clone(), ids));
        let responder = Responder::new(
            config.responder.clone(),
            store.clone(),
            writer.clone(),
            fanout.clone(),
        )
        .context("starting the responder")?;
        if let Some(mut orphaned) = orphans {
            let responder = responder.clone();
            tokio::spawn(async move {
                while let Some(message) = orphaned.recv().await {
                    responder.clone().orphaned(message);
                }
            });
        }
        let moderation = Arc::new(Moderation::new(
            &responder,
            store.clone(),
            &config.responder,
        ));
        let messaging = Arc::new(Messaging::new(
            store.clone(),
            writer,
            fanout.clone(),
            responder.clone(),
            moderation,
            limits.clone(),
            recipients,
        ));
        let plugins_host = responder.plugins().clone();
        if let Some(dir) = &config.responder.plugins_dir {
            watch_plugins_dir(responder.plugins(), dir.clone()).await;
        }
        let sessions = Arc::new(Sessions::new(
            TokenService::new(&secret, config.token_ttl),
            store.clone(),
        ));
        let accounts = Arc::new(Accounts::new(
            store.clone(),
            Arc::new(PasswordHasher::new(
                config.limits.hash_concurrency,
                config.limits.hash_wait,
            )?),
            sessions.clone(),
            limits.clone(),
            hub.clone(),
        ));
        let conversations = Arc::new(Conversations::new(
            store.clone(),
            fanout,
            limits.clone(),
            config.limits.max_group_members,
        ));
        let live = Live {
            sessions: sessions.clone(),
            hub,
            messaging: messaging.clone(),
            conversations: conversations.clone(),
        };
        let state = AppState {
            conversations,
            messaging,
            responder,
            store: store.clone(),
            accounts,
            sessions,
            limits: limits.clone(),
        };
        crate::limits::sweep_periodically(Arc::downgrade(&limits));

        let address = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let address = listener.local_addr().context("reading the bound address")?;
        Ok(Self {
            plugins: plugins_host,
            server: Server {
                listener,
                address,
                state,
                live,
                realtime: config.realtime,
                sessions: socketio::SessionCounter::new(config.limits.connections_total),
                origins: config.cors,
                metrics,
            },
        })
    }

    /// The address actually bound (the port is the real one when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.server.address
    }

    /// Completes once the plugins found at start (and any dropped in since) are compiled. The
    /// server listens and answers meanwhile; their users get the fallback until then.
    pub fn plugins_settled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.plugins.settled()
    }

    /// Where `/metrics` is served, when `METRICS_ADDR` is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.server.metrics.as_ref().and_then(|m| m.address().ok())
    }

    /// Serves until `shutdown` completes, then closes live connections and lets in-flight
    /// requests finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        self.server.serve(shutdown).await
    }
}

/// The data directory holds the database and possibly the generated JWT secret: only the
/// server's user may enter it (0700), whether we create it or it exists already.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
