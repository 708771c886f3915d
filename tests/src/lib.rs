//! Test support for drainpipe: a fake OpenAI-compatible upstream, and a real
//! Envoy as a child process with the repository's configuration.

pub mod envoy;
pub mod fake_llm;
pub mod hardening;
pub mod real_llm;
pub mod rollout;

pub use envoy::{Envoy, EnvoyConfig, EnvoyOptions, Ports};
pub use fake_llm::FakeLlm;
