//! Ordinary proxy-wasm filters side by side under `drainpipe-shim serve`
//! and a real Envoy: the scenarios of `tests/scenarios/fidelity.json` send
//! the same requests through both to the same upstream, and every status,
//! header (in order), body and guest log line must be the same, once values
//! that differ by nature (dates, request ids, times) are masked.

mod support;

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drainpipe_tests::envoy::{free_port, repo_root, EnvoyConfig, Scratch};
use drainpipe_tests::paths::target_dir;
use drainpipe_tests::{Envoy, EnvoyOptions, Ports};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The vm_id and plugin name both hosts run the filter under.
const VM_ID: &str = "fidelity_vm";
const PLUGIN: &str = "fidelity";

/// What the client saw for one request: the status, the header lines in
/// the order they came (as on the wire), the body, the trailers (HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    trailers: Vec<(String, String)>,
}

/// What one host gave for a whole scenario.
#[derive(Debug)]
struct Run {
    exchanges: Vec<Exchange>,
    /// The `wasm` component's log lines, with their level: the guest's
    /// (`wasm log ...`) and the host's about it (a trap's `Function: ...
    /// failed: ...` and its backtrace).
    logs: Vec<String>,
}

fn scenario(name: &str) -> Value {
    let path = repo_root().join("tests/scenarios/fidelity.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name} in {}", path.display()))
        .clone()
}

/// Runs the scenario `name` under both hosts and compares.
async fn side_by_side(name: &str) {
    let scenario = scenario(name);
    let upstreams = Upstreams {
        http: Upstream::start().await,
        grpc: Upstream::start_grpc().await,
    };
    let envoy = run_envoy(&scenario, &upstreams).await;
    let shim = run_shim(&scenario, &upstreams).await;
    for (i, (s, e)) in shim.exchanges.iter().zip(&envoy.exchanges).enumerate() {
        let request = &scenario["requests"][i];
        assert_eq!(
            s, e,
            "{name}: request {i} ({} {}) differs: shim (left), Envoy (right)",
            request["method"], request["path"]
        );
    }
    assert_eq!(shim.exchanges.len(), envoy.exchanges.len());
    let (mut shim_logs, mut envoy_logs) = (shim.logs, envoy.logs);
    if scenario["sort_logs"] == true {
        shim_logs.sort();
        envoy_logs.sort();
    }
    assert_eq!(
        shim_logs, envoy_logs,
        "{name}: wasm log lines differ: shim (left), Envoy (right)"
    );
    assert!(!envoy_logs.is_empty(), "{name}: no guest log line at all");
    println!(
        "{name}: {} exchanges and {} guest log lines the same in the shim and Envoy:\n{}\n{}",
        shim.exchanges.len(),
        envoy_logs.len(),
        envoy_logs.join("\n"),
        envoy
            .exchanges
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------- clients

async fn send_all(scenario: &Value, port: u16) -> Vec<Exchange> {
    let mut out = Vec::new();
    for request in scenario["requests"].as_array().unwrap() {
        out.push(send(port, request).await);
    }
    if let Some(ms) = scenario["wait_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    out
}

/// One request on a connection of its own, written on the socket, and the
/// response as it came: its header lines in the order sent (a repeated name
/// included, where it was), its body without the chunk framing.
async fn send(port: u16, request: &Value) -> Exchange {
    let what = format!("{} {}", request["method"], request["path"]);
    let exchange = async {
        match request["h2"] == true {
            true => exchange_h2(port, request).await,
            false => exchange(port, request).await.map_err(Into::into),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no whole response within 30 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// One request over HTTP/2 with prior knowledge (h2c), on a connection of
/// its own: its body chunks (or, with `grpc`, that one gRPC message) and
/// its `trailers`, then the response as hyper's client gives it (a
/// header's values together), its body and trailers.
async fn exchange_h2(port: u16, request: &Value) -> Result<Exchange, BoxError> {
    let conn = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn)).await?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(request["method"].as_str().unwrap())
        .uri(format!(
            "http://fidelity.test{}",
            request["path"].as_str().unwrap()
        ));
    for pair in request["headers"].as_array().into_iter().flatten() {
        builder = builder.header(pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
    }
    let mut frames: Vec<Frame<Bytes>> = request["body"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Frame::data(Bytes::from(c.as_str().unwrap().to_owned())))
        .collect();
    if let Some(message) = request["grpc"].as_str() {
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message.as_bytes());
        frames.push(Frame::data(Bytes::from(framed)));
    }
    let mut trailers = hyper::HeaderMap::new();
    for pair in request["trailers"].as_array().into_iter().flatten() {
        trailers.append(
            hyper::header::HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes())?,
            pair[1].as_str().unwrap().parse()?,
        );
    }
    if !trailers.is_empty() {
        frames.push(Frame::trailers(trailers));
    }
    // Without trailers the last data frame ends the stream (a body of known
    // length), so that no empty end frame follows it.
    let body = match (frames.len(), request["trailers"].is_array()) {
        (0, _) => http_body_util::Empty::new().boxed_unsync(),
        (1, false) => {
            let data = frames.pop().unwrap().into_data().unwrap_or_default();
            http_body_util::Full::new(data).boxed_unsync()
        }
        _ => {
            let frames = frames.into_iter().map(Ok::<_, Infallible>);
            StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
        }
    };
    let response = sender.send_request(builder.body(body)?).await?;
    let status = response.status().as_u16();
    let headers = pairs(response.headers());
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().map(pairs).unwrap_or_default();
    Ok(Exchange {
        status,
        headers,
        body: mask(&String::from_utf8_lossy(&collected.to_bytes())),
        trailers,
    })
}

/// Header (or trailer) pairs in the map's order, values masked.
fn pairs(map: &hyper::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes());
            (k.as_str().to_owned(), mask_header(k.as_str(), &value))
        })
        .collect()
}

