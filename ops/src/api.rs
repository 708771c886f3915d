//! Blocking HTTP calls to the plugin's drain API and to Envoy's admin.
//!
//! Every call has a short timeout: they go to loopback, and a supervisor
//! must never hang on a proxy that stopped answering.

use std::time::Duration;

use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered something that is not a drain status: {body}")]
    NotAStatus { url: String, body: String },
}

/// The fields of a drain status (`GET /drain`) the tools show and decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `serving`, `draining`, `rejecting` or `drained` (a drain controller
    /// reports only `serving` and `draining`).
    pub state: String,
    /// Requests in flight; a drain controller does not report it.
    pub inflight: Option<u64>,
}

impl Status {
    /// Reads a status from the drain API's JSON answer.
    pub fn parse(body: &str) -> Option<Status> {
        let v: Value = serde_json::from_str(body).ok()?;
        Some(Status {
            state: v.get("state")?.as_str()?.to_string(),
            inflight: v.get("inflight").and_then(Value::as_u64),
        })
    }

    /// Whether a drain has started (any state but `serving`).
    pub fn draining(&self) -> bool {
        self.state != "serving"
    }
}

/// The plugin's drain states, in the order of the `drainpipe_state` gauge.
pub const STATES: [&str; 4] = ["serving", "draining", "rejecting", "drained"];

/// A status from Envoy's Prometheus stats: the plugin's `drainpipe_state`
/// gauge (0 serving, 1 draining, 2 rejecting, 3 drained) and
/// `drainpipe_inflight`. For Envoys without a drain API (Istio's sidecar,
/// whose admin is on the pod's loopback).
pub fn status_from_prometheus(text: &str) -> Option<Status> {
    let value = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name 3` or `name{labels} 3`
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            let v: f64 = rest.strip_prefix(' ')?.trim().parse().ok()?;
            (v >= 0.0).then_some(v as u64)
        })
    };
    let state = STATES.get(usize::try_from(value("drainpipe_state")?).ok()?)?;
    Some(Status {
        state: state.to_string(),
        inflight: value("drainpipe_inflight"),
    })
}

/// `state=rejecting inflight=3`, as `envoy/prestop.sh` prints it; `unknown`
/// for what is not known.
pub fn describe(status: Option<&Status>) -> String {
    let state = status.map_or("unknown", |s| s.state.as_str());
    let inflight = status
        .and_then(|s| s.inflight)
        .map_or_else(|| "unknown".to_string(), |n| n.to_string());
    format!("state={state} inflight={inflight}")
}

/// A blocking HTTP/1.1 client with a per-call timeout.
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client { agent }
    }

    /// Sends `method` to `url` with an optional bearer token; the status
    /// and the body.
    pub fn call(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
    ) -> Result<(u16, String), ApiError> {
        let unreachable = |e: ureq::Error| ApiError::Unreachable {
            url: url.to_string(),
            cause: e.to_string(),
        };
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut response = match method {
            "GET" => {
                let mut r = self.agent.get(url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = self.agent.delete(url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send_empty()
            }
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(unreachable)?;
        Ok((status, body))
    }
}

/// The drain API of one plugin (or drain controller), or Envoy's stats.
pub struct DrainApi {
    pub url: String,
    pub token: Option<String>,
    /// `url` is Envoy's `/stats/prometheus`: statuses are read from the
    /// plugin's gauges, and no drain can be started there.
    stats: bool,
    client: Client,
}

impl DrainApi {
    pub fn new(url: &str, token: Option<String>) -> DrainApi {
        DrainApi {
            url: url.to_string(),
            token,
            stats: false,
            client: Client::new(Duration::from_secs(2)),
        }
    }

    /// Statuses from Envoy's Prometheus stats at `url` (read-only).
    pub fn envoy_stats(url: &str) -> DrainApi {
        DrainApi {
            stats: true,
            ..DrainApi::new(url, None)
        }
    }

    /// `POST`: starts the drain (idempotent).
    pub fn start(&self) -> Result<Status, ApiError> {
        self.status_of("POST")
    }

    /// `GET`: the current status.
    pub fn status(&self) -> Result<Status, ApiError> {
        self.status_of("GET")
    }

    fn status_of(&self, method: &str) -> Result<Status, ApiError> {
        let (status, body) = self.client.call(method, &self.url, self.token.as_deref())?;
        if !(200..300).contains(&status) {
            return Err(ApiError::Refused {
                url: self.url.clone(),
                status,
                body: body.trim().to_string(),
            });
        }
        let status = if self.stats {
            status_from_prometheus(&body)
        } else {
            Status::parse(&body)
        };
        status.ok_or_else(|| ApiError::NotAStatus {
            url: self.url.clone(),
            body: body.trim().to_string(),
        })
    }
}

/// Asks Envoy to exit through its admin (`POST /quitquitquit`).
pub fn quit_envoy(admin: &str) -> Result<(), ApiError> {
    let url = format!("{}/quitquitquit", admin.trim_end_matches('/'));
    let (status, body) = Client::new(Duration::from_secs(2)).call("POST", &url, None)?;
    if status != 200 {
        return Err(ApiError::Refused {
            url,
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_state_and_inflight() {
        let s = Status::parse(r#"{"state":"rejecting","inflight":3,"admitted":9}"#).unwrap();
        assert_eq!(s.state, "rejecting");
        assert_eq!(s.inflight, Some(3));
        assert_eq!(describe(Some(&s)), "state=rejecting inflight=3");
    }

    #[test]
    fn a_controller_status_has_no_inflight() {
        let s = Status::parse(r#"{"state":"draining","drain_started_unix_ms":1}"#).unwrap();
        assert!(s.draining());
        assert_eq!(describe(Some(&s)), "state=draining inflight=unknown");
        assert_eq!(describe(None), "state=unknown inflight=unknown");
    }

    #[test]
    fn a_status_reads_from_the_plugin_gauges() {
        let text = "# TYPE drainpipe_inflight gauge\ndrainpipe_inflight{} 2\n\
                    drainpipe_state_x 9\ndrainpipe_state 2\n";
        assert_eq!(
            status_from_prometheus(text),
            Some(Status {
                state: "rejecting".into(),
                inflight: Some(2)
            })
        );
        assert_eq!(
            status_from_prometheus("drainpipe_state 3").unwrap().state,
            "drained"
        );
        // No plugin stats (Istio's stats matcher left them out), or nonsense.
        for text in [
            "",
            "envoy_server_live 1",
            "drainpipe_state 7",
            "drainpipe_state x",
        ] {
            assert_eq!(status_from_prometheus(text), None, "{text}");
        }
    }

    #[test]
    fn what_is_not_a_status_is_refused() {
        for body in ["", "nope", "{}", r#"{"state":3}"#, "[]"] {
            assert_eq!(Status::parse(body), None, "{body}");
        }
    }
}
