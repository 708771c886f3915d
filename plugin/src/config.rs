//! The plugin configuration: one struct, parsed once from the filter's JSON
//! plugin configuration and validated before the plugin accepts traffic.
//!
//! Every error names the offending key, so Envoy's log says exactly what to
//! fix when it refuses the configuration.

use std::fmt;

use crate::dialect::{Dialect, PathDialect};
use crate::json::{self, Map, Value};

/// A budget or deadline that is none: `deadline.websocket_default_timeout_ms`
/// unset, and a WebSocket session without a deadline (see
/// [`crate::traffic::Forward`]).
pub const NO_DEADLINE: u64 = u64::MAX;

/// Longest accepted duration setting (7 days, in milliseconds): far above any
/// sane value, low enough that deadline arithmetic can never overflow.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

/// Which API a filter instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The traffic listener: readiness, admission, deadlines.
    Traffic,
    /// A loopback-only listener: the drain API (`/drain`).
    Admin,
}

/// Deadline policy for forwarded requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineConfig {
    /// Budget when the request carries no deadline.
    pub default_timeout_ms: u64,
    /// Budget of a WebSocket session whose upgrade carries no deadline.
    /// [`NO_DEADLINE`] (the default, the key absent): such a session has
    /// no deadline of its own; a drain's grace end still ends it.
    pub websocket_default_timeout_ms: u64,
    /// A client can never ask for more than this.
    pub max_timeout_ms: u64,
    /// Below this budget the request is refused early with a 504.
    pub min_budget_ms: u64,
    /// Which deadline headers a forwarded request carries to the upstream.
    pub upstream_headers: UpstreamHeaders,
}

/// Which deadline headers go to the upstream (`deadline.upstream_headers`).
/// Each header set costs Envoy a header write (BENCHMARKS.md gives the
/// instructions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHeaders {
    /// `"router"`: `x-envoy-upstream-rq-timeout-ms`, which Envoy's router
    /// enforces and passes on as `x-envoy-expected-rq-timeout-ms`;
    /// `grpc-timeout` on gRPC requests; and `x-request-deadline-ms` and
    /// `x-request-timeout-ms` only where the request carries them itself,
    /// rewritten to the deadline given.
    Router,
    /// `"all"`: also `x-request-deadline-ms` and `x-request-timeout-ms` on
    /// every forwarded request, for upstreams that read them.
    All,
}

/// Where the traffic role polls an external drain controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The Envoy cluster that reaches the controller.
    pub cluster: String,
    /// The controller's status path (`GET`), answering like `GET /drain`.
    pub path: String,
    /// Poll interval.
    pub poll_ms: u64,
}

/// The validated plugin configuration.
///
/// ```
/// let cfg = drainpipe::Config::parse(br#"{"grace_ms": 60000}"#).unwrap();
/// assert_eq!(cfg.grace_ms, 60_000);
/// assert_eq!(cfg.admit_window_ms, 5_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    pub health_path: String,
    pub admit_window_ms: u64,
    pub grace_ms: u64,
    pub retry_after_s: u64,
    pub deadline: DeadlineConfig,
    /// When set, admin calls need `authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// Admin role: the Envoy cluster that reaches Envoy's own admin interface.
    /// When set, starting a drain also starts Envoy's (`POST
    /// /healthcheck/fail`), so Envoy closes keep-alive connections, and
    /// ending it calls `POST /healthcheck/ok`.
    pub envoy_admin_cluster: Option<String>,
    /// Streams still running this long before their deadline or the end of
    /// the grace period get their dialect's ending instead of a reset.
    /// Defaults to the smaller of 1 s and `deadline.min_budget_ms`.
    pub final_event_margin_ms: u64,
    /// Traffic role: follow the drain state of an external controller.
    pub drain_controller: Option<ControllerConfig>,
    /// Path prefixes whose requests speak a given dialect (the JSON object
    /// `{"/prefix": "anthropic", ...}`), longest prefix first; other
    /// requests follow the rules of [`crate::dialect`].
    pub dialects: Vec<PathDialect>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Traffic,
            health_path: "/healthz/ready".to_string(),
            admit_window_ms: DEFAULT_ADMIT_WINDOW_MS,
            grace_ms: DEFAULT_GRACE_MS,
            retry_after_s: 5,
            deadline: DeadlineConfig {
                default_timeout_ms: DEFAULT_TIMEOUT_MS,
                websocket_default_timeout_ms: NO_DEADLINE,
                max_timeout_ms: DEFAULT_MAX_TIMEOUT_MS,
                min_budget_ms: DEFAULT_MIN_BUDGET_MS,
                upstream_headers: UpstreamHeaders::Router,
            },
            admin_token: None,
            envoy_admin_cluster: None,
            final_event_margin_ms: DEFAULT_MARGIN_MS,
            drain_controller: None,
            dialects: Vec::new(),
        }
    }
}

