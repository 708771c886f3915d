//! Loading a module and configuring a host: the compiled module, its VM
//! configuration and plugins, and the state shared by all workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use wasmtime::{Cache, CacheConfig, Config, Engine, ExternType, Linker, Module, Store};

use crate::abi::LogLevel;
use crate::clock::Clock;
use crate::logs::LogSink;
use crate::metrics::Metrics;
use crate::shared_data::SharedData;
use crate::state::{HostState, Shared};
use crate::worker::{StartError, Worker};
use crate::BoxError;

/// ABI versions the shim hosts, by their marker export.
pub const ABI_MARKERS: &[&str] = &["proxy_abi_version_0_2_0", "proxy_abi_version_0_2_1"];

/// Why a module cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid wasm module")]
    Compile(#[source] BoxError),
    #[error(
        "no supported proxy-wasm ABI marker: the module must export proxy_abi_version_0_2_0 \
         or proxy_abi_version_0_2_1 (found: {})",
        if found.is_empty() { "none".to_owned() } else { found.join(", ") }
    )]
    AbiVersion { found: Vec<String> },
    #[error("the module does not export {0}")]
    MissingExport(&'static str),
    #[error("the module imports {module}.{name}, which the shim does not provide")]
    MissingImport { module: String, name: String },
    #[error("cannot link the module")]
    Link(#[source] BoxError),
    #[error("no plugin configured")]
    NoPlugin,
    #[error("cannot use the compilation cache: {0}")]
    Cache(#[source] BoxError),
}

/// A compiled, checked proxy-wasm module; cheap to clone and share between
/// hosts (compiling is the slow part of starting a host).
#[derive(Clone)]
pub struct Wasm {
    pub(crate) engine: Engine,
    pub(crate) module: Module,
    /// Whether the module has a `name` section (a trap's line then lists
    /// the in-VM backtrace, as Envoy's does).
    pub(crate) names: bool,
}

impl Wasm {
    /// Reads and compiles a `.wasm` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Reads a `.wasm` file and compiles it through Wasmtime's compilation
    /// cache in `cache_dir` (created if missing): a module compiled before,
    /// by this process or another with the same Wasmtime and settings, is
    /// loaded from there instead of compiled again.
    pub fn from_file_cached(path: impl AsRef<Path>, cache_dir: &Path) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut cache = CacheConfig::new();
        cache.with_directory(cache_dir);
        let cache = Cache::new(cache).map_err(|e| LoadError::Cache(e.into()))?;
        let mut config = Config::new();
        config.cache(Some(cache));
        let engine = Engine::new(&config).map_err(|e| LoadError::Cache(e.into()))?;
        Self::compile(engine, &bytes)
    }

    /// Compiles a module from its binary (or, for tests, text) form and
    /// checks its ABI marker, memory and allocator exports.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LoadError> {
        Self::compile(Engine::default(), bytes)
    }

    fn compile(engine: Engine, bytes: &[u8]) -> Result<Self, LoadError> {
        let module = Module::new(&engine, bytes).map_err(|e| LoadError::Compile(e.into()))?;
        let exports: Vec<String> = module.exports().map(|e| e.name().to_owned()).collect();
        if !exports.iter().any(|e| ABI_MARKERS.contains(&e.as_str())) {
            let found = exports
                .into_iter()
                .filter(|e| e.starts_with("proxy_abi_version_"))
                .collect();
            return Err(LoadError::AbiVersion { found });
        }
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err(LoadError::MissingExport("memory"));
        }
        if module.get_export("proxy_on_memory_allocate").is_none()
            && module.get_export("malloc").is_none()
        {
            return Err(LoadError::MissingExport(
                "proxy_on_memory_allocate (or malloc)",
            ));
        }
        Ok(Wasm {
            engine,
            module,
            names: crate::traps::has_name_section(bytes),
        })
    }
}

/// What a guest trap does to streams, as Envoy's `failure_policy`
/// (`fail_open` in older versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The failing stream and every later stream of that worker get a local
    /// 503 (Envoy's default).
    #[default]
    FailClosed,
    /// Streams pass through without the filter.
    FailOpen,
    /// The failing stream gets a 503; the next stream starts a fresh VM.
    Reload,
}

