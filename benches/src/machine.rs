//! The machine and honest measurement on a shared one: what it is, waiting until it is idle,
//! the CPU time of both processes of a pair, and whether anything else ran meanwhile.

use std::time::{Duration, Instant};

/// CPU model, cores and kernel, for the report.
pub(crate) fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cores} cores, Linux {kernel}")
}

/// Jiffies of /proc/stat's first line: (busy, total).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Nanoseconds one jiffy stands for.
fn jiffy_ns() -> f64 {
    // USER_HZ is 100 on every Linux configuration this runs on.
    1e7
}

/// Waits until the whole machine is below `busy` (a fraction of all cores) over a 100 ms
/// window, for at most `limit`. Returns whether it became idle.
pub(crate) fn wait_idle(busy: f64, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let (b0, t0) = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(100));
        let (b1, t1) = cpu_jiffies();
        let frac = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if frac <= busy {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
    }
}

/// CPU time (ns) used so far by every thread of process `pid`: utime + stime of
/// `/proc/PID/stat`, in clock ticks of 10 ms. The kernel brings the running threads' time up
/// to date for this read (schedstat does not, and shows nothing for a thread that spins
/// without being descheduled), so only the unit is coarse; windows are hundreds of ms.
pub(crate) fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the parenthesis,
    // counting the state letter as 0.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(11) + field(12);
    (ticks as f64 * jiffy_ns()) as u64
}

/// A measurement window: wall time, both processes' CPU time, and the machine's busy time.
pub(crate) struct Window {
    start: Instant,
    pids: [u32; 2],
    cpu: [u64; 2],
    busy: u64,
}

/// What a window saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    /// CPU ns of the harness process and of the peer.
    pub(crate) cpu_ns: [u64; 2],
    /// Whether other processes used a noticeable share of the machine meanwhile.
    pub(crate) disturbed: bool,
}

impl Window {
    /// Starts a window over the harness (this process) and `peer`.
    pub(crate) fn start(peer: u32) -> Self {
        let pids = [std::process::id(), peer];
        Self {
            start: Instant::now(),
            pids,
            cpu: pids.map(process_cpu_ns),
            busy: cpu_jiffies().0,
        }
    }

    /// Ends the window. Disturbed: the machine was busier than our two processes by more
    /// than a fifth of one core over the window (jiffies are 10 ms, so short windows get a
    /// 20 ms allowance).
    pub(crate) fn end(self) -> Usage {
        let wall = self.start.elapsed();
        let cpu = [0, 1].map(|i| process_cpu_ns(self.pids[i]).saturating_sub(self.cpu[i]));
        let busy_ns = (cpu_jiffies().0 - self.busy) as f64 * jiffy_ns();
        let ours = (cpu[0] + cpu[1]) as f64;
        let allowance = (wall.as_nanos() as f64 * 0.2).max(2e7);
        Usage {
            cpu_ns: cpu,
            disturbed: busy_ns - ours > allowance,
        }
    }
}