async fn exchange(port: u16, request: &Value) -> std::io::Result<Exchange> {
    let method = request["method"].as_str().unwrap();
    // The same authority for both hosts, whatever their ports.
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nhost: fidelity.test\r\n",
        request["path"].as_str().unwrap()
    );
    for pair in request["headers"].as_array().into_iter().flatten() {
        head += &format!(
            "{}: {}\r\n",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap()
        );
    }
    let chunks: Vec<&str> = request["body"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c.as_str().unwrap())
        .collect();
    match chunks.as_slice() {
        [] if method == "GET" || method == "HEAD" => {}
        [] => head += "content-length: 0\r\n",
        [one] => head += &format!("content-length: {}\r\n", one.len()),
        _ => head += "transfer-encoding: chunked\r\n",
    }
    head += "\r\n";
    let trailers: String = request["trailers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| {
            format!(
                "{}: {}\r\n",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )
        })
        .collect();
    let conn = TcpStream::connect(("127.0.0.1", port)).await?;
    let (read, mut write) = conn.into_split();
    write.write_all(head.as_bytes()).await?;
    match chunks.as_slice() {
        [] => {}
        [one] => write.write_all(one.as_bytes()).await?,
        many => {
            for chunk in many {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                write.write_all(framed.as_bytes()).await?;
            }
            write
                .write_all(format!("0\r\n{trailers}\r\n").as_bytes())
                .await?;
        }
    }
    let mut read = BufReader::new(read);
    let mut status_line = String::new();
    read.read_line(&mut status_line).await?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {status_line:?}"));
    let headers: Vec<(String, String)> = header_block(&mut read)
        .await?
        .into_iter()
        .map(|(name, value)| {
            let value = mask_header(&name, &value);
            (name, value)
        })
        .collect();
    let body = read_body(&mut read, method, status, &headers).await?;
    Ok(Exchange {
        status,
        headers,
        body: mask(&String::from_utf8_lossy(&body)),
        trailers: Vec::new(),
    })
}

