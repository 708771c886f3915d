//! A process's own accounting, from `/proc`: CPU time (user + system, all
//! threads) and resident memory; which CPUs its threads may run on; its
//! children; whether it is still running.

use anyhow::{bail, Context as _};

/// Total CPU time of process `pid` so far, in microseconds: `utime + stime`
/// from `/proc/<pid>/stat` (clock ticks, usually 10 ms each).
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (utime, stime) = parse_stat_times(&stat)?;
    Ok((utime + stime) * 1_000_000 / clock_ticks_per_second())
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so fields
/// are counted after its closing parenthesis.
pub fn parse_stat_times(stat: &str) -> anyhow::Result<(u64, u64)> {
    let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        bail!("malformed /proc stat line: {stat:?}");
    };
    // After the name: field 3 (state) is index 0, so field n is index n - 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {n} missing in /proc stat line"))
    };
    Ok((field(14)?, field(15)?))
}

/// The parent pid (field 4) of a `/proc/<pid>/stat` line.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// The processes whose parent is `pid`, alive or not yet reaped.
pub fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(child) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may have ended since the directory was read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if parse_stat_ppid(&stat) == Some(pid) {
            out.push(child);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Whether process `pid` exists (a zombie not yet reaped counts).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether process `pid` is running: it exists and is neither a zombie
/// (ended, not yet reaped) nor dead.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat_state(&stat))
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// The state (field 3: `R`, `S`, `Z`...) of a `/proc/<pid>/stat` line.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Resident memory of process `pid`, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc status")
}

/// The `VmRSS:` value of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid, empty set, and
    // sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    // SAFETY: CPU_ISSET reads the set within its bounds.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts every thread of process `pid` (0: this one) to `cpus`. Threads
/// created later inherit it from their creator.
pub fn pin(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: as above; CPU_SET stays within the set for cpu < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let dir = match pid {
        0 => "/proc/self/task".to_string(),
        pid => format!("/proc/{pid}/task"),
    };
    let tasks = std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?;
    for task in tasks {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: the set is initialised and sized as passed.
        let rc =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        // A thread may have ended since the directory was read.
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning thread {tid} of {dir} to CPUs {cpus:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_this_process_shows_in_its_allowed_cpus() {
        let all = allowed_cpus().unwrap();
        assert!(!all.is_empty());
        pin(0, &all[..1]).unwrap();
        let pinned = allowed_cpus();
        pin(0, &all).unwrap();
        assert_eq!(pinned.unwrap(), all[..1]);
        assert_eq!(allowed_cpus().unwrap(), all);
    }

    #[test]
    fn stat_times_are_fields_14_and_15_even_with_spaces_in_the_name() {
        let line =
            "4242 (envoy (main) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 731 92 0 0 20 0 9 0";
        assert_eq!(parse_stat_times(line).unwrap(), (731, 92));
    }

    #[test]
    fn parent_is_field_4_even_with_spaces_in_the_name() {
        let line = "4242 (envoy (main) x) S 17 4242 4242 0 -1 4194560";
        assert_eq!(parse_stat_ppid(line), Some(17));
        assert_eq!(parse_stat_ppid("1 (x)"), None);
    }

    #[test]
    fn state_is_field_3_even_with_spaces_in_the_name() {
        assert_eq!(
            parse_stat_state("4242 (envoy (main) x) Z 17 4242"),
            Some('Z')
        );
        assert_eq!(parse_stat_state("1 (x)"), None);
        assert_eq!(parse_stat_state("no parenthesis"), None);
    }

    #[test]
    fn a_spawned_child_is_listed_under_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let listed = children(std::process::id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(listed.contains(&child.id()), "{listed:?}");
        assert!(!exists(child.id()));
        assert!(!alive(child.id()));
        assert!(alive(std::process::id()));
    }

    #[test]
    fn truncated_stat_line_is_an_error() {
        assert!(parse_stat_times("1 (x) S 1 2").is_err());
        assert!(parse_stat_times("no parenthesis").is_err());
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tenvoy\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(51234));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_us(me).unwrap();
    }
}
