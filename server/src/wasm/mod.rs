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

mod address;
mod cache;
mod fetch;
mod manifest;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, Strategy, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use crate::config::HostPattern;
pub use cache::ComponentCache;
pub use fetch::{HostRules, LlmEndpoint, NetworkPolicy};
pub use manifest::Manifest;

wasmtime::component::bindgen!({
    path: "../plugins/wit",
    world: "responder",
    imports: { default: async },
    exports: { default: async },
    with: { "palaver:responder/host.body-stream": fetch::BodyStream },
});

/// The `moderator` world of the same package: its interfaces are the responder's.
mod moderator {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "moderator",
        imports: { default: async },
        exports: { default: async },
        with: {
            "palaver:responder/types": super::palaver::responder::types,
            "palaver:responder/host": super::palaver::responder::host,
        },
    });
}

/// The first version of the contract (`plugins/wit-0.1.0`), linked beside the current one so its
/// plugins keep loading. Its `respond` has the current shape, so one `ResponderPre` runs both.
mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../plugins/wit-0.1.0",
        world: "responder",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use self::palaver::responder::host::{HttpRequest, HttpResponse, HttpStreamResponse, LogLevel};
pub use self::palaver::responder::types::{ChatMessage, Destination, ModerateRequest, Verdict};
use moderator::ModeratorPre;

/// The default plugin, built from `plugins/llm-responder` by the build script.
pub const LLM_RESPONDER_WASM: &[u8] = include_bytes!(env!("PALAVER_LLM_RESPONDER_WASM"));
/// Where the build script put every plugin it built (examples and test fixtures included).
pub const PLUGIN_BUILD_DIR: &str = env!("PALAVER_PLUGIN_BUILD_DIR");

/// Calls that may run at once; the pooling allocator keeps this many instances ready.
pub const MAX_CONCURRENT_CALLS: u32 = 64;
/// Bytes of a memory or table slot kept mapped between calls (see `pagemap_scan` below).
const KEEP_RESIDENT: usize = 32 << 20;
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

/// A plugin ready to run: a responder, a moderator, or both (whichever functions it exports).
pub struct LoadedPlugin {
    pub manifest: Manifest,
    responder: Option<ResponderPre<CallState>>,
    moderator: Option<ModeratorPre<CallState>>,
    granted: Arc<HostRules>,
    load_id: u64,
}

impl LoadedPlugin {
    /// Whether it exports `respond` (it may answer for BUSY users).
    pub fn is_responder(&self) -> bool {
        self.responder.is_some()
    }

    /// Whether it exports `moderate` (it may be named in `MODERATION_PLUGINS`).
    pub fn is_moderator(&self) -> bool {
        self.moderator.is_some()
    }

    /// Different for every load, even of the same file: a record about one load (its failures)
    /// does not follow the plugin into the next.
    pub fn load_id(&self) -> u64 {
        self.load_id
    }
}

/// Per-call state inside the store.
struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CallLimits,
    /// Lines this call has logged; past [`MAX_LOG_LINES`] the rest are counted, not written.
    logged: u32,
    plugin: String,
    granted: Arc<HostRules>,
    network: NetworkPolicy,
    deadline: Instant,
    /// Where a responder's `progress` goes (none: nobody is listening).
    progress: Option<Progress>,
}

/// A responder's latest text so far (`None` until it reports any).
pub type Progress = tokio::sync::watch::Sender<Option<String>>;

/// What a call asks of a plugin.
enum Invocation {
    Respond(RespondRequest, Option<Progress>),
    Moderate(ModerateRequest),
}

/// What it answered.
enum Answer {
    Reply(Option<String>),
    Verdict(Verdict),
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
        self.logged = self.logged.saturating_add(1);
        if self.logged > MAX_LOG_LINES {
            return;
        }
        // One line, escaped: a plugin cannot forge log lines with newlines or escape codes.
        let message: String = message
            .chars()
            .take(MAX_LOG_CHARS)
            .flat_map(char::escape_debug)
            .collect();
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

