//! Clocks, CPU accounting and pinning: the few Linux calls the runner needs.

use anyhow::{bail, Context};

/// Monotonic nanoseconds (CLOCK_MONOTONIC, the clock timerfd deadlines use).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// User plus system CPU time of this process (all threads), nanoseconds.
pub fn process_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of process `pid` from /proc/PID/stat, nanoseconds.
pub fn pid_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is --server-pid a running local process?)"))?;
    parse_proc_stat_cpu_ticks(&text)
        .map(|ticks| ticks * 1_000_000_000 / clock_ticks_per_sec())
        .with_context(|| format!("parsing /proc/{pid}/stat"))
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_proc_stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no ')' in stat line")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, index 11.
    let get = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("stat line too short")?
            .parse::<u64>()
            .context("stat field not a number")
    };
    Ok(get(11)? + get(12)?)
}

/// Parses a CPU list like `1`, `0-3,6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|e| format!("bad CPU {t:?}: {e}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("CPU range {part:?} is reversed"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} out of range");
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it
    // (cpu < CPU_SETSIZE checked above); sched_setaffinity(0) is this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to fire this thread's timers on time: the default 50 µs
/// slack would show up as latency in open-loop runs.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument; 1 ns is valid.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_after_a_tricky_name() {
        let line = "1234 (cache server) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 \
                    999 1000000 200 18446744073709551615";
        assert_eq!(parse_proc_stat_cpu_ticks(line).unwrap(), 300);
        assert!(parse_proc_stat_cpu_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn own_process_is_readable_and_cpu_grows() {
        let pid = std::process::id();
        let before = pid_cpu_ns(pid).unwrap();
        let start = process_cpu_ns();
        let mut x = 0u64;
        let t = now_ns();
        while now_ns() - t < 30_000_000 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu_ns() > start);
        assert!(pid_cpu_ns(pid).unwrap() >= before);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Ok(vec![1]));
        assert_eq!(parse_cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}
