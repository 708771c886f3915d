//! `serve`: loads the filter, starts the workers, the traffic listener and
//! the admin endpoint; on SIGTERM or SIGINT drains through the plugin, waits
//! until drained or the grace period, then exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drainpipe_shim::{Host, PluginConfig, Wasm};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, Admin};
use crate::calls::{self, Calls, Cluster};
use crate::logging::{self, Level, Prefix};
use crate::proxy::Proxy;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The proxy-wasm module.
    #[arg(long)]
    wasm: PathBuf,
    /// The traffic plugin's configuration (its bytes as the plugin reads them).
    #[arg(long)]
    config: PathBuf,
    /// Also load the module as an admin plugin with this configuration: the
    /// admin endpoint's `/drain` goes through it, and SIGTERM drains
    /// through it (drainpipe's admin role, e.g. {"role":"admin"}).
    #[arg(long)]
    admin_config: Option<PathBuf>,
    /// Also load the module as a singleton plugin with this configuration,
    /// as Envoy's bootstrap `wasm` service with `singleton: true`: one root
    /// context, in the main-thread VM only, and no streams.
    #[arg(long)]
    singleton_config: Option<PathBuf>,
    /// The singleton plugin's root_id (it must differ from the traffic
    /// plugin's, as in Envoy when both share the VM).
    #[arg(long, default_value = "singleton")]
    singleton_root_id: String,
    /// The traffic plugin's name (Envoy's filter config `name`, shown in
    /// its log lines).
    #[arg(long, default_value = "traffic")]
    name: String,
    /// The traffic plugin's root_id.
    #[arg(long, default_value = "")]
    root_id: String,
    /// Traffic listener address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Upstream base URL: http://HOST:PORT (HTTP/1.1, e.g.
    /// http://127.0.0.1:8000) or h2c://HOST:PORT (HTTP/2, as a cluster with
    /// `http2_protocol_options`, for a gRPC upstream).
    #[arg(long)]
    upstream: String,
    /// Admin listener address.
    #[arg(long, default_value = "127.0.0.1:10001")]
    admin: SocketAddr,
    /// A cluster the filter's http calls may name: NAME=http://HOST:PORT
    /// (HTTP/1.1) or NAME=h2c://HOST:PORT (HTTP/2); repeatable.
    #[arg(long = "cluster", value_name = "NAME=URL", value_parser = calls::parse_cluster)]
    clusters: Vec<Cluster>,
    /// Worker VMs, like Envoy's --concurrency.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The vm_id shared by the plugins.
    #[arg(long, default_value = "drainpipe")]
    vm_id: String,
    /// Guest log lines at or above this level go to stderr, as Envoy's
    /// `wasm log` lines; guests are told this level.
    #[arg(long, value_enum, default_value = "info")]
    log_level: Level,
    /// Where compiled modules are cached, so that a module is compiled once
    /// (default: $XDG_CACHE_HOME/drainpipe-shim or ~/.cache/drainpipe-shim).
    #[arg(long, value_name = "DIR")]
    compile_cache: Option<PathBuf>,
    /// Compile the module afresh, without the cache.
    #[arg(long, conflicts_with = "compile_cache")]
    no_compile_cache: bool,
    /// How long to wait for the drain on SIGTERM before exiting anyway.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    grace: Duration,
}

/// How often each VM's timers (ticks, http call timeouts) are looked at.
const TIMER_RESOLUTION: Duration = Duration::from_millis(10);

/// The singleton plugin's name, when `--singleton-config` loads it.
const SINGLETON_PLUGIN: &str = "singleton";

/// The admin plugin's name, when `--admin-config` loads it.
const ADMIN_PLUGIN: &str = "admin";

