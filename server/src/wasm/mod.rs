//! The wasmtime host for responder plugins: one engine, one compiled component and
//! `InstancePre` per plugin, a fresh store per call under every limit at once:
//! - a wall-clock deadline: epoch interruption (10 ms ticker; the callback compares against the
//!   deadline `Instant` and yields to tokio in between) plus an outer `timeout_at`;
//! - fuel, as a CPU backstop;
//! - a memory cap (`StoreLimits`, trapping on a failed grow);
//! - outbound HTTP only through `http-fetch` and its [`NetworkPolicy`];
//! - an empty WASI context: no files, environment, sockets or arguments; stdout/stderr are
//!   captured and written to the log.
//!
//! Every failure is a [`PluginError`]; the caller sends the standard message instead.

mod manifest;
mod network;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use manifest::Manifest;
pub use network::{HostRules, LlmEndpoint, NetworkPolicy};

wasmtime::component::bindgen!({
    path: "../plugins/wit",
    world: "responder",
    imports: { default: async },
    exports: { default: async },
});

pub use self::palaver::responder::host::{HttpRequest, HttpResponse, LogLevel};
pub use self::palaver::responder::types::ChatMessage;

/// The default plugin, built from `plugins/llm-responder` by the build script.
pub const LLM_RESPONDER_WASM: &[u8] = include_bytes!(env!("PALAVER_LLM_RESPONDER_WASM"));
/// Where the build script put every plugin it built (examples and test fixtures included).
pub const PLUGIN_BUILD_DIR: &str = env!("PALAVER_PLUGIN_BUILD_DIR");

/// Calls that may run at once; the pooling allocator keeps this many instances ready.
pub const MAX_CONCURRENT_CALLS: u32 = 64;
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Threads that run guest code.
const PLUGIN_THREADS: usize = 2;
/// Captured stdout/stderr per call.
const MAX_CAPTURED_OUTPUT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("the plugin ran out of time")]
    Timeout,
    #[error("the plugin trapped: {0:#}")]
    Trap(anyhow::Error),
    #[error("the plugin returned an error: {0}")]
    Refused(String),
}

/// A plugin ready to run.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    pre: ResponderPre<CallState>,
    granted: Arc<HostRules>,
}

/// Per-call state inside the store.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: String,
    granted: Arc<HostRules>,
    network: NetworkPolicy,
    deadline: Instant,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl self::palaver::responder::types::Host for CallState {}

impl self::palaver::responder::host::Host for CallState {
    async fn log(&mut self, level: LogLevel, message: String) {
        let message: String = message.chars().take(2000).collect();
        let plugin = &self.plugin;
        match level {
            LogLevel::Debug => tracing::debug!(%plugin, "{message}"),
            LogLevel::Info => tracing::info!(%plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(%plugin, "{message}"),
            LogLevel::Error => tracing::error!(%plugin, "{message}"),
        }
    }

    async fn http_fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        let result = self
            .network
            .fetch(&self.granted, self.deadline, request)
            .await;
        if let Err(reason) = &result {
            tracing::info!(plugin = %self.plugin, %reason, "plugin http-fetch refused or failed");
        }
        result
    }
}

pub struct PluginHost {
    /// Guest code runs here, never on the server's own workers: a plugin that computes for its
    /// whole budget only slows other plugins, not requests or deliveries.
    runtime: Option<tokio::runtime::Runtime>,
    engine: Engine,
    linker: Linker<CallState>,
    network: NetworkPolicy,
    plugins: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
}