/// A configuration the plugin refuses: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`deadline.max_timeout_ms`), or `<root>` for the
    /// document itself.
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: {}: {}",
            self.key, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The drain timing this configuration sets.
    pub fn windows(&self) -> crate::drain::Windows {
        crate::drain::Windows {
            admit_window_ms: self.admit_window_ms,
            grace_ms: self.grace_ms,
        }
    }

    /// Parses and validates the plugin configuration. Empty input (no
    /// configuration at all) gives the defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let doc: Value = json::parse(bytes)
            .map_err(|e| ConfigError::new("<root>", format!("not valid JSON: {e}")))?;
        let Value::Object(top) = doc else {
            return Err(ConfigError::new(
                "<root>",
                format!("expected a JSON object, got {}", kind(&doc)),
            ));
        };
        let defaults = Config::default();
        // The durations whose defaults follow other keys start unset.
        let mut cfg = Config {
            admit_window_ms: UNSET,
            grace_ms: UNSET,
            final_event_margin_ms: UNSET,
            deadline: DeadlineConfig {
                default_timeout_ms: UNSET,
                max_timeout_ms: UNSET,
                min_budget_ms: UNSET,
                ..defaults.deadline
            },
            ..defaults
        };
        read_object(&mut cfg, &top, "", TOP_KEYS)?;
        cfg.follow_defaults();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Gives each duration left unset its default, following the keys it
    /// depends on, so that a default never conflicts with a value set:
    /// only values set explicitly can conflict (and are refused by
    /// [`Config::validate`]).
    fn follow_defaults(&mut self) {
        let set = |v: u64| (v != UNSET).then_some(v);
        let (admit, grace) = (set(self.admit_window_ms), set(self.grace_ms));
        self.grace_ms = grace.unwrap_or(DEFAULT_GRACE_MS.max(admit.unwrap_or(0)));
        self.admit_window_ms = admit.unwrap_or(DEFAULT_ADMIT_WINDOW_MS.min(self.grace_ms));
        let d = &mut self.deadline;
        let (default, max, min) = (
            set(d.default_timeout_ms),
            set(d.max_timeout_ms),
            set(d.min_budget_ms),
        );
        let ws = (d.websocket_default_timeout_ms != NO_DEADLINE)
            .then_some(d.websocket_default_timeout_ms);
        let longest_set = default.or(min).unwrap_or(0).max(ws.unwrap_or(0));
        d.max_timeout_ms = max.unwrap_or(DEFAULT_MAX_TIMEOUT_MS.max(longest_set));
        d.default_timeout_ms = default.unwrap_or(
            DEFAULT_TIMEOUT_MS
                .max(min.unwrap_or(0))
                .min(d.max_timeout_ms),
        );
        d.min_budget_ms = min.unwrap_or(
            DEFAULT_MIN_BUDGET_MS
                .min(d.default_timeout_ms)
                .min(ws.unwrap_or(u64::MAX)),
        );
        self.final_event_margin_ms =
            set(self.final_event_margin_ms).unwrap_or_else(|| default_margin(&self.deadline));
    }

    /// Checks the relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.health_path;
        if !p.starts_with('/') || p.len() > 1024 || p.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "health_path",
                format!(
                    "expected an absolute path like \"/healthz/ready\", got {}",
                    json::quote(p)
                ),
            ));
        }
        if p.contains('?') {
            return Err(ConfigError::new(
                "health_path",
                "must not contain a query string",
            ));
        }
        if self.admit_window_ms > self.grace_ms {
            return Err(ConfigError::new(
                "admit_window_ms",
                format!(
                    "{} exceeds grace_ms ({}): requests admitted while draining must fit in the grace period",
                    self.admit_window_ms, self.grace_ms
                ),
            ));
        }
        let d = &self.deadline;
        if d.max_timeout_ms == 0 {
            return Err(ConfigError::new(
                "deadline.max_timeout_ms",
                "must be greater than 0",
            ));
        }
        if d.default_timeout_ms > d.max_timeout_ms {
            return Err(ConfigError::new(
                "deadline.default_timeout_ms",
                format!(
                    "{} exceeds deadline.max_timeout_ms ({})",
                    d.default_timeout_ms, d.max_timeout_ms
                ),
            ));
        }
        if d.min_budget_ms > d.default_timeout_ms {
            return Err(ConfigError::new(
                "deadline.min_budget_ms",
                format!(
                    "{} exceeds deadline.default_timeout_ms ({}): every request without a deadline would be refused",
                    d.min_budget_ms, d.default_timeout_ms
                ),
            ));
        }
        let ws = d.websocket_default_timeout_ms;
        if ws != NO_DEADLINE && !(d.min_budget_ms..=d.max_timeout_ms).contains(&ws) {
            return Err(ConfigError::new(
                "deadline.websocket_default_timeout_ms",
                format!(
                    "expected an integer from {} to {} (deadline.min_budget_ms to deadline.max_timeout_ms), got {ws}",
                    d.min_budget_ms, d.max_timeout_ms
                ),
            ));
        }
        if self.final_event_margin_ms > d.min_budget_ms {
            return Err(ConfigError::new(
                "final_event_margin_ms",
                format!(
                    "{} exceeds deadline.min_budget_ms ({}): streams would be ended as soon as they start",
                    self.final_event_margin_ms, d.min_budget_ms
                ),
            ));
        }
        if self.drain_controller.is_some() && self.role != Role::Traffic {
            return Err(ConfigError::new(
                "drain_controller",
                "only applies to role \"traffic\"",
            ));
        }
        if let Some(token) = &self.admin_token {
            if self.role != Role::Admin {
                return Err(ConfigError::new(
                    "admin_token",
                    "only applies to role \"admin\"",
                ));
            }
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "admin_token",
                    "must be non-empty printable ASCII without spaces",
                ));
            }
        }
        if let Some(cluster) = &self.envoy_admin_cluster {
            if self.role != Role::Admin {
                return Err(ConfigError::new(
                    "envoy_admin_cluster",
                    "only applies to role \"admin\"",
                ));
            }
            if cluster.is_empty() {
                return Err(ConfigError::new(
                    "envoy_admin_cluster",
                    "must name an Envoy cluster",
                ));
            }
        }
        Ok(())
    }
}

