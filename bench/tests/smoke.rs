//! A short pass of the benchmark, so CI knows it still runs end to end: a
//! handful of requests through each Envoy variant, and a report naming all
//! three. No number is checked: a benchmark is not a timed test.

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

/// Each of the three Envoy variants has `rows` table rows in the report.
fn assert_rows_per_envoy_variant(stdout: &str, rows: usize) {
    for variant in [
        "| Envoy, no filter |",
        "| Envoy, minimal filter |",
        "| Envoy, drainpipe |",
    ] {
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with(variant)).count(),
            rows,
            "{variant:?} rows in:\n{stdout}"
        );
    }
}

#[test]
fn tiny_run_with_kept_processes_reports_all_three_envoy_variants_and_their_memory() {
    let stdout = run_bench(&[
        "--requests",
        "40",
        "--stream-requests",
        "20",
        "--rounds",
        "2",
        "--warmup",
        "10",
        "--connections",
        "2",
        "--keep-processes",
    ]);
    for section in ["## unary", "## streamed", "## Memory"] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    // Each variant has a row in both workload tables and in the memory table.
    assert_rows_per_envoy_variant(&stdout, 3);
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
fn instruction_count_reports_every_envoy_variant_in_both_sets_with_its_ratio() {
    let stdout = run_bench(&[
        "--instructions",
        "20",
        "--stream-requests",
        "6",
        "--warmup",
        "10",
        "--connections",
        "2",
    ]);
    for section in [
        "## Instructions per request (callgrind)",
        "### unary (JSON response) (20 requests per batch)",
        "### streamed (SSE response) (6 requests per batch)",
    ] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    assert_rows_per_envoy_variant(&stdout, 2);
    // Counted instructions always give a ratio (no clock ticks to wait
    // for): the drainpipe rows end with one. Its value is not checked.
    for row in stdout
        .lines()
        .filter(|l| l.starts_with("| Envoy, drainpipe |"))
    {
        let ratio = row.trim_end_matches([' ', '|']).rsplit('|').next().unwrap();
        assert!(
            ratio.trim().parse::<f64>().is_ok(),
            "no ratio in {row:?}:\n{stdout}"
        );
    }
}
