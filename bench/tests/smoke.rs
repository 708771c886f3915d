//! A short pass of the benchmark, so CI knows it still runs end to end: a
//! handful of requests through each Envoy variant, on both routes, plain,
//! streamed and as token streams, and a report with a row for every variant
//! in every table. No number is checked: a benchmark is not a timed test.

use std::process::Command;

/// Runs the benchmark binary with `args`; its report (stdout), once it has
/// exited successfully.
fn run_bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_drainpipe-bench"))
        .args(args)
        .output()
        .expect("the benchmark binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "benchmark failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Each of `variants` has `rows` table rows in the report.
fn assert_rows(stdout: &str, variants: &[&str], rows: usize) {
    for variant in variants {
        let row = format!("| {variant} |");
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with(&row)).count(),
            rows,
            "{variant:?} rows in:\n{stdout}"
        );
    }
}

/// The last cell of a table row, as a number.
fn last_number(row: &str) -> Option<f64> {
    let cell = row.trim_end_matches([' ', '|']).rsplit('|').next()?;
    cell.trim().trim_start_matches('+').parse().ok()
}

#[test]
fn tiny_run_with_kept_processes_reports_all_three_envoy_variants_on_both_routes_their_first_token_and_memory(
) {
    let stdout = run_bench(&[
        "--requests",
        "40",
        "--stream-requests",
        "20",
        "--direct-requests",
        "20",
        "--token-streams",
        "4",
        "--token-events",
        "20",
        "--rounds",
        "2",
        "--warmup",
        "10",
        "--connections",
        "2",
        "--keep-processes",
    ]);
    for section in [
        "## unary",
        "## streamed",
        "## direct response",
        "## token stream (SSE, 20 events, one every 1 ms)",
        "| first byte p50 ms | first byte p99 ms | chunks/response | CPU µs/chunk |",
        "Time to first token added",
        "## Memory",
    ] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    // Each variant has a row in the four workload tables and in the memory
    // table; the filters one more, in the table of time to first token
    // added, each with a figure (its value is not checked).
    assert_rows(&stdout, &["Envoy, no filter"], 5);
    assert_rows(&stdout, &["Envoy, minimal filter", "Envoy, drainpipe"], 6);
    let ttft = stdout
        .split("Time to first token added")
        .nth(1)
        .expect("the section is there");
    let row = ttft
        .lines()
        .find(|l| l.starts_with("| Envoy, drainpipe |"))
        .unwrap_or_else(|| panic!("no drainpipe row in:\n{stdout}"));
    assert!(last_number(row).is_some(), "no figure in {row:?}");
    // The ratio line itself needs measurable CPU deltas, which a run this
    // small may not have (clock ticks are 10 ms): not checked here.
}

#[test]
fn candidate_builds_are_measured_beside_drainpipe_in_the_same_rounds() {
    let plugin = drainpipe_tests::envoy::plugin_wasm().unwrap();
    let plugin = plugin.to_str().unwrap();
    let stdout = run_bench(&[
        "--requests",
        "20",
        "--stream-requests",
        "0",
        "--direct-requests",
        "0",
        "--token-streams",
        "0",
        "--rounds",
        "2",
        "--warmup",
        "5",
        "--connections",
        "2",
        "--candidate-wasm",
        plugin,
        "--candidate-wasm",
        plugin,
    ]);
    // Each candidate: a row in the JSON table, a column in the per-round
    // table, and its file in the set-up lines. The proxies start afresh
    // every round, so there is no memory table.
    for n in 1..=2 {
        let label = format!("Envoy, drainpipe candidate {n}");
        let rows = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("| {label} |")))
            .count();
        assert_eq!(rows, 1, "{label:?} rows in:\n{stdout}");
        assert!(
            stdout.contains(&format!("- drainpipe candidate {n}: {plugin} (")),
            "candidate {n} not named in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(
            "| Envoy, drainpipe | Envoy, drainpipe candidate 1 | Envoy, drainpipe candidate 2 |"
        ),
        "no candidate columns in:\n{stdout}"
    );
    assert!(
        stdout.contains("after starting every proxy afresh for each round")
            && stdout.contains("## Memory\n\nNot measured"),
        "no word of fresh processes in:\n{stdout}"
    );
}

#[test]
fn instruction_count_reports_every_envoy_variant_on_both_routes_and_per_chunk_with_its_ratio() {
    // Few requests: every Envoy runs under callgrind, which is slow.
    let stdout = run_bench(&[
        "--instructions",
        "20",
        "--stream-requests",
        "6",
        "--direct-requests",
        "10",
        "--token-streams",
        "1",
        "--token-events",
        "50",
        "--warmup",
        "10",
        "--connections",
        "2",
    ]);
    for section in [
        "## Instructions (callgrind)",
        "### Summary: instructions added over Envoy without a filter",
        "| variant | unary: per request | unary: / minimal | streamed: per request | streamed: / minimal | direct: per request | direct: / minimal | per chunk | per chunk, over the minimal filter | per chunk, over the minimal filter + body callback |",
        "### unary (JSON response) (20 requests per batch",
        "### streamed (SSE response) (6 requests per batch",
        "### direct response (JSON, answered by Envoy) (10 requests per batch",
        "### token stream (SSE, 50 events, one every 1 ms) (1 requests per batch",
    ] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    // Every variant: a row in each of the four sets; the filters one more
    // in the summary.
    assert_rows(&stdout, &["Envoy, no filter"], 4);
    assert_rows(
        &stdout,
        &[
            "Envoy, minimal filter",
            "Envoy, minimal filter + body callback",
            "Envoy, drainpipe",
        ],
        5,
    );
    // Counted instructions always give figures (no clock ticks to wait
    // for): drainpipe's rows in the sets end with its ratio, and its
    // summary row with what it adds per chunk. Their values are not
    // checked.
    for row in stdout
        .lines()
        .filter(|l| l.starts_with("| Envoy, drainpipe |"))
    {
        assert!(
            last_number(row).is_some(),
            "no figure in {row:?}:\n{stdout}"
        );
    }
}