    async fn http_fetch_stream(
        &mut self,
        request: HttpRequest,
    ) -> Result<HttpStreamResponse, String> {
        let opened = self
            .network
            .open(&self.granted, self.deadline, request)
            .await;
        let (status, headers, body) = opened.inspect_err(|reason| {
            tracing::info!(plugin = %self.plugin, %reason, "plugin http-fetch-stream refused or failed");
        })?;
        let body = self
            .table
            .push(body)
            .map_err(|e| format!("too many open responses: {e}"))?;
        Ok(HttpStreamResponse {
            status,
            headers,
            body,
        })
    }

    async fn progress(&mut self, text_so_far: String) {
        if let Some(progress) = &self.progress
            && text_so_far.chars().count() <= crate::domain::CONTENT_MAX
        {
            progress.send_replace(Some(text_so_far));
        }
    }
}

impl self::palaver::responder::host::HostBodyStream for CallState {
    async fn next(
        &mut self,
        stream: wasmtime::component::Resource<fetch::BodyStream>,
    ) -> Result<Option<Vec<u8>>, String> {
        let body = self
            .table
            .get_mut(&stream)
            .map_err(|e| format!("no such response: {e}"))?;
        body.next().await
    }

    async fn drop(
        &mut self,
        stream: wasmtime::component::Resource<fetch::BodyStream>,
    ) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

impl self::v0_1::palaver::responder::types::Host for CallState {}

/// A 0.1.0 plugin's imports are the current ones under their old names.
impl self::v0_1::palaver::responder::host::Host for CallState {
    async fn log(&mut self, level: v0_1::palaver::responder::host::LogLevel, message: String) {
        use v0_1::palaver::responder::host::LogLevel as Old;
        let level = match level {
            Old::Debug => LogLevel::Debug,
            Old::Info => LogLevel::Info,
            Old::Warn => LogLevel::Warn,
            Old::Error => LogLevel::Error,
        };
        self::palaver::responder::host::Host::log(self, level, message).await;
    }

    async fn http_fetch(
        &mut self,
        request: v0_1::palaver::responder::host::HttpRequest,
    ) -> Result<v0_1::palaver::responder::host::HttpResponse, String> {
        let request = HttpRequest {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        self::palaver::responder::host::Host::http_fetch(self, request)
            .await
            .map(|r| v0_1::palaver::responder::host::HttpResponse {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
    }
}

/// Log lines one call may write, and how long each may be.
const MAX_LOG_LINES: u32 = 20;
const MAX_LOG_CHARS: usize = 1_000;

/// A call's resource limits. `StoreLimits` caps each linear memory on its own; a component may
/// hold several memories (and instances), so the manifest's `memory_mb` is also enforced on
/// their sum here, and the counts are capped so one call cannot take the pool's slots.
struct CallLimits {
    each: StoreLimits,
    budget: usize,
    used: usize,
}

impl CallLimits {
    fn new(budget: usize) -> Self {
        Self {
            each: StoreLimitsBuilder::new()
                .memory_size(budget)
                .instances(MAX_INSTANCES_PER_CALL)
                .memories(MAX_MEMORIES_PER_CALL)
                .tables(MAX_TABLES_PER_CALL)
                .trap_on_grow_failure(true)
                .build(),
            budget,
            used: 0,
        }
    }
}

/// Per call: more than the examples create (a Rust component a handful of core instances,
/// componentize-py's 14; with `--stub-wasi` it would be 38, see plugins/examples/py-away), far
/// less than the pool.
const MAX_INSTANCES_PER_CALL: usize = 32;
const MAX_MEMORIES_PER_CALL: usize = 4;
const MAX_TABLES_PER_CALL: usize = 32;

impl wasmtime::ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.each.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        let total = self.used - current.min(self.used) + desired;
        if total > self.budget {
            wasmtime::bail!(
                "the plugin's memories would exceed {} bytes in total",
                self.budget
            );
        }
        self.used = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.each.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.each.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.each.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.each.instances()
    }

    fn tables(&self) -> usize {
        self.each.tables()
    }

    fn memories(&self) -> usize {
        self.each.memories()
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
    /// Plugins compiled into the binary: unloading a `PLUGINS_DIR` plugin of the same name
    /// brings these back.
    builtins: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
    /// Compiled components from earlier starts (`PLUGIN_CACHE_DIR`), if kept.
    cache: Option<ComponentCache>,
    /// Plugins whose files were read and whose code is being compiled, by name.
    loading: RwLock<HashMap<String, Manifest>>,
    /// True while nothing is being compiled.
    settled: tokio::sync::watch::Sender<bool>,
    /// Itself, for the background compiles to come back to.
    me: std::sync::Weak<PluginHost>,
    /// Winch's engine and linker: big plugins start on its code (compiled several times
    /// faster than Cranelift's) while Cranelift compiles theirs in the background.
    baseline: (Engine, Linker<CallState>),
    /// Background Cranelift compiles under way.
    optimizing: std::sync::atomic::AtomicUsize,
    /// Held by the one background compile that runs.
    optimize_turn: std::sync::Mutex<()>,
}

/// An engine for one compiler, with every limit, its linker and its epoch ticker.
fn tier(
    pool: &PoolingAllocationConfig,
    strategy: Strategy,
) -> anyhow::Result<(Engine, Linker<CallState>)> {
    let mut config = Config::new();
    config
        .strategy(strategy)
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        // Reserve what a memory may grow to, not the default 4 GiB per slot.
        .memory_reservation(manifest::MAX_MEMORY_MB << 20)
        // Cranelift compiles big plugins in the background, on one thread: spread over wasmtime's
        // shared worker pool, it would queue a newly dropped plugin's Winch compile behind it
        // (a Python engine dropped just after a JavaScript one waited 11 s instead of 2).
        .parallel_compilation(strategy == Strategy::Winch)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool.clone()));
    let engine = Engine::new(&config)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("creating the wasmtime engine ({strategy:?})"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    Responder::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)
        .context("linking the host interface")?;
    v0_1::Responder::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)
        .context("linking the 0.1.0 host interface")?;
    start_epoch_ticker(&engine).context("starting the wasm epoch ticker")?;
    Ok((engine, linker))
}

