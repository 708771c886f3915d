//! Ending a server-sent-events stream explicitly instead of cutting it.
//!
//! A stream still running near its deadline, or near the end of the drain's
//! grace period, would be reset by Envoy (router timeout, or Envoy exiting):
//! the client sees a truncated body and cannot tell why. Instead, a little
//! before that limit the plugin ends the stream with a final event carrying
//! the OpenAI error object, and sends nothing after it (no `[DONE]`), so SDKs
//! raise a clear error and clients can tell truncation from completion.
//!
//! The event is only inserted at an event boundary (after a blank line), so
//! the client never sees a torn event.
//!
//! - [`framing`]: whether bytes are SSE framing ([`looks_like_events`],
//!   [`shows_events`]);
//! - [`cutter`]: the state machine that ends an event stream once, at a
//!   boundary ([`Cutter`]);
//! - [`body`]: a forwarded response's body, classified as an event stream
//!   or not once it must end ([`Body`]);
//! - [`cut`]: when a stream must end, and why ([`CutPolicy`]);
//! - [`final_event`](mod@final_event): the final event and its [`Limit`].

pub mod body;
pub mod cut;
pub mod cutter;
pub mod final_event;
pub mod framing;

pub use body::{Body, UNCLASSIFIED_CHUNKS};
pub use cut::{cutoff, earliest_cut, CutPolicy};
pub use cutter::Cutter;
pub use final_event::{final_event, Limit};
pub use framing::{looks_like_events, shows_events};

/// What to do with one response body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAction {
    /// Pass it unchanged.
    Forward,
    /// Replace it with these bytes (a prefix of it and the final event).
    Replace(Vec<u8>),
    /// The final event has gone: drop the chunk and end the stream.
    Drop,
}