/// The server's lifecycle, read by the shutdown path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let traffic_config = std::fs::read(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let admin_config = match &args.admin_config {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.name == ADMIN_PLUGIN || args.name == SINGLETON_PLUGIN {
        bail!(
            "--name {:?} is taken by the shim's own plugins; choose another name",
            args.name
        );
    }
    let (upstream, upstream_h2) = match args.upstream.strip_prefix("h2c://") {
        Some(rest) => (format!("http://{rest}"), true),
        None => (args.upstream.clone(), false),
    };
    let upstream = upstream
        .parse::<hyper::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some());
    let Some(upstream) = upstream else {
        bail!(
            "--upstream {:?}: expected http://HOST:PORT (HTTP/1.1) or h2c://HOST:PORT (HTTP/2)",
            args.upstream
        );
    };
    // Compiled once: every worker instantiates the same module.
    let wasm = match compile_cache(&args) {
        Some(dir) => Wasm::from_file_cached(&args.wasm, &dir),
        None => Wasm::from_file(&args.wasm),
    }
    .with_context(|| format!("{}", args.wasm.display()))?;
    let mut prefixes = vec![Prefix::new(&args.name, &args.root_id, &args.vm_id)];
    let mut builder = Host::builder(wasm)
        .vm_id(&args.vm_id)
        .log_level(args.log_level.guest_level())
        .plugin(PluginConfig::new(&args.name, traffic_config).root_id(&args.root_id));
    for cluster in &args.clusters {
        builder = builder.cluster(&cluster.name, Some(cluster.base.clone()));
    }
    if let Some(path) = &args.singleton_config {
        let config =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if args.singleton_root_id == args.root_id {
            bail!("--singleton-root-id must differ from --root-id (they share the VM)");
        }
        prefixes.push(Prefix::new(
            SINGLETON_PLUGIN,
            &args.singleton_root_id,
            &args.vm_id,
        ));
        let plugin = PluginConfig::new(SINGLETON_PLUGIN, config)
            .root_id(&args.singleton_root_id)
            .singleton();
        builder = builder.plugin(plugin);
    }
    if let Some(config) = admin_config {
        prefixes.push(Prefix::new(ADMIN_PLUGIN, "", &args.vm_id));
        builder = builder.plugin(PluginConfig::new(ADMIN_PLUGIN, config));
    }
    let host = builder
        .log(logging::stderr_sink(args.log_level, prefixes))
        .build()?;
    // As in Envoy, the main thread has a VM of its own (with its root
    // contexts and their ticks) besides one per worker; it serves the admin
    // endpoint, the workers the traffic. The guest's own lines (why its
    // configuration failed, say) are printed.
    let main_vm = host.worker()?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(host.worker()?);
    }
    let traffic = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin))?;
    eprintln!(
        "drainpipe-shim: traffic on {}, admin on {}",
        args.listen, args.admin
    );

    for worker in std::iter::once(main_vm.clone()).chain(workers.clone()) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TIMER_RESOLUTION);
            loop {
                every.tick().await;
                worker.run_timers();
            }
        });
    }
    let vms = std::iter::once(main_vm.clone()).chain(workers.clone());
    tokio::spawn(Arc::new(Calls::new(&args.clusters)).run(host.clone(), vms.collect()));
    let admin = Arc::new(Admin {
        host: host.clone(),
        worker: main_vm,
        plugin: args.admin_config.is_some().then(|| ADMIN_PLUGIN.to_owned()),
    });
    // Streamed events are small writes: without TCP_NODELAY, Nagle's
    // algorithm and the peer's delayed ACK hold each one back (~40 ms).
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let proxy = Arc::new(Proxy {
        workers,
        next: AtomicUsize::new(0),
        plugin: args.name.clone(),
        upstream,
        upstream_h2,
        h2: Default::default(),
        client: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .set_host(false)
            .build(connector),
    });

    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let admin_server = axum::serve(admin_listener, admin::router(admin.clone()));
    let mut admin_phase = phase_rx.clone();
    let admin_task = tokio::spawn(async move {
        admin_server
            .with_graceful_shutdown(async move {
                let _ = admin_phase.wait_for(|p| *p == Phase::Draining).await;
            })
            .await
    });
    let mut accept_phase = phase_rx.clone();
    let accept_task = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                accepted = traffic.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = accept_phase.wait_for(|p| *p == Phase::Draining) => return,
            };
            let _ = tcp.set_nodelay(true);
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| proxy.clone().handle(req));
                // HTTP/1.1, or HTTP/2 with prior knowledge (h2c), on the
                // same port: Envoy's `codec_type: AUTO`.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });

    shutdown_signal().await;
    if admin.plugin.is_some() {
        eprintln!("drainpipe-shim: signal received, draining");
        admin.call("POST", "/drain", &Default::default());
        let deadline = Instant::now() + args.grace;
        loop {
            let state = admin.state();
            if state.as_ref().is_some_and(|s| s["state"] == "drained") {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("drainpipe-shim: grace period over, exiting before drained");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        // Like Envoy on SIGTERM: no drain without a plugin to run it.
        eprintln!("drainpipe-shim: signal received, exiting");
    }
    let _ = phase_tx.send(Phase::Draining);
    let _ = accept_task.await;
    let _ = admin_task.await;
    Ok(ExitCode::SUCCESS)
}

/// The compilation cache's directory, unless turned off (or no home).
fn compile_cache(args: &Args) -> Option<PathBuf> {
    if args.no_compile_cache {
        return None;
    }
    if let Some(dir) = &args.compile_cache {
        return Some(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("drainpipe-shim"))
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