/// The longest `retry_after_s` accepted: the anthropic SDK ignores a
/// Retry-After above 60 s (and falls back to its own back-off), the openai
/// SDK does not retry at all above 120 s.
pub const MAX_RETRY_AFTER_S: u64 = 60;

/// The default `final_event_margin_ms`: 1 s, or the minimum budget when
/// that is shorter (a stream is never due its final event on admission).
pub fn default_margin(deadline: &DeadlineConfig) -> u64 {
    DEFAULT_MARGIN_MS.min(deadline.min_budget_ms)
}

const DEFAULT_MARGIN_MS: u64 = 1_000;

// The defaults of the durations: [`Config::default`] has them, and
// [`Config::follow_defaults`] starts from them when other keys are set.
const DEFAULT_ADMIT_WINDOW_MS: u64 = 5_000;
const DEFAULT_GRACE_MS: u64 = 30_000;
const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_MAX_TIMEOUT_MS: u64 = 600_000;
const DEFAULT_MIN_BUDGET_MS: u64 = 5_000;

fn retry_after(key: &str, value: &Value) -> Result<u64, ConfigError> {
    match value.as_u64() {
        Some(n) if n <= MAX_RETRY_AFTER_S => Ok(n),
        Some(n) => Err(ConfigError::new(
            key,
            format!(
                "{n} exceeds {MAX_RETRY_AFTER_S}: the anthropic SDK ignores a Retry-After above 60 s and the openai SDK does not retry at all above 120 s"
            ),
        )),
        None => Err(ConfigError::new(
            key,
            format!("expected an integer from 0 to {MAX_RETRY_AFTER_S}, got {value}"),
        )),
    }
}

