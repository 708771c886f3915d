//! The fuzz targets' invariants as ordinary tests: every target runs over
//! its seed corpus (`fuzz/corpus/<target>/`) and over a deterministic sweep
//! of 100,000 inputs from a fixed-seed generator (random bytes biased toward
//! the characters the parsers care about, and mutated seeds). Cheap enough
//! for every `cargo test`; `cargo fuzz` explores further (see FUZZING.md).

#[path = "../fuzz/src/lib.rs"]
mod invariants;

use std::path::PathBuf;

/// xorshift64*: small, fixed, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes the parsers and the SSE framing branch on.
const INTERESTING: &[u8] = b"0123456789 \t\n\r\n\n:/?-+.,mSHMun{}\"[]aeT\x00\x7f\x80\xc3\xff";

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<_> = files
        .iter()
        .map(|f| std::fs::read(f).expect("seed file"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn random_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let len = rng.below(97);
        return (0..len)
            .map(|_| match rng.below(3) {
                0 => rng.next_u64() as u8,
                _ => INTERESTING[rng.below(INTERESTING.len())],
            })
            .collect();
    }
    // A seed with a few bytes replaced, inserted or removed.
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        let byte = match rng.below(2) {
            0 => rng.next_u64() as u8,
            _ => INTERESTING[rng.below(INTERESTING.len())],
        };
        match rng.below(3) {
            0 if at < input.len() => input[at] = byte,
            1 if at < input.len() => {
                input.remove(at);
            }
            _ => input.insert(at, byte),
        }
    }
    input
}

fn sweep(target: &str, seed: u64, check: fn(&[u8])) {
    let seeds = seeds(target);
    for s in &seeds {
        check(s);
    }
    let mut rng = Rng(seed);
    for _ in 0..100_000 {
        let input = random_input(&mut rng, &seeds);
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(
            outcome.is_ok(),
            "{target}: invariant broken for input {input:?} (add it to fuzz/corpus/{target}/)"
        );
    }
}

#[test]
fn deadline_parsers_agree_with_the_reference_on_seeds_and_sweep() {
    sweep("deadline", 0x5eed_0001, invariants::deadline);
}

#[test]
fn config_parse_accepts_only_valid_configurations_on_seeds_and_sweep() {
    sweep("config", 0x5eed_0002, invariants::config);
}

#[test]
fn admin_route_lets_only_the_token_through_on_seeds_and_sweep() {
    sweep("admin_route", 0x5eed_0003, invariants::admin_route);
}

#[test]
fn traffic_decide_keeps_budgets_in_bounds_on_seeds_and_sweep() {
    sweep("traffic_decide", 0x5eed_0004, invariants::traffic_decide);
}

#[test]
fn sse_cutter_never_tears_an_event_nor_forwards_after_the_end_on_seeds_and_sweep() {
    sweep("sse_cutter", 0x5eed_0005, invariants::sse_cutter);
}

#[test]
fn sse_body_is_told_at_its_cut_and_never_torn_on_seeds_and_sweep() {
    sweep("sse_body", 0x5eed_0006, invariants::sse_body);
}

#[test]
fn header_wire_form_reads_as_its_pairs_on_seeds_and_sweep() {
    sweep("header_wire", 0x5eed_0007, invariants::header_wire);
}

#[test]
fn ws_frames_boundaries_are_split_independent_and_the_close_follows_one_on_seeds_and_sweep() {
    sweep("ws_frames", 0x5eed_0008, invariants::ws_frames);
}

#[test]
fn sse_boundary_oracle_follows_the_specification() {
    for (stream, boundary) in [
        (&b""[..], true),
        (b"\n", true),
        (b"data: 1\n", false),
        (b"data: 1\n\n", true),
        (b"data: 1\r\n\r\n", true),
        (b"data: 1\r\r", true),
        (b"data: 1\r\n", false),
        (b"data: 1", false),
    ] {
        assert_eq!(
            invariants::at_event_boundary(stream),
            boundary,
            "{stream:?}"
        );
    }
}
