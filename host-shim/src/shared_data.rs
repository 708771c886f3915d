//! Shared data and shared queues: process-wide in Envoy, so one
//! [`SharedData`] is shared by every worker of a host.
//!
//! Semantics follow Envoy's host: data is keyed by vm_id then key; every
//! write gets a new nonzero CAS value; a write with `cas == 0` overwrites
//! unconditionally; a write with a nonzero `cas` to an existing key whose
//! CAS differs fails with CAS_MISMATCH; a write to a missing key always
//! succeeds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::abi::{AbiResult, Status};

/// Key-value data and queues shared by all workers.
#[derive(Debug, Default)]
pub struct SharedData {
    inner: Mutex<Inner>,
}

/// One vm_id's entries: key to (value, CAS).
type Entries = HashMap<Vec<u8>, (Vec<u8>, u32)>;

#[derive(Debug)]
struct Inner {
    data: HashMap<String, Entries>,
    next_cas: u32,
    queue_tokens: HashMap<(String, Vec<u8>), u32>,
    queues: BTreeMap<u32, Queue>,
    next_queue: u32,
    ready: Vec<QueueReady>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            data: HashMap::new(),
            next_cas: 1,
            queue_tokens: HashMap::new(),
            queues: BTreeMap::new(),
            next_queue: 1,
            ready: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Queue {
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

/// The root context that registered a queue, notified on enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueOwner {
    pub(crate) worker: u32,
    pub(crate) context_id: u32,
}

/// A pending `proxy_on_queue_ready` notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueReady {
    pub(crate) owner: QueueOwner,
    pub(crate) token: u32,
}

impl SharedData {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value and CAS of `key` under `vm_id`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(vm_id)?.get(key).cloned()
    }

    /// Writes `value` with Envoy's CAS rule (see the module docs).
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> AbiResult {
        let mut inner = self.lock();
        let cas_value = inner.next_cas;
        let map = inner.data.entry(vm_id.to_owned()).or_default();
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(Status::CasMismatch);
                }
                *entry = (value.to_vec(), cas_value);
            }
            None => {
                map.insert(key.to_vec(), (value.to_vec(), cas_value));
            }
        }
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        Ok(())
    }

    /// Registers (or finds) the queue `name` of `vm_id`.
    pub(crate) fn register_queue(&self, vm_id: &str, name: &[u8], owner: QueueOwner) -> u32 {
        let mut inner = self.lock();
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(&token) = inner.queue_tokens.get(&key) {
            return token;
        }
        let token = inner.next_queue;
        inner.next_queue += 1;
        inner.queue_tokens.insert(key, token);
        inner.queues.insert(
            token,
            Queue {
                owner,
                items: VecDeque::new(),
            },
        );
        token
    }

    /// The token of the queue `name` of `vm_id`.
    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &[u8]) -> AbiResult<u32> {
        let key = (vm_id.to_owned(), name.to_vec());
        self.lock()
            .queue_tokens
            .get(&key)
            .copied()
            .ok_or(Status::NotFound)
    }

    /// Appends to a queue and schedules its owner's notification.
    pub(crate) fn enqueue(&self, token: u32, value: &[u8]) -> AbiResult {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.push_back(value.to_vec());
        let owner = queue.owner;
        inner.ready.push(QueueReady { owner, token });
        Ok(())
    }

    /// Takes the oldest item of a queue.
    pub(crate) fn dequeue(&self, token: u32) -> AbiResult<Vec<u8>> {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    /// Takes the pending notifications addressed to `worker`.
    pub(crate) fn take_ready(&self, worker: u32) -> Vec<QueueReady> {
        let mut inner = self.lock();
        let (mine, rest) = std::mem::take(&mut inner.ready)
            .into_iter()
            .partition(|r| r.owner.worker == worker);
        inner.ready = rest;
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_zero_overwrites_and_stale_cas_is_rejected() {
        let shared = SharedData::new();
        shared.set("vm", b"k", b"1", 0).unwrap();
        let (_, cas1) = shared.get("vm", b"k").unwrap();
        shared.set("vm", b"k", b"2", cas1).unwrap();
        assert_eq!(shared.set("vm", b"k", b"3", cas1), Err(Status::CasMismatch));
        shared.set("vm", b"k", b"4", 0).unwrap();
        assert_eq!(shared.get("vm", b"k").unwrap().0, b"4");
        assert!(shared.get("other", b"k").is_none());
    }

    #[test]
    fn write_with_cas_to_missing_key_succeeds() {
        let shared = SharedData::new();
        shared.set("vm", b"new", b"v", 42).unwrap();
        assert_eq!(shared.get("vm", b"new").unwrap().0, b"v");
    }
}
