//! Keeps, among a wasm module's `proxy_on_*` exports, only the callbacks the
//! filter handles.
//!
//! The proxy-wasm Rust SDK exports every callback of the ABI, and Envoy
//! enters the VM for each one a module exports (request body chunks,
//! trailers, `proxy_on_done`, `proxy_on_log`, ...), even when the filter
//! does nothing there. An entry into the VM is the dearest thing a filter
//! does per request (BENCHMARKS.md), so the release build drops the exports
//! of the callbacks the filter leaves to the SDK's defaults; Envoy then
//! applies the ABI's default for each (continue, done). `wasm-opt` removes
//! the code only they reached.
//!
//! Only the export section is rewritten; every other section is copied byte
//! for byte.

use anyhow::{bail, ensure, Context};

const MAGIC: &[u8; 4] = b"\0asm";
const EXPORT_SECTION: u8 = 7;
const CALLBACK_PREFIX: &str = "proxy_on_";
/// Not a callback: the host calls it to hand the module memory.
const ALLOCATOR: &str = "proxy_on_memory_allocate";

/// What [`keep_callbacks`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pruned {
    pub module: Vec<u8>,
    /// The callback exports removed, in the module's order.
    pub dropped: Vec<String>,
}

/// Removes every `proxy_on_*` export of `module` but `keep` (and the
/// allocator). Every name in `keep` must be exported: a misspelt callback
/// would otherwise vanish without a word.
pub fn keep_callbacks(module: &[u8], keep: &[&str]) -> anyhow::Result<Pruned> {
    ensure!(
        module.len() >= 8 && module.starts_with(MAGIC),
        "not a WebAssembly module"
    );
    let mut out = module[..8].to_vec();
    let mut dropped = Vec::new();
    let mut exported = Vec::new();
    let mut rest = Reader::new(&module[8..]);
    while !rest.done() {
        let id = rest.byte().context("section id")?;
        let len = rest.u32().context("section size")? as usize;
        let payload = rest.bytes(len).context("section payload")?;
        if id != EXPORT_SECTION {
            out.push(id);
            push_u32(&mut out, len as u32);
            out.extend_from_slice(payload);
            continue;
        }
        let mut section = Reader::new(payload);
        let count = section.u32().context("export count")?;
        let mut kept = Vec::new();
        let mut kept_count = 0u32;
        for _ in 0..count {
            let start = section.pos;
            let name_len = section.u32().context("export name size")? as usize;
            let name = std::str::from_utf8(section.bytes(name_len)?)
                .context("export name is not UTF-8")?
                .to_string();
            section.byte().context("export kind")?;
            section.u32().context("export index")?;
            let entry = &payload[start..section.pos];
            exported.push(name.clone());
            if name.starts_with(CALLBACK_PREFIX) && name != ALLOCATOR && !keep.contains(&&*name) {
                dropped.push(name);
            } else {
                kept.extend_from_slice(entry);
                kept_count += 1;
            }
        }
        ensure!(section.done(), "bytes after the last export");
        let mut body = Vec::new();
        push_u32(&mut body, kept_count);
        body.extend_from_slice(&kept);
        out.push(EXPORT_SECTION);
        push_u32(&mut out, body.len() as u32);
        out.extend_from_slice(&body);
    }
    let missing: Vec<&str> = keep
        .iter()
        .copied()
        .filter(|k| !exported.iter().any(|e| e == k))
        .collect();
    if !missing.is_empty() {
        bail!("the module does not export {missing:?}");
    }
    Ok(Pruned {
        module: out,
        dropped,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn byte(&mut self) -> anyhow::Result<u8> {
        let b = *self.bytes.get(self.pos).context("unexpected end")?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).context("size overflow")?;
        let b = self.bytes.get(self.pos..end).context("unexpected end")?;
        self.pos = end;
        Ok(b)
    }

    /// An unsigned LEB128 of at most 32 bits.
    fn u32(&mut self) -> anyhow::Result<u32> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            let bits = u32::from(b & 0x7f);
            if shift == 28 && bits > 0x0f {
                bail!("LEB128 over 32 bits");
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("LEB128 over 5 bytes")
    }
}

fn push_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with a type, one function, a custom section and `exports`
    /// (all of the function).
    fn module(exports: &[&str]) -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(&[1, 0, 0, 0]);
        // type section: one `() -> ()`
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        // function section: one function of type 0
        m.extend_from_slice(&[3, 2, 1, 0]);
        let mut body = Vec::new();
        push_u32(&mut body, exports.len() as u32);
        for name in exports {
            push_u32(&mut body, name.len() as u32);
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&[0, 0]);
        }
        m.push(EXPORT_SECTION);
        push_u32(&mut m, body.len() as u32);
        m.extend_from_slice(&body);
        // code section: one empty body
        m.extend_from_slice(&[10, 4, 1, 2, 0, 0x0b]);
        // a custom section after the code
        m.extend_from_slice(&[0, 4, 3, b'a', b'b', b'c']);
        m
    }

    #[test]
    fn drops_unhandled_callbacks_and_keeps_everything_else() {
        let all = [
            "memory",
            "_initialize",
            "proxy_abi_version_0_2_1",
            "proxy_on_memory_allocate",
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_log",
        ];
        let pruned = keep_callbacks(&module(&all), &["proxy_on_request_headers"]).unwrap();
        assert_eq!(pruned.dropped, ["proxy_on_request_body", "proxy_on_log"]);
        assert_eq!(
            pruned.module,
            module(&[
                "memory",
                "_initialize",
                "proxy_abi_version_0_2_1",
                "proxy_on_memory_allocate",
                "proxy_on_request_headers",
            ])
        );
    }

    #[test]
    fn keeping_every_callback_changes_no_byte() {
        let m = module(&["proxy_on_memory_allocate", "proxy_on_tick"]);
        let pruned = keep_callbacks(&m, &["proxy_on_tick"]).unwrap();
        assert_eq!(pruned.module, m);
        assert!(pruned.dropped.is_empty());
    }

    #[test]
    fn a_kept_callback_the_module_lacks_is_an_error() {
        let err = keep_callbacks(&module(&["proxy_on_tick"]), &["proxy_on_tik"]).unwrap_err();
        assert!(err.to_string().contains("proxy_on_tik"), "{err}");
    }

    #[test]
    fn truncated_or_foreign_input_is_an_error() {
        assert!(keep_callbacks(b"not wasm", &[]).is_err());
        let m = module(&["proxy_on_tick"]);
        // Inside a section header, inside the export section, inside the
        // last section.
        for cut in [9, 15, 22, m.len() - 1] {
            assert!(
                keep_callbacks(&m[..cut], &[]).is_err(),
                "accepted a module cut at {cut}"
            );
        }
    }

    #[test]
    fn long_sections_keep_multi_byte_sizes() {
        let names: Vec<String> = (0..40).map(|i| format!("proxy_on_cb{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let pruned = keep_callbacks(&module(&refs), &refs[..30]).unwrap();
        assert_eq!(pruned.module, module(&refs[..30]));
        assert_eq!(pruned.dropped.len(), 10);
    }
}