/// A response body as its head frames it: none (HEAD, 204, 304), chunked,
/// by `content-length`, or up to the close.
async fn read_body(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    method: &str,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<Vec<u8>> {
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
        return Ok(body);
    }
    if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        return chunked_body(read).await;
    }
    match header("content-length").and_then(|l| l.parse().ok()) {
        Some(len) => {
            body.resize(len, 0);
            read.read_exact(&mut body).await?;
        }
        None => {
            read.read_to_end(&mut body).await?;
        }
    }
    Ok(body)
}

/// A chunked body, up to its last (empty) chunk.
async fn chunked_body(
    read: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        read.read_line(&mut size).await?;
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut chunk = vec![0; size + 2];
        read.read_exact(&mut chunk).await?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

// ------------------------------------------------------------------ masks

fn mask_header(name: &str, value: &str) -> String {
    match name {
        "date" => "<date>".into(),
        "x-envoy-upstream-service-time" => "<ms>".into(),
        _ => mask(value),
    }
}

/// Request ids (UUIDs) and upstream service times, wherever they appear.
fn mask(text: &str) -> String {
    let mut out = mask_uuids(text);
    let key = "x-envoy-upstream-service-time=";
    let mut at = 0;
    while let Some(i) = out[at..].find(key) {
        let start = at + i + key.len();
        let end = out[start..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "<ms>");
        at = start;
    }
    out
}

fn mask_uuids(text: &str) -> String {
    let bytes = text.as_bytes();
    let is_uuid = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, &b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
    };
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if i + 36 <= bytes.len() && is_uuid(&bytes[i..i + 36]) {
            out.push_str("<id>");
            i += 36;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The `wasm` component's lines of an Envoy-format log, as `<level>
/// <message>` (Envoy's `[source file:line]` left out): the guest's `wasm
/// log ...` lines and the host's about the guest; a message of several
/// lines (a panic's, a backtrace) kept whole.
fn wasm_lines(log: &str) -> Vec<String> {
    let mut records: Vec<String> = Vec::new();
    for line in log.lines() {
        if line.starts_with('[') {
            records.push(line.to_owned());
        } else if let Some(last) = records.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    records
        .into_iter()
        .filter_map(|r| {
            let mut fields = r.splitn(4, "][");
            let level = fields.nth(2)?.to_owned();
            let message = fields.next()?.strip_prefix("wasm] ")?;
            let message = match message.strip_prefix("[source/") {
                Some(rest) => rest.split_once("] ")?.1,
                None => message,
            };
            Some(format!("{level} {}", mask(message)))
        })
        .collect()
}

/// Waits until a log stops growing (the callbacks after a response, such as
/// `on_log`, run once it went out).
async fn settled_log(read: impl Fn() -> String) -> String {
    let mut last = read();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = read();
        if now == last || started.elapsed() > Duration::from_secs(10) {
            return now;
        }
        last = now;
    }
}

// ------------------------------------------------------------------ hosts

/// The scenario's worker count (Envoy's `--concurrency`, the shim's
/// `--workers`): 1 unless it says.
fn workers(scenario: &Value) -> u32 {
    scenario["workers"].as_u64().map_or(1, |n| n as u32)
}

/// The fidelity filters' module: stripped, or with `names` its `name`
/// section kept.
fn filter_path(scenario: &Value) -> std::path::PathBuf {
    match scenario["names"] == true {
        true => support::fidelity_filter_named_path(),
        false => support::fidelity_filter_path(),
    }
}

/// Whether the scenario's route goes to the gRPC upstream (`"upstream":
/// "grpc"`, over HTTP/2) rather than the plain one (HTTP/1.1).
fn grpc_upstream(scenario: &Value) -> bool {
    scenario["upstream"] == "grpc"
}

async fn run_envoy(scenario: &Value, upstreams: &Upstreams) -> Run {
    let ports = Ports::fresh(match grpc_upstream(scenario) {
        true => upstreams.grpc.port,
        false => upstreams.http.port,
    });
    let config = envoy_config(scenario, ports, upstreams, &filter_path(scenario));
    let mut options = EnvoyOptions {
        concurrency: workers(scenario),
        ..EnvoyOptions::default()
    };
    if let Some(level) = scenario["log_level"].as_str() {
        options.extra_args = vec!["--component-log-level".into(), format!("wasm:{level}")];
    }
    let envoy = Envoy::start(&config, ports, options).expect("Envoy starts with the filter");
    let exchanges = send_all(scenario, ports.traffic).await;
    let log = settled_log(|| envoy.log()).await;
    Run {
        exchanges,
        logs: wasm_lines(&log),
    }
}

/// A cluster a scenario declares: a name (to the plain upstream, HTTP/1.1),
/// or `{"name": N, "grpc": true}` (to the gRPC upstream, HTTP/2).
struct Declared {
    name: String,
    port: u16,
    h2: bool,
}

fn declared_clusters(scenario: &Value, upstreams: &Upstreams) -> Vec<Declared> {
    scenario["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| match c.as_str() {
            Some(name) => Declared {
                name: name.to_owned(),
                port: upstreams.http.port,
                h2: false,
            },
            None => Declared {
                name: c["name"].as_str().unwrap().to_owned(),
                // `"unreachable": true`: a port nothing listens on.
                port: match c["unreachable"] == true {
                    true => free_port(),
                    false => upstreams.grpc.port,
                },
                h2: true,
            },
        })
        .collect()
}

/// One listener with the filter (as `fidelity`, vm_id `fidelity_vm`, the
/// scenario's filter as its configuration) and the router, every route to
/// the upstream with no route timeout (the shim has none), and the
/// scenario's clusters.
fn envoy_config(scenario: &Value, ports: Ports, upstreams: &Upstreams, wasm: &Path) -> EnvoyConfig {
    let address =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let cluster = |name: &str, port: u16| {
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": address(port)}}
            ]}]}
        })
    };
    let h2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    let mut upstream = cluster("upstream", ports.upstream);
    if grpc_upstream(scenario) {
        upstream["typed_extension_protocol_options"] = h2.clone();
    }
    let mut clusters = vec![upstream];
    for declared in declared_clusters(scenario, upstreams) {
        let mut c = cluster(&declared.name, declared.port);
        if declared.h2 {
            c["typed_extension_protocol_options"] = h2.clone();
        }
        clusters.push(c);
    }
    let vm_config = json!({
        "vm_id": VM_ID,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": wasm.display().to_string()}}
    });
    let mut bootstrap_extensions = Vec::new();
    if let Some(config) = scenario["singleton"].as_str() {
        bootstrap_extensions.push(json!({
            "name": "envoy.bootstrap.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                "singleton": true,
                "config": {
                    "name": "singleton",
                    "root_id": "singleton",
                    "vm_config": vm_config,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": config
                    }
                }
            }
        }));
    }
    let doc = json!({
        "admin": {"address": address(ports.admin)},
        "bootstrap_extensions": bootstrap_extensions,
        "static_resources": {
            "listeners": [{
                "name": "traffic",
                "address": address(ports.traffic),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "traffic",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "upstream", "timeout": "0s"}}]
                        }]},
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.wasm",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                    "config": {
                                        "name": PLUGIN,
                                        "vm_config": vm_config,
                                        "configuration": {
                                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                                            "value": scenario["filter"]
                                        }
                                    }
                                }
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }
                        ]
                    }
                }]}]
            }],
            "clusters": clusters
        }
    });
    EnvoyConfig::from_yaml(&doc.to_string()).expect("a valid configuration document")
}