impl PluginHost {
    pub fn new(network: NetworkPolicy) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_CONCURRENT_CALLS)
            .total_core_instances(MAX_CONCURRENT_CALLS * 8)
            .total_memories(MAX_CONCURRENT_CALLS * 4)
            .total_tables(MAX_CONCURRENT_CALLS * 8)
            .max_memory_size((manifest::MAX_MEMORY_MB as usize) << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            // Reserve what a memory may grow to, not the default 4 GiB per slot.
            .memory_reservation(manifest::MAX_MEMORY_MB << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        Responder::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the host interface")?;

        start_epoch_ticker(&engine).context("starting the wasm epoch ticker")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(PLUGIN_THREADS)
            .thread_name("wasm-plugin")
            .enable_all()
            .build()
            .context("starting the plugin runtime")?;
        Ok(Arc::new(Self {
            runtime: Some(runtime),
            engine,
            linker,
            network,
            plugins: RwLock::new(HashMap::new()),
        }))
    }

    /// Compiles a component and prepares its instances; replaces a plugin of the same name.
    pub fn load(&self, manifest: Manifest, wasm: &[u8]) -> anyhow::Result<Arc<LoadedPlugin>> {
        let component = Component::new(&self.engine, wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling plugin {}", manifest.name))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "plugin {} needs imports the host does not offer",
                    manifest.name
                )
            })?;
        let pre = ResponderPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("plugin {} does not export `respond`", manifest.name))?;
        let plugin = Arc::new(LoadedPlugin {
            granted: self.network.grant(&manifest.allowed_hosts),
            manifest,
            pre,
        });
        self.write()
            .insert(plugin.manifest.name.clone(), plugin.clone());
        Ok(plugin)
    }

    /// Loads `<name>.wasm` with its `<name>.toml`.
    pub fn load_file(&self, wasm_path: &Path) -> anyhow::Result<Arc<LoadedPlugin>> {
        let manifest_path = wasm_path.with_extension("toml");
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        let manifest = Manifest::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
        let wasm =
            std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
        self.load(manifest, &wasm)
    }

    pub fn unload(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut plugins: Vec<_> = self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        plugins.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        plugins
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<LoadedPlugin>>> {
        self.plugins.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `respond` in a fresh instance on the plugin runtime; gives up at `deadline`
    /// whatever the plugin is doing.
    pub async fn respond(
        self: &Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        request: RespondRequest,
        deadline: Instant,
    ) -> Result<Option<String>, PluginError> {
        let Some(runtime) = &self.runtime else {
            return Err(PluginError::Refused("the plugin host is shut down".into()));
        };
        let host = self.clone();
        let call = runtime.spawn(async move { host.run(&plugin, request, deadline).await });
        let abort = call.abort_handle();
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join)) => Err(PluginError::Trap(anyhow::anyhow!(
                "plugin task failed: {join}"
            ))),
            Err(_) => {
                abort.abort();
                Err(PluginError::Timeout)
            }
        }
    }

    /// One call on the current runtime (no hop to the plugin runtime). `respond` uses this on
    /// the plugin runtime; benchmarks call it directly to time instantiate + call alone.
    pub async fn run(
        &self,
        plugin: &LoadedPlugin,
        request: RespondRequest,
        deadline: Instant,
    ) -> Result<Option<String>, PluginError> {
        let stdout = MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT);
        let stderr = MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size((plugin.manifest.memory_mb as usize) << 20)
                .trap_on_grow_failure(true)
                .build(),
            plugin: plugin.manifest.name.clone(),
            granted: plugin.granted.clone(),
            network: self.network.clone(),
            deadline,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(plugin.manifest.fuel)
            .map_err(|e| PluginError::Trap(e.into()))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance.call_respond(&mut store, &request).await
        };
        let outcome = tokio::time::timeout_at(deadline.into(), call).await;
        // After a timeout the store cannot be entered again; it is dropped with this function.
        log_output(&plugin.manifest.name, "stdout", &stdout);
        log_output(&plugin.manifest.name, "stderr", &stderr);
        match outcome {
            Err(_) => Err(PluginError::Timeout),
            Ok(Err(trap)) if Instant::now() >= deadline => {
                tracing::debug!(error = %trap, "plugin interrupted at the deadline");
                Err(PluginError::Timeout)
            }
            Ok(Err(trap)) => Err(PluginError::Trap(trap.into())),
            Ok(Ok(Err(reason))) => Err(PluginError::Refused(reason)),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
    }
}

impl Drop for PluginHost {
    /// A runtime may not be dropped (blocking) inside another one; let its threads wind down.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn log_output(plugin: &str, stream: &str, pipe: &MemoryOutputPipe) {
    let contents = pipe.contents();
    if !contents.is_empty() {
        let text = String::from_utf8_lossy(&contents);
        tracing::info!(%plugin, %stream, "{}", text.trim_end());
    }
}

/// Advances the engine's epoch every 10 ms, so running guests reach their deadline check.
/// Stops when the engine is dropped. Without it no deadline would stop a guest, so failing to
/// start it fails start-up.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
}