/// One plugin (one filter instance's configuration) of the VM.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The plugin's name (Envoy's filter config `name`).
    pub name: String,
    /// Its root_id.
    pub root_id: String,
    /// Its plugin configuration bytes.
    pub configuration: Vec<u8>,
    /// What a trap does to its streams.
    pub failure_policy: FailurePolicy,
    /// Only the host's first VM has it (see [`PluginConfig::singleton`]).
    pub singleton: bool,
}

impl PluginConfig {
    /// A plugin with an empty root_id and the default failure policy.
    pub fn new(name: impl Into<String>, configuration: impl Into<Vec<u8>>) -> Self {
        PluginConfig {
            name: name.into(),
            root_id: String::new(),
            configuration: configuration.into(),
            failure_policy: FailurePolicy::default(),
            singleton: false,
        }
    }

    /// Makes it a singleton, as Envoy's bootstrap `wasm` service with
    /// `singleton: true`: one root context, in the host's first VM only
    /// (the main thread's), and no streams.
    pub fn singleton(mut self) -> Self {
        self.singleton = true;
        self
    }

    /// Sets the failure policy.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Sets the root_id.
    pub fn root_id(mut self, root_id: impl Into<String>) -> Self {
        self.root_id = root_id.into();
        self
    }
}

/// Everything a worker's VM is started with; shared read-only.
#[derive(Debug)]
pub(crate) struct VmConfig {
    pub(crate) vm_id: String,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) plugins: Vec<PluginConfig>,
    /// Cluster names http calls may use, with an upstream URL where known.
    pub(crate) clusters: BTreeMap<String, Option<String>>,
    pub(crate) log_level: LogLevel,
    pub(crate) random_seed: Option<u64>,
}

/// Builds a [`Host`].
///
/// ```no_run
/// use drainpipe_shim::{Clock, Host, PluginConfig, Wasm};
///
/// let wasm = Wasm::from_file("filter.wasm")?;
/// let host = Host::builder(wasm)
///     .vm_id("drainpipe")
///     .clock(Clock::manual(1_700_000_000_000))
///     .plugin(PluginConfig::new("traffic", r#"{"role":"traffic"}"#))
///     .build()?;
/// let worker = host.worker()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HostBuilder {
    wasm: Wasm,
    vm_id: String,
    vm_configuration: Vec<u8>,
    plugins: Vec<PluginConfig>,
    clusters: BTreeMap<String, Option<String>>,
    clock: Clock,
    log: LogSink,
    log_level: LogLevel,
    random_seed: Option<u64>,
}

impl HostBuilder {
    /// The VM's vm_id (shared data and queues are keyed by it).
    pub fn vm_id(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = vm_id.into();
        self
    }

    /// The VM configuration, readable in `on_vm_start`.
    pub fn vm_configuration(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.vm_configuration = config.into();
        self
    }

    /// Adds a plugin: each worker's VM gets one root context per plugin.
    pub fn plugin(mut self, plugin: PluginConfig) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Declares a cluster that http calls may name.
    pub fn cluster(mut self, name: impl Into<String>, upstream: Option<String>) -> Self {
        self.clusters.insert(name.into(), upstream);
        self
    }

    /// The clock (the system clock by default).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The log sink (a new one by default).
    pub fn log(mut self, log: LogSink) -> Self {
        self.log = log;
        self
    }