/// `drainpipe-shim serve` with the filter; killed on drop.
struct Shim {
    child: Child,
    log: std::path::PathBuf,
    _dir: Scratch,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shim {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start_shim(scenario: &Value, upstreams: &Upstreams, traffic: u16) -> Shim {
    let upstream = match grpc_upstream(scenario) {
        true => format!("h2c://127.0.0.1:{}", upstreams.grpc.port),
        false => format!("http://127.0.0.1:{}", upstreams.http.port),
    };
    let dir = Scratch::new("shim-fidelity").unwrap();
    let config = dir.path().join("filter.txt");
    std::fs::write(&config, scenario["filter"].as_str().unwrap()).unwrap();
    let log = dir.path().join("shim.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_drainpipe-shim"));
    command
        .arg("serve")
        .arg("--wasm")
        .arg(filter_path(scenario))
        .arg("--config")
        .arg(&config)
        .args(["--name", PLUGIN, "--vm-id", VM_ID])
        .args(["--workers", &workers(scenario).to_string()])
        .args(["--listen", &format!("127.0.0.1:{traffic}")])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(["--upstream", &upstream])
        // A cache of the tests' own, not the user's.
        .arg("--compile-cache")
        .arg(target_dir().join("tmp/fidelity-compile-cache"));
    if let Some(level) = scenario["log_level"].as_str() {
        command.args(["--log-level", level]);
    }
    if let Some(singleton) = scenario["singleton"].as_str() {
        let path = dir.path().join("singleton.txt");
        std::fs::write(&path, singleton).unwrap();
        command.arg("--singleton-config").arg(path);
    }
    for c in declared_clusters(scenario, upstreams) {
        let scheme = if c.h2 { "h2c" } else { "http" };
        command.args([
            "--cluster",
            &format!("{}={scheme}://127.0.0.1:{}", c.name, c.port),
        ]);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("drainpipe-shim serve starts");
    let mut shim = Shim {
        child,
        log,
        _dir: dir,
    };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", traffic)).await.is_err() {
        if let Some(status) = shim.child.try_wait().unwrap() {
            panic!(
                "drainpipe-shim serve exited at start-up ({status}):\n{}",
                shim.log()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "drainpipe-shim serve never listened on {traffic}:\n{}",
            shim.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shim
}

async fn run_shim(scenario: &Value, upstreams: &Upstreams) -> Run {
    let traffic = free_port();
    let shim = start_shim(scenario, upstreams, traffic).await;
    let exchanges = send_all(scenario, traffic).await;
    let log = settled_log(|| shim.log()).await;
    Run {
        exchanges,
        logs: wasm_lines(&log),
    }
}

// --------------------------------------------------------------- upstream

/// A plain HTTP/1.1 upstream written on the socket, so that what it answers
/// (header order, chunking) is exactly what it says.
struct Upstream {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The scenario's upstreams: plain HTTP/1.1, and gRPC.
struct Upstreams {
    http: Upstream,
    grpc: Upstream,
}

impl Upstream {
    /// A gRPC server (HTTP/2 without TLS) for `fidelity.Check/Check`: the
    /// message `deny` gets PERMISSION_DENIED, `slow` an answer after 2 s;
    /// any other is answered `allowed <message>` with the request's path and
    /// headers. Other paths are answered as the plain upstream answers them
    /// ([`h2_plain`]).
    async fn start_grpc() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .auto_date_header(false)
                        .serve_connection(TokioIo::new(conn), service_fn(grpc_check))
                        .await;
                });
            }
        });
        Upstream { port, task }
    }

    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve_connection(conn).await;
                });
            }
        });
        Upstream { port, task }
    }
}

