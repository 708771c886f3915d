//! Test support for drainpipe: a fake OpenAI-compatible upstream, and a real
//! Envoy as a child process with the repository's configuration.

pub mod envoy;
pub mod fake_dialects;
pub mod fake_llm;
pub mod fake_ws;
pub mod hardening;
pub mod rollout;

pub use envoy::{Envoy, EnvoyConfig, EnvoyOptions, Ports};
pub use fake_llm::FakeLlm;
