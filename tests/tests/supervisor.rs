//! `drainpipe run -- envoy ...` with a real Envoy: SIGTERM (what `docker
//! stop` sends to PID 1) under load drains, keeps every stream whole, and
//! stops Envoy as soon as it is drained; the timeout, a second signal,
//! signals passed on, and orphans reaped as PID 1.

use std::time::{Duration, Instant};

use drainpipe_tests::load::{
    self, assert_whole_stream, check_across_drain, open_stream, read_to_end, DrainWindows,
    ShortRequests,
};
use drainpipe_tests::ops::{drainpipe_bin, Supervised};
use drainpipe_tests::process::ChildGuard;
use drainpipe_tests::{procfs, FakeLlm};

async fn supervised(args: &[&str]) -> (FakeLlm, Supervised) {
    load::supervised(&drainpipe_bin().unwrap(), args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_keeps_every_stream_whole_and_exits_0_once_drained() {
    let (_up, mut sup) = supervised(&["--timeout", "20s"]).await;
    // Six streams of 2.5 to 4.5 s, admitted before the signal.
    let mut streams = Vec::new();
    for i in 0..6u32 {
        let chunks = 25 + 4 * i;
        streams.push((chunks, open_stream(&sup.envoy, chunks).await));
    }
    let t0 = Instant::now();
    sup.signal(libc::SIGTERM);

    // A run of short requests, each on a fresh connection, every 100 ms.
    let shorts = ShortRequests::start(sup.envoy.traffic("/v1/chat/completions"), t0);
    // Readiness fails at once.
    let mut ready_503 = None;
    while t0.elapsed() < Duration::from_secs(2) {
        let r = reqwest::get(sup.envoy.traffic("/healthz/ready"))
            .await
            .unwrap();
        if r.status() == 503 {
            ready_503 = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_503 = ready_503.expect("readiness answers 503 within 2 s of SIGTERM");

    // Every stream arrives whole.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(chunks, resp)| tokio::spawn(async move { (chunks, read_to_end(resp, t0).await) }))
        .collect();
    let mut last_end = Duration::ZERO;
    for reader in readers {
        let (chunks, read) = reader.await.unwrap();
        assert_whole_stream(&read.whole(), chunks);
        last_end = last_end.max(read.ended_at);
    }
    let shorts = shorts.stop().await;

    // Exit 0 soon after the last stream ended, not at the timeout.
    let status = tokio::task::block_in_place(|| sup.envoy.wait_exit(Duration::from_secs(15)))
        .expect("the supervisor exits once drained");
    let exited = t0.elapsed();
    let lines = sup.lines().join("\n");
    assert_eq!(status.code(), Some(0), "{lines}");
    assert!(
        exited < last_end + Duration::from_secs(3),
        "exited {exited:?} after SIGTERM, the last stream ended at {last_end:?}:\n{lines}"
    );
    assert!(!sup.envoy_alive(), "Envoy is still running");

    // Short requests: whole answers in the admit window, then the 503
    // contract; nothing failed while a stream was still running.
    let windows = DrainWindows {
        admitted_before: Duration::from_millis(1_500),
        rejected_from: Duration::from_millis(900),
        failing_from: last_end,
        retry_after_s: 5,
    };
    let contract = check_across_drain(&shorts, windows);
    assert!(
        contract >= 5,
        "the 503 contract after the admit window: {shorts:?}"
    );
    assert!(ready_503 < Duration::from_secs(1), "{ready_503:?}");

    // Progress, in prestop.sh's words.
    assert!(
        lines.contains("SIGTERM received: starting the drain"),
        "{lines}"
    );
    assert!(
        lines.contains("drain started: state=draining inflight="),
        "{lines}"
    );
    assert!(
        lines.contains("waiting: state=rejecting inflight="),
        "{lines}"
    );
    assert!(lines.contains("drained after"), "{lines}");
    assert!(lines.contains("/quitquitquit"), "{lines}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_longer_than_the_timeout_has_envoy_stopped_at_the_timeout_and_exits_1() {
    let (_up, mut sup) = supervised(&["--timeout", "2s"]).await;
    // 10 s of tokens, admitted before the drain.
    let resp = open_stream(&sup.envoy, 100).await;
    let reader = tokio::spawn(read_to_end(resp, Instant::now()));
    let t0 = Instant::now();
    sup.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| sup.envoy.wait_exit(Duration::from_secs(10)))
        .expect("the supervisor exits at the timeout");
    let exited = t0.elapsed();
    let lines = sup.lines().join("\n");
    assert_eq!(status.code(), Some(1), "{lines}");
    assert!(
        exited >= Duration::from_secs(2) && exited < Duration::from_secs(5),
        "exited {exited:?} after SIGTERM:\n{lines}"
    );
    // The whole seconds waited, as prestop.sh reports them (a loaded
    // machine may take the last poll past the second).
    let timed_out = lines
        .lines()
        .find(|l| l.contains("timed out after "))
        .unwrap_or_else(|| panic!("no timeout line:\n{lines}"));
    assert!(
        timed_out.ends_with("s: state=rejecting inflight=1"),
        "{timed_out}"
    );
    assert!(!sup.envoy_alive(), "Envoy is still running");
    // Envoy stopped: the stream ended there.
    let _ = reader.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_stops_envoy_at_once_and_exits_3() {
    let (_up, mut sup) = supervised(&["--timeout", "20s"]).await;
    let resp = open_stream(&sup.envoy, 100).await;
    let reader = tokio::spawn(read_to_end(resp, Instant::now()));
    sup.signal(libc::SIGTERM);
    sup.wait_line("drain started", Duration::from_secs(5))
        .unwrap();
    let t1 = Instant::now();
    sup.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| sup.envoy.wait_exit(Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("the supervisor exits at once:\n{}", sup.envoy.log_tail(30)));
    let lines = sup.lines().join("\n");
    assert_eq!(status.code(), Some(3), "{lines}");
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    assert!(
        lines.contains("SIGTERM received again: stopping Envoy at once"),
        "{lines}"
    );
    assert!(!sup.envoy_alive(), "Envoy is still running");
    let _ = reader.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_like_sigterm() {
    let (_up, mut sup) = supervised(&["--timeout", "20s"]).await;
    sup.signal(libc::SIGINT);
    let status = tokio::task::block_in_place(|| sup.envoy.wait_exit(Duration::from_secs(10)))
        .expect("the supervisor exits once drained");
    let lines = sup.lines().join("\n");
    assert_eq!(status.code(), Some(0), "{lines}");
    assert!(
        lines.contains("SIGINT received: starting the drain"),
        "{lines}"
    );
    assert!(!sup.envoy_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_sigusr1_reach_envoy() {
    let (_up, sup) = supervised(&[]).await;
    sup.signal(libc::SIGHUP);
    sup.wait_line("passing SIGHUP to Envoy", Duration::from_secs(3))
        .unwrap();
    sup.signal(libc::SIGUSR1);
    let started = Instant::now();
    // Envoy's own log lines for each: it ignores SIGHUP (it says so) and
    // reopens its access logs on SIGUSR1.
    loop {
        let log = sup.envoy.log();
        if log.contains(ENVOY_ON_SIGHUP) && log.contains(ENVOY_ON_SIGUSR1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Envoy never logged both signals:\n{}",
            sup.envoy.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still serving: neither signal stops Envoy.
    let r = reqwest::get(sup.envoy.traffic("/healthz/ready"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sup.envoy_alive());
}

const ENVOY_ON_SIGHUP: &str = "caught and eating SIGHUP";
const ENVOY_ON_SIGUSR1: &str = "caught SIGUSR1";

#[test]
fn envoy_exiting_by_itself_gives_its_status() {
    let bin = drainpipe_bin().unwrap();
    for (script, code) in [("exit 7", 7), ("kill -KILL $$", 128 + 9)] {
        let out = std::process::Command::new(&bin)
            .args(["run", "--", "sh", "-c", script])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{script}: {stderr}");
        assert!(stderr.contains("Envoy exited ("), "{stderr}");
    }
}

/// An Envoy that does not stop when asked (here a program that ignores
/// SIGTERM, with no admin and no drain API to answer) is killed
/// `STOP_LIMIT` (5 s) later: the supervisor is done well before the
/// platform's SIGKILL at `--timeout + 10 s`.
#[test]
fn an_envoy_that_ignores_sigterm_is_killed_5_s_after_it_was_asked_to_stop() {
    let nowhere = format!("http://127.0.0.1:{}", drainpipe_tests::envoy::free_port());
    let mut child = std::process::Command::new(drainpipe_bin().unwrap())
        .args(["run", "--timeout", "20s"])
        .args(["--drain-url", &format!("{nowhere}/drain")])
        .args(["--envoy-admin", &nowhere])
        // The ignored disposition survives exec.
        .args(["--", "sh", "-c", "trap '' TERM; exec sleep 60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = ChildGuard::new(child);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    child.signal(libc::SIGTERM);
    let status = child
        .wait_exit(Duration::from_secs(15))
        .expect("the supervisor exits within 15 s of SIGTERM");
    let after = t0.elapsed();
    let stderr = std::io::read_to_string(stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("killing it"), "{stderr}");
    assert!(
        stderr.contains("Envoy exited (killed by SIGKILL)"),
        "{stderr}"
    );
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_secs(8),
        "exited {after:?} after SIGTERM:\n{stderr}"
    );
}

/// A signal mask survives exec: Envoy must start with nothing blocked, or
/// it would never see the SIGTERM of a second signal.
#[test]
fn envoy_starts_with_no_signal_blocked_or_ignored_by_the_supervisor() {
    let out = std::process::Command::new(drainpipe_bin().unwrap())
        .args(["run", "--", "cat", "/proc/self/status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    assert_eq!(
        blocked.split_whitespace().nth(1),
        Some("0000000000000000"),
        "{status}"
    );
}

/// As PID 1 of a new PID namespace, the supervisor reaps orphans: a child
/// of Envoy's (here a shell's) that outlives its parent becomes the
/// supervisor's child, and must not stay a zombie when it exits.
#[test]
fn as_pid_1_the_supervisor_reaps_orphans() {
    if let Err(refused) = new_pid_namespace() {
        eprintln!(
            "SKIPPED as_pid_1_the_supervisor_reaps_orphans: the kernel refuses a new PID \
             namespace here ({refused}; it needs root or user namespaces), so reaping as \
             PID 1 is not checked"
        );
        return;
    }
    let bin = drainpipe_bin().unwrap();
    // Three orphans (double-forked sleeps) that end after 0.3 s, while the
    // "Envoy" (a shell) lives on (until the namespace is killed).
    let script = "for i in 1 2 3; do (sleep 0.3 &); done; sleep 30";
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(&bin)
        .args(["run", "--", "sh", "-c", script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let supervisor = procfs::children(child.id())
        .unwrap()
        .into_iter()
        .next()
        .expect("the supervisor runs under unshare");
    let started = Instant::now();
    let mut saw_orphans = false;
    while started.elapsed() < Duration::from_millis(2_000) {
        let kids = procfs::children(supervisor).unwrap();
        // The shell, and while they run, the adopted sleeps.
        saw_orphans |= kids.len() > 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let kids = procfs::children(supervisor).unwrap();
    let zombies: Vec<u32> = kids
        .iter()
        .copied()
        .filter(|&p| !procfs::alive(p))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        saw_orphans,
        "the orphans were never the supervisor's children"
    );
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    assert_eq!(kids.len(), 1, "only the shell is left: {kids:?}");
}

/// Whether `unshare --pid --fork` can make a PID namespace: `Err` with
/// unshare's words only when the kernel refuses it (EPERM); a missing or
/// failing `unshare` fails the test.
fn new_pid_namespace() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run unshare ({e}): util-linux has it, `cargo xtask setup` installs it")
        });
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("Operation not permitted") {
        return Err(stderr);
    }
    panic!(
        "`unshare --pid --fork true` failed ({}): {stderr}",
        out.status
    );
}