/// An HTTP/1.1 header block up to its blank line: names lowercased, values
/// trimmed, in the order sent.
async fn header_block(
    read: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        read.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
    }
}

async fn serve_connection(conn: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let headers = header_block(&mut read).await?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            body = chunked_body(&mut read).await?;
        } else if let Some(len) = header("content-length").and_then(|l| l.parse().ok()) {
            body.resize(len, 0);
            read.read_exact(&mut body).await?;
        }
        let head = "HTTP/1.1 200 OK\r\nx-up-a: 1\r\nx-up-b: 2\r\n";
        if let Some(n) = path.strip_prefix("/chunks/") {
            let n: usize = n.parse().unwrap_or(1);
            write
                .write_all(format!("{head}transfer-encoding: chunked\r\n\r\n").as_bytes())
                .await?;
            for i in 0..n {
                let chunk = format!("chunk {i}\n");
                write
                    .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                    .await?;
                write.flush().await?;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            write.write_all(b"0\r\n\r\n").await?;
            continue;
        }
        let mut text: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&body));
        let status = match path.as_str() {
            "/deny" => "403 Forbidden",
            _ => "200 OK",
        };
        write
            .write_all(
                format!(
                    "HTTP/1.1 {status}\r\nx-up-a: 1\r\nx-up-b: 2\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )
            .await?;
    }
}