/// A duration not set by the configuration yet: its default follows other
/// keys ([`Config::follow_defaults`]). No valid duration has this value.
const UNSET: u64 = u64::MAX;

/// A key of a JSON object and how its value is read into a `T`, given the
/// key's dotted path for errors.
type Key<T> = (
    &'static str,
    fn(&mut T, &str, &Value) -> Result<(), ConfigError>,
);

/// The top-level keys: this table is both what is read and what the
/// unknown-key error lists.
const TOP_KEYS: &[Key<Config>] = &[
    ("role", |b, k, v| {
        b.role = match string(k, v)? {
            "traffic" => Role::Traffic,
            "admin" => Role::Admin,
            other => return Err(expected_one_of(k, "\"traffic\" or \"admin\"", other)),
        };
        Ok(())
    }),
    ("health_path", |b, k, v| {
        b.health_path = string(k, v)?.to_string();
        Ok(())
    }),
    ("admit_window_ms", |b, k, v| {
        b.admit_window_ms = duration(k, v)?;
        Ok(())
    }),
    ("grace_ms", |b, k, v| {
        b.grace_ms = duration(k, v)?;
        Ok(())
    }),
    ("retry_after_s", |b, k, v| {
        b.retry_after_s = retry_after(k, v)?;
        Ok(())
    }),
    ("deadline", |b, k, v| {
        read_object(&mut b.deadline, object(k, v, "")?, k, DEADLINE_KEYS)
    }),
    ("admin_token", |b, k, v| {
        b.admin_token = Some(string(k, v)?.to_string());
        Ok(())
    }),
    ("envoy_admin_cluster", |b, k, v| {
        b.envoy_admin_cluster = Some(string(k, v)?.to_string());
        Ok(())
    }),
    ("final_event_margin_ms", |b, k, v| {
        b.final_event_margin_ms = duration(k, v)?;
        Ok(())
    }),
    ("drain_controller", |b, k, v| {
        b.drain_controller = Some(parse_controller(k, v)?);
        Ok(())
    }),
    ("dialects", |b, k, v| {
        b.dialects = parse_dialects(k, v)?;
        Ok(())
    }),
];

const DEADLINE_KEYS: &[Key<DeadlineConfig>] = &[
    ("default_timeout_ms", |d, k, v| {
        d.default_timeout_ms = duration(k, v)?;
        Ok(())
    }),
    ("max_timeout_ms", |d, k, v| {
        d.max_timeout_ms = duration(k, v)?;
        Ok(())
    }),
    ("min_budget_ms", |d, k, v| {
        d.min_budget_ms = duration(k, v)?;
        Ok(())
    }),
    ("websocket_default_timeout_ms", |d, k, v| {
        d.websocket_default_timeout_ms = duration(k, v)?;
        Ok(())
    }),
    ("upstream_headers", |d, k, v| {
        d.upstream_headers = match string(k, v)? {
            "router" => UpstreamHeaders::Router,
            "all" => UpstreamHeaders::All,
            other => return Err(expected_one_of(k, "\"router\" or \"all\"", other)),
        };
        Ok(())
    }),
];

const CONTROLLER_KEYS: &[Key<ControllerConfig>] = &[
    ("cluster", |c, k, v| {
        c.cluster = string(k, v)?.to_string();
        Ok(())
    }),
    ("path", |c, k, v| {
        c.path = string(k, v)?.to_string();
        Ok(())
    }),
    ("poll_ms", |c, k, v| {
        c.poll_ms = integer(k, v, 100, 60_000)?;
        Ok(())
    }),
];

/// Reads the members of `obj` (at `path`, `""` for the document) into
/// `into` by `keys`: a key not in `keys` is refused, and of a repeated key
/// the last value counts.
fn read_object<T>(into: &mut T, obj: &Map, path: &str, keys: &[Key<T>]) -> Result<(), ConfigError> {
    let path_of = |key: &str| match path {
        "" => key.to_string(),
        _ => format!("{path}.{key}"),
    };
    if let Some((key, _)) = obj
        .iter()
        .find(|(key, _)| !keys.iter().any(|(known, _)| known == key))
    {
        let known: Vec<&str> = keys.iter().map(|(name, _)| *name).collect();
        return Err(ConfigError::new(
            path_of(key),
            format!("unknown key (known keys: {})", known.join(", ")),
        ));
    }
    for (name, read) in keys {
        if let Some(value) = obj.get(name) {
            read(into, &path_of(name), value)?;
        }
    }
    Ok(())
}