    /// The log level guests see and below which their lines are dropped
    /// (Envoy's default, info, by default).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Seeds WASI's `random_get`, for reproducible tests.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = Some(seed);
        self
    }

    /// Links the module and checks that every import is provided.
    pub fn build(self) -> Result<Host, LoadError> {
        if self.plugins.is_empty() {
            return Err(LoadError::NoPlugin);
        }
        let shared = Arc::new(Shared {
            clock: self.clock,
            log: self.log,
            data: SharedData::new(),
            metrics: Metrics::new(),
            next_worker: AtomicU32::new(0),
            calls_waiting: Arc::new(tokio::sync::Notify::new()),
        });
        let vm = Arc::new(VmConfig {
            vm_id: self.vm_id,
            vm_configuration: self.vm_configuration,
            plugins: self.plugins,
            clusters: self.clusters,
            log_level: self.log_level,
            random_seed: self.random_seed,
        });
        let mut linker = Linker::new(&self.wasm.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)
            .map_err(|e| LoadError::Link(e.into()))?;
        crate::hostcalls::add_to_linker(&mut linker).map_err(|e| LoadError::Link(e.into()))?;
        let host = Host {
            inner: Arc::new(HostInner {
                wasm: self.wasm,
                linker,
                shared,
                vm,
            }),
        };
        let mut store = host.new_store(u32::MAX);
        for import in host.inner.wasm.module.imports() {
            if host
                .inner
                .linker
                .get_by_import(&mut store, &import)
                .is_none()
            {
                return Err(LoadError::MissingImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        Ok(host)
    }
}

/// A loaded module with its plugins, and the state its workers share
/// (shared data, metrics, clock, log). Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub(crate) wasm: Wasm,
    pub(crate) linker: Linker<HostState>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) vm: Arc<VmConfig>,
}

impl Host {
    /// Starts configuring a host for `wasm`.
    pub fn builder(wasm: Wasm) -> HostBuilder {
        HostBuilder {
            wasm,
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            plugins: Vec::new(),
            clusters: BTreeMap::new(),
            clock: Clock::system(),
            log: LogSink::new(),
            log_level: LogLevel::Info,
            random_seed: None,
        }
    }

    /// Starts a worker: a new VM instance with one root context per plugin,
    /// started in Envoy's order.
    pub fn worker(&self) -> Result<Worker, StartError> {
        let id = self.inner.shared.next_worker.fetch_add(1, Ordering::SeqCst);
        Worker::start(self.clone(), id)
    }

    /// The shared clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.shared.clock
    }

    /// The log of every worker.
    pub fn log(&self) -> &LogSink {
        &self.inner.shared.log
    }

    /// The stats store shared by every worker.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// The shared data shared by every worker.
    pub fn shared_data(&self) -> &SharedData {
        &self.inner.shared.data
    }

    /// The vm_id.
    pub fn vm_id(&self) -> &str {
        &self.inner.vm.vm_id
    }

    /// The names of the plugins, in order.
    pub fn plugin_names(&self) -> Vec<String> {
        self.inner
            .vm
            .plugins
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// Woken (`notify_one`) whenever a guest of any worker makes an http
    /// call: a server carrying calls out waits on it, then looks at each
    /// worker's [`Worker::http_calls`].
    pub fn calls_waiting(&self) -> Arc<tokio::sync::Notify> {
        self.inner.shared.calls_waiting.clone()
    }

    /// The upstream URL declared for a cluster.
    pub fn cluster_upstream(&self, name: &str) -> Option<&str> {
        self.inner.vm.clusters.get(name)?.as_deref()
    }

    pub(crate) fn new_store(&self, worker: u32) -> Store<HostState> {
        let shared = &self.inner.shared;
        let state = HostState {
            wasi: crate::wasi::context(
                &shared.clock,
                &shared.log,
                worker,
                self.inner.vm.random_seed,
            ),
            shared: shared.clone(),
            vm: self.inner.vm.clone(),
            worker,
            contexts: BTreeMap::new(),
            current: 0,
            next_context_id: 1,
            metric_ids: Default::default(),
            http_calls: BTreeMap::new(),
            next_http_call: 4,
            call_response: None,
            grpc_calls: BTreeMap::new(),
            next_grpc_call: 5,
            grpc_receive: None,
            grpc_status: (0, String::new()),
            grpc_streams: BTreeMap::new(),
            next_grpc_stream: 6,
            grpc_initial_metadata: None,
            grpc_trailing_metadata: None,
            configuring: None,
        };
        Store::new(&self.inner.wasm.engine, state)
    }
}
