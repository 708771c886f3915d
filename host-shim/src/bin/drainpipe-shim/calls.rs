//! The guests' http calls, carried out: `--cluster NAME=URL` declares a
//! cluster (`http://host:port` for HTTP/1.1, `h2c://host:port` for HTTP/2
//! without TLS, as a cluster with `http2_protocol_options`), and every call
//! a guest makes to it is sent there; the answer (or Envoy's 503 when the
//! cluster cannot be reached) is delivered to the calling context. A call
//! past its timeout gets the router's 504 from the worker's timers.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drainpipe_shim::{Headers, Host, HttpCallRequest, HttpCallResponse, Worker};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// How a cluster is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cluster {
    pub(crate) name: String,
    /// `http://host:port`, whatever the protocol.
    pub(crate) base: String,
    /// HTTP/2 with prior knowledge (h2c), else HTTP/1.1.
    pub(crate) h2: bool,
}

/// Parses `NAME=URL` (`--cluster`).
pub(crate) fn parse_cluster(text: &str) -> Result<Cluster, String> {
    let (name, url) = text
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("{text:?}: expected NAME=URL, e.g. auth=http://127.0.0.1:9000"))?;
    let (h2, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("h2c", rest)) => (true, rest),
        _ => {
            return Err(format!(
                "{text:?}: the URL must start with http:// (HTTP/1.1) or h2c:// (HTTP/2)"
            ))
        }
    };
    let authority = rest.trim_end_matches('/');
    let base = format!("http://{authority}");
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e| format!("{text:?}: not a URL: {e}"))?;
    if uri.authority().is_none() || authority.contains('/') {
        return Err(format!("{text:?}: expected a scheme, host and port only"));
    }
    Ok(Cluster {
        name: name.to_owned(),
        base,
        h2,
    })
}

/// The clusters and the clients that reach them.
pub(crate) struct Calls {
    clusters: BTreeMap<String, Cluster>,
    http1: Client<HttpConnector, Full<Bytes>>,
    h2: Client<HttpConnector, Full<Bytes>>,
}

impl Calls {
    pub(crate) fn new(clusters: &[Cluster]) -> Calls {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Calls {
            clusters: clusters
                .iter()
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
            http1: Client::builder(TokioExecutor::new())
                .set_host(false)
                .build(connector.clone()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .set_host(false)
                .build(connector),
        }
    }

    /// Carries out every call the workers' guests make, until the process
    /// ends.
    pub(crate) async fn run(self: Arc<Self>, host: Host, workers: Vec<Worker>) {
        let waiting = host.calls_waiting();
        let mut in_flight: Vec<HashSet<u32>> = vec![HashSet::new(); workers.len()];
        loop {
            tokio::select! {
                _ = waiting.notified() => {}
                // A VM reloaded under a call, say: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            for (worker, in_flight) in workers.iter().zip(in_flight.iter_mut()) {
                let pending = worker.http_calls();
                in_flight.retain(|token| pending.iter().any(|c| c.token == *token));
                for call in pending {
                    if in_flight.insert(call.token) {
                        let (calls, worker) = (self.clone(), worker.clone());
                        tokio::spawn(async move {
                            let token = call.token;
                            let response = calls.send(call).await;
                            worker.respond_http_call(token, response);
                        });
                    }
                }
            }
        }
    }

    async fn send(&self, call: HttpCallRequest) -> HttpCallResponse {
        let Some(cluster) = self.clusters.get(&call.cluster) else {
            return unreachable_cluster();
        };
        let path = call.headers.get(":path").unwrap_or("/");
        let mut builder = Request::builder()
            .method(call.headers.get(":method").unwrap_or("GET"))
            .uri(format!("{}{path}", cluster.base));
        if !cluster.h2 {
            if let Some(authority) = call.headers.get_bytes(":authority") {
                builder = builder.header(hyper::header::HOST, authority);
            }
        }
        for (k, v) in call.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            builder = builder.header(k, v);
        }
        let Ok(request) = builder.body(Full::new(Bytes::from(call.body))) else {
            return unreachable_cluster();
        };
        let client = match cluster.h2 {
            true => &self.h2,
            false => &self.http1,
        };
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(call.timeout, async {
            let response = client.request(request).await.ok()?;
            let (parts, body) = response.into_parts();
            let collected = body.collect().await.ok()?;
            Some((parts, collected))
        })
        .await;
        let Ok(Some((parts, collected))) = sent else {
            // A timeout is answered by the worker's timers (504).
            return unreachable_cluster();
        };
        let mut headers = Headers::from_pairs([(":status", parts.status.as_str())]);
        for (k, v) in &parts.headers {
            headers.add(k.as_str(), v.as_bytes());
        }
        headers.add(
            "x-envoy-upstream-service-time",
            started.elapsed().as_millis().to_string(),
        );
        let mut trailers = Headers::new();
        for (k, v) in collected.trailers().into_iter().flatten() {
            trailers.add(k.as_str(), v.as_bytes());
        }
        HttpCallResponse {
            headers,
            body: collected.to_bytes().to_vec(),
            trailers,
        }
    }
}

/// What Envoy answers a call whose cluster it cannot reach.
fn unreachable_cluster() -> HttpCallResponse {
    const BODY: &str = "upstream connect error or disconnect/reset before headers. \
                        reset reason: remote connection failure";
    HttpCallResponse {
        headers: Headers::from_pairs([
            (":status", "503".to_owned()),
            ("content-length", BODY.len().to_string()),
            ("content-type", "text/plain".to_owned()),
        ]),
        body: BODY.into(),
        trailers: Headers::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_http1_or_h2c_urls() {
        assert_eq!(
            parse_cluster("auth=http://127.0.0.1:9000/"),
            Ok(Cluster {
                name: "auth".into(),
                base: "http://127.0.0.1:9000".into(),
                h2: false
            })
        );
        assert!(parse_cluster("grpc=h2c://127.0.0.1:9001").unwrap().h2);
        for bad in [
            "auth",
            "=http://a:1",
            "auth=https://a:1",
            "auth=http://a:1/x",
        ] {
            assert!(parse_cluster(bad).is_err(), "{bad}");
        }
    }
}