/// `value` as an object; `what` describes it in the error.
fn object<'v>(key: &str, value: &'v Value, what: &str) -> Result<&'v Map, ConfigError> {
    value.as_object().ok_or_else(|| {
        ConfigError::new(
            key,
            format!("expected a JSON object{what}, got {}", kind(value)),
        )
    })
}

fn expected_one_of(key: &str, choices: &str, got: &str) -> ConfigError {
    ConfigError::new(key, format!("expected {choices}, got {}", json::quote(got)))
}

fn parse_dialects(key: &str, value: &Value) -> Result<Vec<PathDialect>, ConfigError> {
    let obj = object(key, value, " of path prefixes and dialects")?;
    let mut out = Vec::new();
    for (prefix, value) in obj.entries() {
        let key = format!("{key}.{prefix}");
        if !prefix.starts_with('/') || prefix.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                key,
                "expected a path prefix like \"/custom/chat\"",
            ));
        }
        let name = string(&key, value)?;
        let dialect = Dialect::by_name(name).ok_or_else(|| {
            ConfigError::new(
                &key,
                format!(
                    "unknown dialect {} (known: openai, openai_responses, anthropic, grpc, plain)",
                    json::quote(name)
                ),
            )
        })?;
        // Longest prefix first; of equal lengths, document order (an
        // insertion, not `sort`: the sort's code is kilobytes of the module).
        let at = out
            .iter()
            .position(|d: &PathDialect| d.prefix.len() < prefix.len())
            .unwrap_or(out.len());
        out.insert(
            at,
            PathDialect {
                prefix: prefix.clone(),
                dialect,
            },
        );
    }
    Ok(out)
}

fn parse_controller(key: &str, value: &Value) -> Result<ControllerConfig, ConfigError> {
    let obj = object(key, value, "")?;
    let mut c = ControllerConfig {
        cluster: String::new(),
        path: "/drain".to_string(),
        poll_ms: 1_000,
    };
    read_object(&mut c, obj, key, CONTROLLER_KEYS)?;
    if c.cluster.is_empty() {
        return Err(ConfigError::new(
            "drain_controller.cluster",
            "required: the Envoy cluster that reaches the drain controller",
        ));
    }
    if !c.path.starts_with('/') || c.path.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "drain_controller.path",
            format!(
                "expected an absolute path like \"/drain\", got {}",
                json::quote(&c.path)
            ),
        ));
    }
    Ok(c)
}

fn string<'v>(key: &str, value: &'v Value) -> Result<&'v str, ConfigError> {
    value
        .as_str()
        .ok_or_else(|| ConfigError::new(key, format!("expected a string, got {}", kind(value))))
}

fn duration(key: &str, value: &Value) -> Result<u64, ConfigError> {
    integer(key, value, 0, MAX_DURATION_MS)
}