/// Components at least this big start on Winch's code; smaller ones compile with Cranelift
/// at once (a Rust plugin of 100 KB takes tens of milliseconds).
const TIERED_FROM_BYTES: usize = 1 << 20;

impl PluginHost {
    pub fn new(network: NetworkPolicy, cache: Option<ComponentCache>) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_CONCURRENT_CALLS)
            .total_core_instances(MAX_CONCURRENT_CALLS * 8)
            .total_memories(MAX_CONCURRENT_CALLS * 4)
            .total_tables(MAX_CONCURRENT_CALLS * 8)
            .max_memory_size((manifest::MAX_MEMORY_MB as usize) << 20)
            // Reset a used slot by restoring only the pages the call dirtied (PAGEMAP_SCAN,
            // Linux 6.7+; older kernels fall back to madvise): the next call finds the
            // JavaScript or Python heap image resident instead of faulting it all back in.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        let (engine, linker) = tier(&pool, Strategy::Cranelift)?;
        let baseline = tier(&pool, Strategy::Winch)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(PLUGIN_THREADS)
            .thread_name("wasm-plugin")
            .enable_all()
            .build()
            .context("starting the plugin runtime")?;
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            runtime: Some(runtime),
            engine,
            linker,
            baseline,
            optimizing: std::sync::atomic::AtomicUsize::new(0),
            optimize_turn: std::sync::Mutex::new(()),
            network,
            plugins: RwLock::new(HashMap::new()),
            builtins: RwLock::new(HashMap::new()),
            cache,
            loading: RwLock::new(HashMap::new()),
            settled: tokio::sync::watch::Sender::new(true),
        }))
    }

    /// Compiles a component and prepares its instances; replaces a plugin of the same name.
    /// A big one with nothing cached starts on Winch's code and is swapped to Cranelift's when
    /// that is ready (see [`Self::settled`]).
    pub fn load(&self, manifest: Manifest, wasm: &[u8]) -> anyhow::Result<Arc<LoadedPlugin>> {
        let cached = self.cached(&manifest, wasm);
        if cached.is_some() || wasm.len() < TIERED_FROM_BYTES {
            let component = match cached {
                Some(component) => component,
                None => self.compile(&manifest, wasm)?,
            };
            return self.register(manifest, &component, &self.linker, None);
        }
        let (engine, linker) = &self.baseline;
        let started = Instant::now();
        let component = Component::new(engine, wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling plugin {} (Winch)", manifest.name))?;
        let plugin = self.register(manifest, &component, linker, None)?;
        tracing::info!(plugin = %plugin.manifest.name, elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin ready on Winch's code; Cranelift's follows");
        self.optimize_later(&plugin, wasm.to_vec());
        Ok(plugin)
    }

    /// Cranelift's code for `wasm` from the cache, if this server put it there.
    fn cached(&self, manifest: &Manifest, wasm: &[u8]) -> Option<Component> {
        let component = self.cache.as_ref()?.get(&self.engine, wasm)?;
        tracing::debug!(plugin = %manifest.name, "compiled plugin taken from the cache");
        Some(component)
    }

    /// Cranelift's code for `wasm`, kept in the cache.
    fn compile(&self, manifest: &Manifest, wasm: &[u8]) -> anyhow::Result<Component> {
        let component = Component::new(&self.engine, wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling plugin {}", manifest.name))?;
        if let Some(cache) = &self.cache {
            cache.put(&self.engine, wasm, &component);
        }
        Ok(component)
    }

    /// Compiles `plugin` with Cranelift on a thread of its own and swaps it in, unless the
    /// plugin was replaced or unloaded meanwhile.
    fn optimize_later(&self, plugin: &Arc<LoadedPlugin>, wasm: Vec<u8>) {
        use std::sync::atomic::Ordering;
        self.optimizing.fetch_add(1, Ordering::SeqCst);
        self.settled.send_replace(false);
        let (me, manifest, load_id) = (self.me.clone(), plugin.manifest.clone(), plugin.load_id);
        let spawned = std::thread::Builder::new()
            .name("wasm-optimize".into())
            .spawn(move || {
                let Some(host) = me.upgrade() else { return };
                // One at a time, on this one thread: plugins still waiting for Winch keep the
                // other cores.
                let _turn = crate::sync::lock(&host.optimize_turn);
                let started = Instant::now();
                let swapped = host.compile(&manifest, &wasm).and_then(|component| {
                    host.register(manifest.clone(), &component, &host.linker, Some(load_id))
                });
                match swapped {
                    Ok(_) => tracing::info!(plugin = %manifest.name,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "plugin now runs Cranelift's code"),
                    Err(e) => tracing::warn!(plugin = %manifest.name, error = %format!("{e:#}"),
                        "plugin stays on Winch's code"),
                }
                if host.optimizing.fetch_sub(1, Ordering::SeqCst) == 1
                    && crate::sync::read(&host.loading).is_empty()
                {
                    host.settled.send_replace(true);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start compiling with Cranelift; the plugin stays on Winch's code");
            self.optimizing.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Prepares `component`'s instances and makes it the plugin of its name. With `replacing`,
    /// only in place of that very load (same id: its health record stays), which must still be
    /// the current one.
    fn register(
        &self,
        manifest: Manifest,
        component: &Component,
        linker: &Linker<CallState>,
        replacing: Option<u64>,
    ) -> anyhow::Result<Arc<LoadedPlugin>> {
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "plugin {} needs imports the host does not offer",
                    manifest.name
                )
            })?;
        let responder = ResponderPre::new(instance_pre.clone()).ok();
        let moderator = ModeratorPre::new(instance_pre).ok();
        if responder.is_none() && moderator.is_none() {
            anyhow::bail!(
                "plugin {} exports neither `respond` nor `moderate` (of palaver:responder)",
                manifest.name
            );
        }
        static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let plugin = Arc::new(LoadedPlugin {
            granted: self.network.grant(&manifest.allowed_hosts),
            manifest,
            responder,
            moderator,
            load_id: replacing
                .unwrap_or_else(|| LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        });
        let mut plugins = self.write();
        if let Some(id) = replacing {
            let current = plugins.get(&plugin.manifest.name).map(|p| p.load_id);
            anyhow::ensure!(current == Some(id), "it was replaced or unloaded meanwhile");
        }
        plugins.insert(plugin.manifest.name.clone(), plugin.clone());
        Ok(plugin)
    }

    /// Loads a plugin compiled into the binary; it comes back whenever a plugin of the same
    /// name is unloaded.
    pub fn load_builtin(
        &self,
        manifest: Manifest,
        wasm: &[u8],
    ) -> anyhow::Result<Arc<LoadedPlugin>> {
        // Always Cranelift's code: the built-in one stays in `builtins`, never swapped.
        let component = match self.cached(&manifest, wasm) {
            Some(component) => component,
            None => self.compile(&manifest, wasm)?,
        };
        let plugin = self.register(manifest, &component, &self.linker, None)?;
        crate::sync::write(&self.builtins).insert(plugin.manifest.name.clone(), plugin.clone());
        Ok(plugin)
    }

    /// Removes a plugin (a built-in one of that name takes its place again).
    pub fn unload(&self, name: &str) -> bool {
        let builtin = crate::sync::read(&self.builtins).get(name).cloned();
        let mut plugins = self.write();
        match builtin {
            Some(builtin) => plugins
                .insert(name.to_owned(), builtin.clone())
                .is_some_and(|replaced| !Arc::ptr_eq(&replaced, &builtin)),
            None => plugins.remove(name).is_some(),
        }
    }

    /// `manifest`'s plugin is being compiled (in the background: listening never waits for it).
    pub fn loading_started(&self, manifest: &Manifest) {
        crate::sync::write(&self.loading).insert(manifest.name.clone(), manifest.clone());
        self.settled.send_replace(false);
    }

    /// Nothing is being compiled any more (loaded, or failed and logged), but for Cranelift
    /// in the background.
    pub fn loading_done(&self) {
        crate::sync::write(&self.loading).clear();
        if self.optimizing.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            self.settled.send_replace(true);
        }
    }

    /// Completes once nothing is being compiled, Cranelift's background compiles included (at
    /// once if nothing is).
    pub fn settled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut settled = self.settled.subscribe();
        async move {
            let _ = settled.wait_for(|idle| *idle).await;
        }
    }

    /// Plugins being compiled that have no loaded version to serve meanwhile.
    pub fn loading(&self) -> Vec<Manifest> {
        // One lock at a time (copied out of one, then checked against the other).
        let compiling: Vec<Manifest> = crate::sync::read(&self.loading).values().cloned().collect();
        let mut loading: Vec<Manifest> = compiling
            .into_iter()
            .filter(|m| self.get(&m.name).is_none())
            .collect();
        loading.sort_by(|a, b| a.name.cmp(&b.name));
        loading
    }

    /// The manifest of `name`, loaded or still being compiled.
    pub fn manifest_of(&self, name: &str) -> Option<Manifest> {
        self.get(name)
            .map(|p| p.manifest.clone())
            .or_else(|| crate::sync::read(&self.loading).get(name).cloned())
    }

    /// Whether `name` is being compiled and has no loaded version yet.
    pub fn is_loading(&self, name: &str) -> bool {
        let compiling = crate::sync::read(&self.loading).contains_key(name);
        compiling && self.get(name).is_none()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        crate::sync::read(&self.plugins).get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut plugins: Vec<_> = crate::sync::read(&self.plugins).values().cloned().collect();
        plugins.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        plugins
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<LoadedPlugin>>> {
        crate::sync::write(&self.plugins)
    }

    /// Runs `respond` in a fresh instance on the plugin runtime; gives up at `deadline`
    /// whatever the plugin is doing. What it reports with `progress` goes to `progress`.
    pub async fn respond(
        self: &Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        request: RespondRequest,
        deadline: Instant,
        progress: Option<Progress>,
    ) -> Result<Option<String>, PluginError> {
        match self
            .call(plugin, Invocation::Respond(request, progress), deadline)
            .await?
        {
            Answer::Reply(reply) => Ok(reply),
            Answer::Verdict(_) => Err(PluginError::Refused("not a reply".into())),
        }
    }

    /// Runs `moderate` in a fresh instance on the caller's runtime, not the plugin runtime:
    /// moderators sit on every send's path, where the hop there and back cost more than the
    /// call itself (100-250 µs of a send's p50 at 1,000 msg/s, against ~20 µs for the word
    /// filter). The caller's worker is never held long: the guest yields at every epoch tick
    /// (10 ms), and the deadline (at most 1 s) ends it wherever it is.
    pub async fn moderate(
        &self,
        plugin: &LoadedPlugin,
        request: ModerateRequest,
        deadline: Instant,
    ) -> Result<Verdict, PluginError> {
        let call = self.invoke(plugin, Invocation::Moderate(request), deadline);
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Ok(Answer::Verdict(verdict))) => Ok(verdict),
            Ok(Ok(Answer::Reply(_))) => Err(PluginError::Refused("not a verdict".into())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PluginError::Timeout),
        }
    }

    async fn call(
        self: &Arc<Self>,
        plugin: Arc<LoadedPlugin>,
        invocation: Invocation,
        deadline: Instant,
    ) -> Result<Answer, PluginError> {
        let Some(runtime) = &self.runtime else {
            return Err(PluginError::Refused("the plugin host is shut down".into()));
        };
        let host = self.clone();
        let call = runtime.spawn(async move { host.invoke(&plugin, invocation, deadline).await });
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

    /// One `respond` call on the current runtime (no hop to the plugin runtime); benchmarks
    /// call it directly to time instantiate + call alone.
    pub async fn run(
        &self,
        plugin: &LoadedPlugin,
        request: RespondRequest,
        deadline: Instant,
    ) -> Result<Option<String>, PluginError> {
        match self
            .invoke(plugin, Invocation::Respond(request, None), deadline)
            .await?
        {
            Answer::Reply(reply) => Ok(reply),
            Answer::Verdict(_) => Err(PluginError::Refused("not a reply".into())),
        }
    }

    /// A fresh store and instance under every limit, one call, and the store dropped.
    async fn invoke(
        &self,
        plugin: &LoadedPlugin,
        invocation: Invocation,
        deadline: Instant,
    ) -> Result<Answer, PluginError> {
        let stdout = MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT);
        let stderr = MemoryOutputPipe::new(MAX_CAPTURED_OUTPUT);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let progress = match &invocation {
            Invocation::Respond(_, progress) => progress.clone(),
            Invocation::Moderate(_) => None,
        };
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limits: CallLimits::new((plugin.manifest.memory_mb as usize) << 20),
            logged: 0,
            plugin: plugin.manifest.name.clone(),
            granted: plugin.granted.clone(),
            network: self.network.clone(),
            deadline,
            progress,
        };
        // The engine whose code this is (Cranelift's, or Winch's until Cranelift's is in).
        let engine = match (&plugin.responder, &plugin.moderator) {
            (Some(pre), _) => pre.engine(),
            (None, Some(pre)) => pre.engine(),
            (None, None) => &self.engine,
        };
        let mut store = Store::new(engine, state);
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
            match invocation {
                Invocation::Respond(request, _) => {
                    let Some(pre) = &plugin.responder else {
                        return Ok(Err("the plugin does not export `respond`".to_owned()));
                    };
                    let instance = pre.instantiate_async(&mut store).await?;
                    let answer = instance.call_respond(&mut store, &request).await?;
                    Ok(answer.map(Answer::Reply))
                }
                Invocation::Moderate(request) => {
                    let Some(pre) = &plugin.moderator else {
                        return Ok(Err("the plugin does not export `moderate`".to_owned()));
                    };
                    let instance = pre.instantiate_async(&mut store).await?;
                    let answer = instance.call_moderate(&mut store, &request).await?;
                    Ok(answer.map(Answer::Verdict))
                }
            }
        };
        let outcome: Result<wasmtime::Result<Result<Answer, String>>, _> =
            tokio::time::timeout_at(deadline.into(), call).await;
        let dropped = store.data().logged.saturating_sub(MAX_LOG_LINES);
        if dropped > 0 {
            tracing::warn!(plugin = %plugin.manifest.name, dropped, "plugin log lines dropped (at most {MAX_LOG_LINES} per call)");
        }
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
            Ok(Ok(Ok(answer))) => Ok(answer),
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

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::CallLimits;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_cap_holds_for_all_of_a_calls_memories_together() {
        let mut limits = CallLimits::new(16 * MIB);
        assert!(
            limits
                .memory_growing(0, 10 * MIB, None)
                .expect("first memory")
        );
        // A second memory may not take the rest of the pool: the budget is the call's.
        assert!(limits.memory_growing(0, 10 * MIB, None).is_err());
        assert!(
            limits
                .memory_growing(0, 6 * MIB, None)
                .expect("within the total")
        );
        // Growing the first memory further does not fit any more.
        assert!(limits.memory_growing(10 * MIB, 11 * MIB, None).is_err());
        // One memory alone over the cap traps too.
        assert!(
            CallLimits::new(16 * MIB)
                .memory_growing(0, 17 * MIB, None)
                .is_err()
        );
    }
}