type GrpcBody = UnsyncBoxBody<Bytes, Infallible>;

/// A plain request over HTTP/2: `/deny` gets 403, any other path 200,
/// with `x-up-a: 1`, `x-up-b: 2`, the request's method and URI, its
/// headers in order, a blank line and its body, then its trailers (if
/// any) after `trailers:`.
async fn h2_plain(request: Request<Incoming>) -> Response<GrpcBody> {
    let status = match request.uri().path() {
        "/deny" => 403,
        _ => 200,
    };
    let mut text = format!("{} {}\n", request.method(), request.uri());
    text += &request
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect::<String>();
    text.push('\n');
    let collected = request.into_body().collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers()).cloned();
    let body = collected.map(|b| b.to_bytes()).unwrap_or_default();
    text.push_str(&String::from_utf8_lossy(&body));
    if let Some(trailers) = trailers {
        text += "\ntrailers:\n";
        text += &trailers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect::<String>();
    }
    let body = http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync();
    Response::builder()
        .status(status)
        .header("x-up-a", "1")
        .header("x-up-b", "2")
        .body(body)
        .unwrap()
}

async fn grpc_check(request: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    if request.uri().path().starts_with("/fidelity.Echo/") {
        return Ok(grpc_echo(request));
    }
    if !request.uri().path().starts_with("/fidelity.Check/") {
        return Ok(h2_plain(request).await);
    }
    let path = request.uri().path().to_owned();
    let authority = request.uri().authority().map(|a| a.to_string());
    let headers: Vec<String> = request
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = String::from_utf8_lossy(body.get(5..).unwrap_or_default()).into_owned();
    let mut trailers = hyper::HeaderMap::new();
    let mut frames = Vec::new();
    match message.as_str() {
        "deny" => {
            trailers.insert("grpc-status", "7".parse().unwrap());
            trailers.insert("grpc-message", "denied by policy".parse().unwrap());
        }
        _ => {
            if message == "slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let answer = format!(
                "allowed {message}; {path} at {authority:?}; {}",
                headers.join(", ")
            );
            let mut frame = vec![0];
            frame.extend_from_slice(&(answer.len() as u32).to_be_bytes());
            frame.extend_from_slice(answer.as_bytes());
            frames.push(Frame::data(Bytes::from(frame)));
            trailers.insert("grpc-status", "0".parse().unwrap());
        }
    }
    frames.push(Frame::trailers(trailers));
    let body = StreamBody::new(futures::stream::iter(frames.into_iter().map(Ok))).boxed_unsync();
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap())
}