fn integer(key: &str, value: &Value, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            key,
            format!("expected an integer from {min} to {max}, got {value}"),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_configuration_gives_the_documented_defaults() {
        for input in [&b""[..], b"  \n", b"{}"] {
            let cfg = Config::parse(input).unwrap();
            assert_eq!(cfg, Config::default());
        }
        let d = Config::default();
        assert_eq!(d.role, Role::Traffic);
        assert_eq!(d.health_path, "/healthz/ready");
        assert_eq!(
            (d.admit_window_ms, d.grace_ms, d.retry_after_s),
            (5_000, 30_000, 5)
        );
        assert_eq!(
            (
                d.deadline.default_timeout_ms,
                d.deadline.max_timeout_ms,
                d.deadline.min_budget_ms
            ),
            (60_000, 600_000, 5_000)
        );
        assert_eq!(d.deadline.upstream_headers, UpstreamHeaders::Router);
        assert_eq!(d.deadline.websocket_default_timeout_ms, NO_DEADLINE);
        assert_eq!(d.admin_token, None);
        assert_eq!(d.final_event_margin_ms, 1_000);
        assert_eq!(d.drain_controller, None);
        let c = Config::parse(br#"{"drain_controller":{"cluster":"ctl"}}"#).unwrap();
        assert_eq!(
            c.drain_controller,
            Some(ControllerConfig {
                cluster: "ctl".into(),
                path: "/drain".into(),
                poll_ms: 1_000
            })
        );
    }

    #[test]
    fn every_key_is_read() {
        let cfg = Config::parse(
            br#"{"role":"admin","health_path":"/ready","admit_window_ms":1000,"grace_ms":2000,
                "retry_after_s":7,"deadline":{"default_timeout_ms":300,"websocket_default_timeout_ms":350,"max_timeout_ms":400,"min_budget_ms":100,"upstream_headers":"all"},
                "admin_token":"s3cret","envoy_admin_cluster":"envoy_admin","final_event_margin_ms":50}"#,
        )
        .unwrap();
        assert_eq!(cfg.role, Role::Admin);
        assert_eq!(cfg.health_path, "/ready");
        assert_eq!(
            (cfg.admit_window_ms, cfg.grace_ms, cfg.retry_after_s),
            (1000, 2000, 7)
        );
        assert_eq!(
            cfg.deadline,
            DeadlineConfig {
                default_timeout_ms: 300,
                websocket_default_timeout_ms: 350,
                max_timeout_ms: 400,
                min_budget_ms: 100,
                upstream_headers: UpstreamHeaders::All,
            }
        );
        assert_eq!(cfg.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.envoy_admin_cluster.as_deref(), Some("envoy_admin"));
        assert_eq!(cfg.final_event_margin_ms, 50);
    }

    /// The key tables are what is read and what an unknown key's error
    /// lists: every listed key is taken (a wrong value gets a type error,
    /// not "unknown key"), in every section.
    #[test]
    fn every_listed_key_is_accepted_and_listed_in_the_unknown_key_error() {
        fn names<T>(keys: &[Key<T>]) -> Vec<&'static str> {
            keys.iter().map(|(name, _)| *name).collect()
        }
        let sections = [
            ("", r#"{"x":1}"#, names(TOP_KEYS)),
            ("deadline", r#"{"deadline":{"x":1}}"#, names(DEADLINE_KEYS)),
            (
                "drain_controller",
                r#"{"drain_controller":{"x":1}}"#,
                names(CONTROLLER_KEYS),
            ),
        ];
        for (section, unknown, keys) in sections {
            let err = Config::parse(unknown.as_bytes()).unwrap_err();
            assert_eq!(
                err.problem,
                format!("unknown key (known keys: {})", keys.join(", "))
            );
            for key in keys {
                let doc = match section {
                    "" => format!(r#"{{"{key}":[]}}"#),
                    _ => format!(r#"{{"{section}":{{"{key}":[]}}}}"#),
                };
                let err = Config::parse(doc.as_bytes()).unwrap_err();
                let path = match section {
                    "" => key.to_string(),
                    _ => format!("{section}.{key}"),
                };
                assert_eq!(err.key, path, "{doc}: {err}");
                assert!(err.problem.starts_with("expected "), "{doc}: {err}");
            }
        }
    }

    #[test]
    fn of_a_repeated_key_the_last_value_counts() {
        let c = Config::parse(
            br#"{"grace_ms":1000,"deadline":{"max_timeout_ms":1},"grace_ms":9000,
                "deadline":{"min_budget_ms":0},"dialects":{"/a":"openai","/a":"anthropic"}}"#,
        )
        .unwrap();
        assert_eq!(c.grace_ms, 9000);
        // The second `deadline` replaces the first, it is not merged with it.
        assert_eq!(c.deadline.max_timeout_ms, 600_000);
        assert_eq!(c.deadline.min_budget_ms, 0);
        let dialects: Vec<_> = c
            .dialects
            .iter()
            .map(|d| (d.prefix.as_str(), d.dialect))
            .collect();
        assert_eq!(dialects, [("/a", Dialect::Anthropic)]);
    }

    #[test]
    fn a_default_follows_the_keys_it_depends_on_and_never_conflicts_with_them() {
        let c = |json: &str| Config::parse(json.as_bytes()).unwrap();
        let cfg = c(r#"{"grace_ms":3000}"#);
        assert_eq!((cfg.admit_window_ms, cfg.grace_ms), (3_000, 3_000));
        let cfg = c(r#"{"admit_window_ms":40000}"#);
        assert_eq!((cfg.admit_window_ms, cfg.grace_ms), (40_000, 40_000));
        let d = c(r#"{"deadline":{"default_timeout_ms":1000}}"#).deadline;
        assert_eq!((d.min_budget_ms, d.max_timeout_ms), (1_000, 600_000));
        let d = c(r#"{"deadline":{"default_timeout_ms":700000}}"#).deadline;
        assert_eq!((d.min_budget_ms, d.max_timeout_ms), (5_000, 700_000));
        let d = c(r#"{"deadline":{"max_timeout_ms":30000}}"#).deadline;
        assert_eq!((d.default_timeout_ms, d.min_budget_ms), (30_000, 5_000));
        let d = c(r#"{"deadline":{"min_budget_ms":70000}}"#).deadline;
        assert_eq!((d.default_timeout_ms, d.max_timeout_ms), (70_000, 600_000));
        let d = c(r#"{"deadline":{"min_budget_ms":700000}}"#).deadline;
        assert_eq!((d.default_timeout_ms, d.max_timeout_ms), (700_000, 700_000));
        let d = c(r#"{"deadline":{"websocket_default_timeout_ms":3600000}}"#).deadline;
        assert_eq!((d.max_timeout_ms, d.min_budget_ms), (3_600_000, 5_000));
        let d = c(r#"{"deadline":{"websocket_default_timeout_ms":4000}}"#).deadline;
        assert_eq!((d.max_timeout_ms, d.min_budget_ms), (600_000, 4_000));
        // The WebSocket default is checked against the bounds as they end up.
        let d =
            c(r#"{"deadline":{"websocket_default_timeout_ms":2000,"default_timeout_ms":1000}}"#)
                .deadline;
        assert_eq!(d.websocket_default_timeout_ms, 2_000);
        // Values set explicitly can still conflict.
        let err = Config::parse(br#"{"grace_ms":3000,"admit_window_ms":4000}"#).unwrap_err();
        assert_eq!(err.key, "admit_window_ms");
        // Empty input and the empty object give the same defaults.
        assert_eq!(c("{}"), Config::default());
    }

    #[test]
    fn the_margin_default_follows_the_minimum_budget() {
        let c = Config::parse(br#"{"deadline":{"min_budget_ms":500}}"#).unwrap();
        assert_eq!(c.final_event_margin_ms, 500);
        let c = Config::parse(br#"{"deadline":{"min_budget_ms":0}}"#).unwrap();
        assert_eq!(c.final_event_margin_ms, 0);
        let c = Config::parse(br#"{"deadline":{"min_budget_ms":3000}}"#).unwrap();
        assert_eq!(c.final_event_margin_ms, 1_000);
        // An explicit margin is kept, whatever the order of the keys.
        let c = Config::parse(br#"{"final_event_margin_ms":200,"deadline":{"min_budget_ms":500}}"#)
            .unwrap();
        assert_eq!(c.final_event_margin_ms, 200);
    }

    #[test]
    fn dialect_overrides_are_read_longest_prefix_first() {
        let c = Config::parse(br#"{"dialects":{"/a/":"anthropic","/a/b/":"openai_responses"}}"#)
            .unwrap();
        let got: Vec<_> = c
            .dialects
            .iter()
            .map(|d| (d.prefix.as_str(), d.dialect))
            .collect();
        assert_eq!(
            got,
            [
                ("/a/b/", Dialect::OpenAiResponses),
                ("/a/", Dialect::Anthropic)
            ]
        );
    }

    #[test]
    fn retry_after_is_at_most_what_the_sdks_honour() {
        assert_eq!(
            Config::parse(br#"{"retry_after_s":60}"#)
                .unwrap()
                .retry_after_s,
            60
        );
        assert_eq!(
            Config::parse(br#"{"retry_after_s":0}"#)
                .unwrap()
                .retry_after_s,
            0
        );
    }

    #[test]
    fn each_configuration_error_names_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[1]", "<root>", "expected a JSON object"),
            ("{", "<root>", "not valid JSON"),
            (r#"{"grace":1}"#, "grace", "unknown key"),
            (r#"{"deadline":{"max":1}}"#, "deadline.max", "unknown key"),
            (r#"{"deadline":5}"#, "deadline", "expected a JSON object"),
            (
                r#"{"deadline":{"upstream_headers":"none"}}"#,
                "deadline.upstream_headers",
                "expected \"router\" or \"all\"",
            ),
            (
                r#"{"deadline":{"upstream_headers":true}}"#,
                "deadline.upstream_headers",
                "expected a string",
            ),
            (
                r#"{"role":"both"}"#,
                "role",
                "expected \"traffic\" or \"admin\"",
            ),
            (r#"{"role":1}"#, "role", "expected a string"),
            (r#"{"grace_ms":"30s"}"#, "grace_ms", "expected an integer"),
            (r#"{"grace_ms":-1}"#, "grace_ms", "expected an integer"),
            (r#"{"grace_ms":1.5}"#, "grace_ms", "expected an integer"),
            (
                r#"{"grace_ms":99999999999999}"#,
                "grace_ms",
                "expected an integer",
            ),
            (
                r#"{"retry_after_s":100000}"#,
                "retry_after_s",
                "the anthropic SDK ignores",
            ),
            (r#"{"dialects":[]}"#, "dialects", "expected a JSON object"),
            (
                r#"{"dialects":{"chat":"openai"}}"#,
                "dialects.chat",
                "path prefix",
            ),
            (
                r#"{"dialects":{"/c":"websocket"}}"#,
                "dialects./c",
                "unknown dialect",
            ),
            (
                r#"{"dialects":{"/c":1}}"#,
                "dialects./c",
                "expected a string",
            ),
            (r#"{"retry_after_s":61}"#, "retry_after_s", "exceeds 60"),
            (
                r#"{"retry_after_s":"5"}"#,
                "retry_after_s",
                "expected an integer from 0 to 60",
            ),
            (
                r#"{"final_event_margin_ms":2000,"deadline":{"min_budget_ms":1500}}"#,
                "final_event_margin_ms",
                "exceeds deadline.min_budget_ms",
            ),
            (r#"{"health_path":"ready"}"#, "health_path", "absolute path"),
            (r#"{"health_path":"/a b"}"#, "health_path", "absolute path"),
            (r#"{"health_path":"/r?x=1"}"#, "health_path", "query string"),
            (
                r#"{"admit_window_ms":40000,"grace_ms":30000}"#,
                "admit_window_ms",
                "exceeds grace_ms",
            ),
            (
                r#"{"deadline":{"max_timeout_ms":0,"default_timeout_ms":0,"min_budget_ms":0}}"#,
                "deadline.max_timeout_ms",
                "greater than 0",
            ),
            (
                r#"{"deadline":{"default_timeout_ms":700000,"max_timeout_ms":600000}}"#,
                "deadline.default_timeout_ms",
                "exceeds deadline.max_timeout_ms",
            ),
            (
                r#"{"deadline":{"min_budget_ms":70000,"default_timeout_ms":60000}}"#,
                "deadline.min_budget_ms",
                "exceeds deadline.default_timeout_ms",
            ),
            (
                r#"{"deadline":{"websocket_default_timeout_ms":700000,"max_timeout_ms":600000}}"#,
                "deadline.websocket_default_timeout_ms",
                "expected an integer from 5000 to 600000",
            ),
            (
                r#"{"deadline":{"websocket_default_timeout_ms":4000,"min_budget_ms":5000}}"#,
                "deadline.websocket_default_timeout_ms",
                "expected an integer from 5000 to 600000",
            ),
            (
                r#"{"deadline":{"websocket_default_timeout_ms":null}}"#,
                "deadline.websocket_default_timeout_ms",
                "expected an integer",
            ),
            (
                r#"{"admin_token":"t"}"#,
                "admin_token",
                "only applies to role",
            ),
            (
                r#"{"role":"admin","admin_token":""}"#,
                "admin_token",
                "non-empty",
            ),
            (
                r#"{"role":"admin","admin_token":"a b"}"#,
                "admin_token",
                "non-empty",
            ),
            (
                r#"{"envoy_admin_cluster":"x"}"#,
                "envoy_admin_cluster",
                "only applies",
            ),
            (
                r#"{"role":"admin","envoy_admin_cluster":""}"#,
                "envoy_admin_cluster",
                "must name",
            ),
        ];
        for (input, key, problem) in cases {
            let err = Config::parse(input.as_bytes()).expect_err(input);
            assert_eq!(&err.key, key, "input {input}: {err}");
            assert!(err.problem.contains(problem), "input {input}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
