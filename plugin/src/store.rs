//! Changing the stored drain state: a compare-and-swap on the host's shared
//! data, retried while other workers write in between.
//!
//! Every worker, and both the traffic and the admin filter instances, may
//! write the drain record ([`crate::drain::SHARED_KEY`]) at once. A write
//! names the version of the value it read, and the host refuses it if
//! another write came in between; the change is then worked out again from
//! what is stored now. The glue gives access to the host's shared data
//! through [`SharedValue`], so the policy here runs natively against a
//! fake.

use crate::admin;
use crate::drain::{self, Drain};

/// Why the host refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused<E> {
    /// Another write came in since the read (the version moved on).
    Mismatch,
    /// Any other failure.
    Failed(E),
}

/// A shared-data value as read: its bytes (`None` if never stored) and its
/// version.
pub type Versioned = (Option<Vec<u8>>, Option<u32>);

/// A value in the host's shared data.
pub trait SharedValue {
    /// The host's error.
    type Error;
    /// The value and its version.
    fn read(&mut self) -> Result<Versioned, Self::Error>;
    /// Stores `value` if the version is still `version`.
    fn write(&mut self, value: &[u8], version: Option<u32>) -> Result<(), Refused<Self::Error>>;
}

/// A change to the stored drain state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `POST /drain`: start a drain now, unless one is on (the first start
    /// time stays, see [`admin::start`]).
    Start { now_unix_ms: u64 },
    /// Adopt a drain controller's state (see [`drain::follow`]).
    Follow(Drain),
}

/// How many times a drain start is tried while other writers get in first:
/// concurrent starts from several workers keep one start time.
pub const START_ATTEMPTS: u32 = 8;

impl Change {
    /// What to store given what is stored; `None` keeps it.
    pub fn apply(self, current: Drain) -> Option<Drain> {
        match self {
            Change::Start { now_unix_ms } => {
                let next = admin::start(current, now_unix_ms);
                (next != current).then_some(next)
            }
            Change::Follow(controller) => drain::follow(controller, current),
        }
    }

    /// How many times the change is tried: a start until it is stored (up
    /// to [`START_ATTEMPTS`]); following a controller once, since the next
    /// poll looks again.
    pub fn attempts(self) -> u32 {
        match self {
            Change::Start { .. } => START_ATTEMPTS,
            Change::Follow(_) => 1,
        }
    }
}

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated<E> {
    /// This state was stored: the glue then signals the change to every
    /// worker.
    Stored(Drain),
    /// What is stored already says the same.
    Unchanged,
    /// The stored state could not be read.
    ReadFailed(E),
    /// The new state could not be stored.
    WriteFailed(E),
    /// Other writers got in first on every attempt.
    KeptChanging,
}