/// `fidelity.Echo/Chat`, a bidirectional stream: the answer's headers at
/// once (with `x-echo-initial`), `echo <m>` for each message `m` as it
/// comes, and when the client ends its side, trailers with status OK and
/// what the request carried (`x-echo-request`: path, authority, headers).
/// The message `fail` ends the stream at once with FAILED_PRECONDITION.
/// `fidelity.Echo/Refuse` answers trailers-only, PERMISSION_DENIED;
/// `Unavailable` an HTTP 503 (not gRPC); `NoTrailers` one message, then the
/// end of the body without trailers.
fn grpc_echo(request: Request<Incoming>) -> Response<GrpcBody> {
    let response = Response::builder().header("content-type", "application/grpc");
    let message = |text: &str| {
        let mut frame = vec![0];
        frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
        frame.extend_from_slice(text.as_bytes());
        Frame::data(Bytes::from(frame))
    };
    match request.uri().path() {
        "/fidelity.Echo/Refuse" => {
            let body = http_body_util::Empty::new().boxed_unsync();
            return response
                .header("grpc-status", "7")
                .header("grpc-message", "refused here")
                .body(body)
                .unwrap();
        }
        "/fidelity.Echo/Unavailable" => {
            let body = http_body_util::Full::new(Bytes::from("try later")).boxed_unsync();
            return Response::builder()
                .status(503)
                .header("content-type", "text/plain")
                .body(body)
                .unwrap();
        }
        "/fidelity.Echo/NoTrailers" => {
            let frames = futures::stream::iter([Ok(message("only one"))]);
            return response
                .body(StreamBody::new(frames).boxed_unsync())
                .unwrap();
        }
        _ => {}
    }
    let mut seen = vec![
        format!("path={}", request.uri().path()),
        format!(
            "authority={:?}",
            request.uri().authority().map(|a| a.as_str())
        ),
    ];
    seen.extend(
        request
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes()))),
    );
    let (frames, received) = tokio::sync::mpsc::unbounded_channel::<Frame<Bytes>>();
    tokio::spawn(async move {
        let mut body = request.into_body();
        let mut pending: Vec<u8> = Vec::new();
        let mut trailers = hyper::HeaderMap::new();
        while let Some(Ok(frame)) = body.frame().await {
            pending.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
            while pending.len() >= 5 {
                let length = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]);
                let end = 5 + length as usize;
                if pending.len() < end {
                    break;
                }
                let text = String::from_utf8_lossy(&pending[5..end]).into_owned();
                pending.drain(..end);
                if text == "fail" {
                    trailers.insert("grpc-status", "9".parse().unwrap());
                    trailers.insert("grpc-message", "failing on purpose".parse().unwrap());
                    let _ = frames.send(Frame::trailers(trailers));
                    return;
                }
                let _ = frames.send(message(&format!("echo {text}")));
            }
        }
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-echo-request", seen.join(", ").parse().unwrap());
        let _ = frames.send(Frame::trailers(trailers));
    });
    let mut received = received;
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| {
        received.poll_recv(cx).map(|frame| frame.map(Ok))
    }))
    .boxed_unsync();
    response
        .header("x-echo-initial", "hello")
        .body(body)
        .unwrap()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread")]
async fn a_body_rewriter_gets_and_replaces_one_chunk_bodies_as_in_envoy() {
    side_by_side("body-one-chunk").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_rewriter_pausing_on_many_chunks_gets_the_buffered_body_as_in_envoy() {
    side_by_side("body-many-chunks").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_log_lines_panics_and_the_failed_vm_are_as_in_envoy() {
    side_by_side("logs-and-trap").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traps_backtrace_names_the_same_frames_as_in_envoy() {
    side_by_side("trap-backtrace").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_call_to_a_declared_cluster_allows_and_denies_as_in_envoy() {
    side_by_side("http-call").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unary_grpc_call_is_answered_refused_and_timed_out_as_in_envoy() {
    side_by_side("grpc-call").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tick_counter_has_as_many_root_contexts_as_in_envoy() {
    side_by_side("tick-counter").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_workers_as_many_root_contexts_tick_as_in_envoy() {
    side_by_side("tick-counter-two-workers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_lines_below_the_log_level_are_left_out_as_in_envoy() {
    side_by_side("logs-at-warning").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_singleton_plugin_has_one_root_context_as_in_envoy() {
    side_by_side("singleton-tick").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_reply_to_a_grpc_request_is_trailers_only_as_in_envoy() {
    side_by_side("grpc-local-reply").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_headers_move_to_the_end_and_envoys_headers_are_there() {
    side_by_side("header-order").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_stream_gets_metadata_messages_and_status_as_in_envoy() {
    side_by_side("grpc-stream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unary_grpc_call_to_a_cluster_refusing_the_connection_fails_as_in_envoy() {
    side_by_side("grpc-call-refused").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_rewriter_whose_body_ends_with_trailers_passes_it_on_with_them_as_in_envoy() {
    side_by_side("body-before-trailers").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http1_the_body_callbacks_end_as_in_envoy() {
    side_by_side("body-end-of-stream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_h2c_requests_and_grpc_trailers_pass_through_the_filter_as_in_envoy() {
    side_by_side("h2c-trailers").await;
}
