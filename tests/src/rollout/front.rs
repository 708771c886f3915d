//! The front proxy of a rollout: a real Envoy whose upstream endpoints come
//! from an EDS file the harness rewrites (as Kubernetes' endpoint
//! controller and a mesh control plane do), and which retries on another
//! replica what drainpipe says is safe to retry.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::Envoy;

/// The cluster of replicas.
pub const CLUSTER: &str = "replicas";
/// The EDS file's name in its watched directory.
const ENDPOINTS_FILE: &str = "endpoints.json";

/// The front's retry policy: only what cannot have reached a model or what
/// the replica says is safe to retry, on another replica, with Envoy's
/// exponential back-off and jitter. Envoy decides on a retry at the
/// upstream's response headers, before anything goes to the client, so a
/// response that has started is never retried.
///
/// - `retriable-headers` on `x-should-retry: true`: drainpipe's drain
///   rejection (503, after the admit window). Its deadline refusal (504)
///   says `x-should-retry: false` and is not retried;
/// - `reset-before-request`: the connection broke before the request was
///   sent whole (a replica closing a pooled connection as it stops);
/// - `connect-failure`, `refused-stream`: the replica is gone or refused
///   the stream.
pub fn retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,reset-before-request,retriable-headers",
        "retriable_headers": [{"name": "x-should-retry", "string_match": {"exact": "true"}}],
        "num_retries": 4,
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            }
        }],
        "host_selection_retry_max_attempts": 5
    })
}

/// The front Envoy's configuration: a listener on `listen_port` routing
/// everything to the EDS cluster [`CLUSTER`], read from `eds_dir`.
pub fn config(listen_port: u16, admin_port: u16, eds_dir: &Path) -> Value {
    let endpoints = eds_dir.join(ENDPOINTS_FILE);
    json!({
        // A file-based EDS subscription needs the node's id and cluster.
        "node": {"id": "front", "cluster": "front"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "front",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "front",
                        // WebSocket sessions pass through to the replicas.
                        "upgrade_configs": [{"upgrade_type": "websocket"}],
                        "stream_idle_timeout": "300s",
                        "request_timeout": "0s",
                        "route_config": {"name": "front", "virtual_hosts": [{
                            "name": "llm",
                            "domains": ["*"],
                            // `x-envoy-attempt-count` on every response: the
                            // clients see whether the front retried a refusal.
                            "include_attempt_count_in_response": true,
                            "routes": [{"match": {"prefix": "/"}, "route": {
                                "cluster": CLUSTER,
                                "timeout": "600s",
                                "retry_policy": retry_policy()
                            }}]
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [{
                "name": CLUSTER,
                "type": "EDS",
                "connect_timeout": "1s",
                "lb_policy": "LEAST_REQUEST",
                "eds_cluster_config": {"eds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": endpoints.display().to_string(),
                        "watched_directory": {"path": eds_dir.display().to_string()}
                    }
                }},
                // Envoy's defaults (1,024 requests, 3 retries at once) would
                // turn a burst of drain rejections into 503s of the front.
                "circuit_breakers": {"thresholds": [{
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 100000
                }]}
            }]
        }
    })
}

/// The EDS resource listing `ports` on loopback.
pub fn endpoints(version: u64, ports: &[u16]) -> Value {
    let lb_endpoints: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}))
        .collect();
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": CLUSTER,
            "endpoints": [{"lb_endpoints": lb_endpoints}]
        }]
    })
}

/// Writes the endpoint list into `eds_dir` as Envoy requires of a watched
/// file: whole, by renaming a file written beside it.
pub fn write_endpoints(eds_dir: &Path, version: u64, ports: &[u16]) -> anyhow::Result<PathBuf> {
    let path = eds_dir.join(ENDPOINTS_FILE);
    let tmp = eds_dir.join(format!(".{ENDPOINTS_FILE}.{version}"));
    std::fs::write(&tmp, serde_json::to_vec(&endpoints(version, ports))?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(path)
}

/// Waits until the front has `n` endpoints from the EDS file.
pub async fn wait_for_endpoints(front: &Envoy, n: usize) -> anyhow::Result<()> {
    let url = front.admin(&format!(
        "/stats?filter=^cluster\\.{CLUSTER}\\.membership_total$"
    ));
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&url).await?.text().await?;
        let members = text
            .lines()
            .find_map(|l| l.split(": ").nth(1)?.trim().parse::<usize>().ok());
        if members == Some(n) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "the front Envoy did not load {n} endpoints from its EDS file ({members:?}); log tail:\n{}",
            front.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The front's retry counters, from its admin `/stats` text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    /// Retries the front made (`upstream_rq_retry`).
    pub retried: u64,
    /// Of those, the ones that succeeded (`upstream_rq_retry_success`).
    pub succeeded: u64,
    /// Retries not made: the circuit breaker's or the retry budget's limit
    /// (`upstream_rq_retry_overflow`), or too many (`upstream_rq_retry_limit_exceeded`).
    pub refused: u64,
    /// Requests the front sent to replicas, retries included (`upstream_rq_total`).
    pub upstream_requests: u64,
}

impl Retries {
    pub fn parse(stats: &str) -> Retries {
        let stat = |name: &str| {
            let key = format!("cluster.{CLUSTER}.{name}: ");
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        Retries {
            retried: stat("upstream_rq_retry"),
            succeeded: stat("upstream_rq_retry_success"),
            refused: stat("upstream_rq_retry_overflow") + stat("upstream_rq_retry_limit_exceeded"),
            upstream_requests: stat("upstream_rq_total"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_written_whole_under_one_name() {
        let dir = crate::envoy::Scratch::new("eds").unwrap();
        write_endpoints(dir.path(), 1, &[1001, 1002]).unwrap();
        write_endpoints(dir.path(), 2, &[1002]).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [ENDPOINTS_FILE]);
        let doc: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(ENDPOINTS_FILE)).unwrap())
                .unwrap();
        assert_eq!(doc["version_info"], "2");
        let eps = doc
            .pointer("/resources/0/endpoints/0/lb_endpoints")
            .unwrap();
        assert_eq!(eps.as_array().unwrap().len(), 1);
        assert_eq!(
            eps.pointer("/0/endpoint/address/socket_address/port_value"),
            Some(&json!(1002))
        );
    }

    #[test]
    fn retry_counters_are_read_from_the_admin_stats() {
        let text = "cluster.replicas.upstream_rq_retry: 12\n\
                    cluster.replicas.upstream_rq_retry_success: 11\n\
                    cluster.replicas.upstream_rq_retry_overflow: 1\n\
                    cluster.replicas.upstream_rq_total: 900\n\
                    cluster.other.upstream_rq_retry: 5\n";
        assert_eq!(
            Retries::parse(text),
            Retries {
                retried: 12,
                succeeded: 11,
                refused: 1,
                upstream_requests: 900
            }
        );
    }
}
