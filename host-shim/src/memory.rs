//! Guest linear memory: bounds-checked reads and writes, and copying host
//! data into memory the guest allocates. A bad pointer or length becomes
//! `InvalidMemoryAccess`, as in Envoy; it never panics the host.

use wasmtime::{Caller, Extern, Memory};

use crate::abi::{self, Status};
use crate::headers::Headers;
use crate::state::HostState;

/// Why a host function body stopped: a status for the guest, or a trap
/// (raised by the guest's allocator) that must unwind the guest call.
#[derive(Debug)]
pub(crate) enum HostError {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for HostError {
    fn from(status: Status) -> Self {
        HostError::Status(status)
    }
}

pub(crate) type HostResult<T = ()> = Result<T, HostError>;

/// Turns a host function body's result into the status code it returns.
pub(crate) fn status(result: HostResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(HostError::Status(s)) => Ok(s.code()),
        Err(HostError::Trap(e)) => Err(e),
    }
}

fn memory(caller: &mut Caller<'_, HostState>) -> HostResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(Status::InvalidMemoryAccess.into()),
    }
}

fn range(ptr: i32, len: i32, size: usize) -> HostResult<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    if end > size {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let mem = memory(caller)?;
    let data = mem.data(&*caller);
    let r = range(ptr, len, data.len())?;
    Ok(data[r].to_vec())
}

/// Reads guest bytes as UTF-8 text; invalid text is a bad argument.
pub(crate) fn read_str(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> HostResult<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument.into())
}

/// Reads a header map the guest serialized in the ABI's pairs format (a
/// call's headers and trailers, gRPC metadata, a local reply's headers); a
/// malformed one is a bad argument.
pub(crate) fn read_header_map(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> HostResult<Headers> {
    let data = read(caller, ptr, len)?;
    let pairs = abi::deserialize_pairs(&data).ok_or(Status::BadArgument)?;
    Ok(Headers::from_raw_pairs(pairs))
}

/// Writes bytes at `ptr`.
pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> HostResult {
    let mem = memory(caller)?;
    let data = mem.data_mut(&mut *caller);
    let r = range(ptr, bytes.len() as i32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian `u32` at `ptr`.
pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian `u64` at `ptr`.
pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, value: u64) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory allocated by the guest and writes the pointer
/// and size to `ptr_ptr` and `size_ptr`. Empty data is returned as a null
/// pointer with size 0, as Envoy does.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    // Check the return slots before allocating, so a bad pointer leaks nothing.
    let mem = memory(caller)?;
    let size = mem.data_size(&*caller);
    range(ptr_ptr, 4, size)?;
    range(size_ptr, 4, size)?;
    let mut ptr = 0;
    if !bytes.is_empty() {
        ptr = allocate(caller, bytes.len())?;
        write(caller, ptr, bytes)?;
    }
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, bytes.len() as u32)
}

/// Calls the guest's allocator (`proxy_on_memory_allocate`, or `malloc`).
fn allocate(caller: &mut Caller<'_, HostState>, len: usize) -> HostResult<i32> {
    let len = i32::try_from(len).map_err(|_| Status::InvalidMemoryAccess)?;
    let func = ["proxy_on_memory_allocate", "malloc"]
        .into_iter()
        .find_map(|name| caller.get_export(name).and_then(Extern::into_func))
        .ok_or(Status::InvalidMemoryAccess)?;
    let func = func
        .typed::<i32, i32>(&*caller)
        .map_err(|_| Status::InvalidMemoryAccess)?;
    let ptr = func.call(&mut *caller, len).map_err(HostError::Trap)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_past_the_end_or_overflowing_are_invalid() {
        assert!(range(0, 4, 4).is_ok());
        assert!(range(1, 4, 4).is_err());
        assert!(range(-1, 4, 1 << 20).is_err());
        assert!(range(4, -1, 1 << 20).is_err());
    }
}
