//! Test support for drainpipe, shared by the tests, the benchmark and the
//! task runner:
//! - [`guests`]: every proxy-wasm module built in one place, paths exposed;
//! - [`envoy`]: a real Envoy as a child process with the repository's
//!   configuration, and its guard;
//! - [`process`]: child-process guards; [`procfs`]: a process's CPU time
//!   and memory; [`http1`]: HTTP/1.1 by hand (blocking, and raw requests);
//! - with the `async` feature (on by default): [`fake_llm`], a fake
//!   OpenAI-compatible upstream; [`load`], streams and short requests
//!   through Envoy while it drains; [`python`], the Python SDK clients;
//!   [`stats`], Envoy's stats; [`rollout`], the rollout harness. [`rng`]:
//!   fixed-seed pseudo-random choices.
//!
//! Without the `async` feature nothing here needs a runtime: the task
//! runner builds with it off.

pub mod envoy;
pub mod guests;
pub mod http1;
pub mod ops;
pub mod paths;
pub mod process;
pub mod procfs;
pub mod rng;

#[cfg(feature = "async")]
pub mod fake_dialects;
#[cfg(feature = "async")]
pub mod fake_llm;
#[cfg(feature = "async")]
pub mod fake_ws;
#[cfg(feature = "async")]
pub mod load;
#[cfg(feature = "async")]
pub mod python;
#[cfg(feature = "async")]
pub mod real_llm;
#[cfg(feature = "async")]
pub mod rollout;
#[cfg(feature = "async")]
pub mod stats;

/// The drain rejection asserted by one function (the plugin's own, see
/// `drainpipe::contract`), for every test that meets one.
pub use drainpipe::contract;
pub use envoy::{Envoy, EnvoyConfig, EnvoyOptions, Ports};
#[cfg(feature = "async")]
pub use fake_llm::FakeLlm;