/// Makes `change` on the stored drain state. An unreadable record counts as
/// serving.
pub fn update<V: SharedValue>(value: &mut V, change: Change) -> Updated<V::Error> {
    for _ in 0..change.attempts() {
        let (bytes, version) = match value.read() {
            Ok(v) => v,
            Err(e) => return Updated::ReadFailed(e),
        };
        let current = Drain::decode(bytes.as_deref()).unwrap_or(Drain::SERVING);
        let Some(next) = change.apply(current) else {
            return Updated::Unchanged;
        };
        match value.write(&next.encode(), version) {
            Ok(()) => return Updated::Stored(next),
            Err(Refused::Mismatch) => continue,
            Err(Refused::Failed(e)) => return Updated::WriteFailed(e),
        }
    }
    Updated::KeptChanging
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared data in memory; `interlopers` writes land between each read
    /// and write of the update, `fail_reads`/`fail_writes` make the host
    /// refuse.
    #[derive(Default)]
    struct Fake {
        bytes: Option<Vec<u8>>,
        version: u32,
        interlopers: Vec<Drain>,
        fail_reads: bool,
        fail_writes: bool,
        reads: u32,
    }

    impl SharedValue for Fake {
        type Error = &'static str;

        fn read(&mut self) -> Result<Versioned, &'static str> {
            self.reads += 1;
            if self.fail_reads {
                return Err("unreadable");
            }
            let read = (self.bytes.clone(), Some(self.version));
            if !self.interlopers.is_empty() {
                let other = self.interlopers.remove(0);
                self.bytes = Some(other.encode());
                self.version += 1;
            }
            Ok(read)
        }

        fn write(
            &mut self,
            value: &[u8],
            version: Option<u32>,
        ) -> Result<(), Refused<&'static str>> {
            if self.fail_writes {
                return Err(Refused::Failed("full"));
            }
            if version.is_some_and(|v| v != self.version) {
                return Err(Refused::Mismatch);
            }
            self.bytes = Some(value.to_vec());
            self.version += 1;
            Ok(())
        }
    }

    impl Fake {
        fn holding(drain: Drain) -> Fake {
            Fake {
                bytes: Some(drain.encode()),
                ..Fake::default()
            }
        }

        fn stored(&self) -> Drain {
            Drain::decode(self.bytes.as_deref()).unwrap()
        }
    }

    const START: Change = Change::Start { now_unix_ms: 5_000 };

    #[test]
    fn a_start_is_stored_when_serving_and_keeps_an_earlier_start() {
        let mut serving = Fake::default();
        assert_eq!(
            update(&mut serving, START),
            Updated::Stored(Drain::started_at(5_000))
        );
        assert_eq!(serving.stored(), Drain::started_at(5_000));
        let mut draining = Fake::holding(Drain::started_at(1_000));
        assert_eq!(update(&mut draining, START), Updated::Unchanged);
        assert_eq!(draining.stored(), Drain::started_at(1_000));
    }

    #[test]
    fn a_start_retries_while_other_writers_get_in_first_and_adopts_their_start() {
        // Two writes that do not start a drain, then one that does: the
        // start sees it and keeps its earlier start time.
        let mut fake = Fake {
            interlopers: vec![Drain::SERVING, Drain::SERVING, Drain::started_at(4_000)],
            ..Fake::default()
        };
        assert_eq!(update(&mut fake, START), Updated::Unchanged);
        assert_eq!(fake.stored(), Drain::started_at(4_000));
        assert_eq!(fake.reads, 4);
        let mut fake = Fake {
            interlopers: vec![Drain::SERVING; 2],
            ..Fake::default()
        };
        assert_eq!(
            update(&mut fake, START),
            Updated::Stored(Drain::started_at(5_000))
        );
        assert_eq!(fake.reads, 3);
    }

    #[test]
    fn a_start_gives_up_after_eight_attempts_that_all_lost() {
        let mut fake = Fake {
            interlopers: vec![Drain::SERVING; 20],
            ..Fake::default()
        };
        assert_eq!(update(&mut fake, START), Updated::KeptChanging);
        assert_eq!(fake.reads, START_ATTEMPTS);
        assert_eq!(START_ATTEMPTS, 8);
        assert_eq!(fake.stored(), Drain::SERVING);
    }

    #[test]
    fn following_a_controller_tries_once_and_leaves_a_lost_write_to_the_next_poll() {
        let controller = Change::Follow(Drain::started_at(2_000));
        let mut fake = Fake {
            interlopers: vec![Drain::SERVING],
            ..Fake::default()
        };
        assert_eq!(update(&mut fake, controller), Updated::KeptChanging);
        assert_eq!(fake.reads, 1);
        let mut fake = Fake::default();
        assert_eq!(
            update(&mut fake, controller),
            Updated::Stored(Drain::started_at(2_000))
        );
        // A drain already on keeps its own start; the controller's serving
        // ends it.
        assert_eq!(update(&mut fake, controller), Updated::Unchanged);
        assert_eq!(
            update(&mut fake, Change::Follow(Drain::SERVING)),
            Updated::Stored(Drain::SERVING)
        );
    }

    #[test]
    fn host_failures_end_the_update_at_once() {
        let mut fake = Fake {
            fail_reads: true,
            ..Fake::default()
        };
        assert_eq!(update(&mut fake, START), Updated::ReadFailed("unreadable"));
        assert_eq!(fake.reads, 1);
        let mut fake = Fake {
            fail_writes: true,
            ..Fake::default()
        };
        assert_eq!(update(&mut fake, START), Updated::WriteFailed("full"));
        assert_eq!(fake.reads, 1);
    }

    #[test]
    fn an_unreadable_record_counts_as_serving() {
        let mut fake = Fake {
            bytes: Some(b"yesterday".to_vec()),
            ..Fake::default()
        };
        assert_eq!(
            update(&mut fake, START),
            Updated::Stored(Drain::started_at(5_000))
        );
        let mut fake = Fake {
            bytes: Some(b"yesterday".to_vec()),
            ..Fake::default()
        };
        assert_eq!(
            update(&mut fake, Change::Follow(Drain::SERVING)),
            Updated::Unchanged
        );
    }
}
