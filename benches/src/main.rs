//! The shmlink benchmark harness: cross-process ping-pong, pipelined throughput and streams at
//! scale, over shmlink and everything it is measured against, in one run.
//!
//! ```text
//! cargo run --release -p shmlink-bench                 # quick comparison, about a minute
//! cargo run --release -p shmlink-bench -- --full       # every size, three interleaved rounds
//! cargo run --release -p shmlink-bench -- --full --write-benchmarks   # regenerate BENCHMARKS.md
//! cargo run --release -p shmlink-bench -- --smoke      # CI: smallest size, proves it works
//! cargo run --release -p shmlink-bench -- --parallel-only  # only P streams on one session
//! cargo run --release -p shmlink-bench -- --pingpong-only --only shmlink-blocking-adaptive
//! ```
//!
//! Every measurement starts a fresh peer process (this binary, `peer` subcommand), waits for
//! the machine to be idle, and is retried when other processes disturbed it. Rounds interleave
//! all transports and sizes. The report (markdown and an SVG plot) goes to
//! `target/shmlink-bench/`, or with `--write-benchmarks` to `BENCHMARKS.md` and
//! `benches/latency.svg`.

mod machine;
mod parallel;
mod report;
mod slot;
mod transports;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use report::{PingPong, Pipelined, Report, Scale};
use slot::Wait;
use transports::{Client, Kind, Mode, SHMLINK, SlotClient};

/// Counts heap allocations of the harness process, to show allocations per round trip.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SYNC: a statistic; nothing is ordered by it.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SYNC: a statistic.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    // SYNC: a statistic.
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// How much to measure.
#[derive(Clone, Debug)]
struct Plan {
    name: &'static str,
    sizes: Vec<usize>,
    rounds: usize,
    budget: Duration,
    min_iters: u64,
    max_iters: u64,
    pipeline_count: usize,
    streams: Vec<usize>,
    stream_budget: Duration,
    /// Client threads sharing one pool (`SessionManager`).
    pooled_threads: Vec<usize>,
    /// Parallel ping-pong: sizes, concurrent streams, time per row.
    parallel_sizes: Vec<usize>,
    parallel: Vec<usize>,
    parallel_budget: Duration,
}

impl Plan {
    fn quick() -> Self {
        Self {
            name: "quick",
            sizes: vec![64, 4096, 64 << 10, 1 << 20],
            rounds: 1,
            budget: Duration::from_millis(400),
            min_iters: 20,
            max_iters: 50_000,
            pipeline_count: 20_000,
            streams: vec![1, 16, 256, 1000],
            stream_budget: Duration::from_millis(500),
            pooled_threads: vec![1, 4, 16],
            parallel_sizes: vec![64, 4096],
            parallel: vec![1, 2, 8, 32, 256],
            parallel_budget: Duration::from_millis(400),
        }
    }

    fn full() -> Self {
        Self {
            name: "full",
            sizes: vec![64, 1024, 4096, 64 << 10, 1 << 20, 4 << 20],
            rounds: 3,
            budget: Duration::from_millis(1000),
            min_iters: 50,
            max_iters: 200_000,
            pipeline_count: 200_000,
            streams: vec![1, 16, 256, 1000],
            stream_budget: Duration::from_secs(2),
            pooled_threads: vec![1, 4, 16, 64],
            parallel_sizes: vec![64, 4096, 64 << 10],
            parallel: vec![1, 2, 8, 32, 256],
            parallel_budget: Duration::from_secs(1),
        }
    }

    fn smoke() -> Self {
        Self {
            name: "smoke",
            sizes: vec![64],
            rounds: 1,
            budget: Duration::from_millis(30),
            min_iters: 10,
            max_iters: 1000,
            pipeline_count: 500,
            streams: vec![1, 16],
            stream_budget: Duration::from_millis(100),
            pooled_threads: vec![1, 4],
            parallel_sizes: vec![64],
            parallel: vec![1, 2],
            parallel_budget: Duration::from_millis(50),
        }
    }
}

/// A running peer process.
struct Peer {
    child: Child,
    extra: String,
}

impl Peer {
    fn start(kind: Kind, endpoint: &Path, max: usize, mode: Mode) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("peer")
            .arg(kind.name())
            .arg(endpoint)
            .arg(max.to_string())
            .args(mode.args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the peer: {e}"))?;
        let stdout = child.stdout.take().ok_or("no peer stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| format!("{}: the peer did not get ready", kind.name()))?;
        let extra = line
            .strip_prefix("ready")
            .ok_or_else(|| format!("{}: the peer said {line:?}", kind.name()))?
            .trim()
            .to_owned();
        Ok(Self { child, extra })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the peer to exit after the client hung up; kills it after a grace period.
    fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client and its peer, fresh for one measurement.
fn pair(kind: Kind, tag: &str, max: usize, mode: Mode) -> Result<(Box<dyn Client>, Peer), String> {
    let endpoint = transports::endpoint(kind, tag);
    let slot = match kind {
        Kind::SpinSlot => Some(SlotClient::create(&endpoint, max, Wait::Spin)),
        Kind::FutexSlot => Some(SlotClient::create(&endpoint, max, Wait::Futex)),
        _ => None,
    };
    let slot = slot
        .transpose()
        .map_err(|e| format!("{}: {e}", kind.name()))?;
    let peer = Peer::start(kind, &endpoint, max, mode)?;
    let client: Box<dyn Client> = match slot {
        Some(s) => Box::new(s),
        None => transports::connect(kind, &endpoint, &peer.extra)
            .map_err(|e| format!("{}: connect: {e}", kind.name()))?,
    };
    Ok((client, peer))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

struct Round {
    median: f64,
    p99: f64,
    cpu: [f64; 2],
    allocs: f64,
    iters: u64,
    disturbed: bool,
    /// Wake-ups (Polling frames) the client sent per round trip, where known.
    wakeups: Option<f64>,
    /// Messages the client sent over the socket (shmlink fallbacks), where known.
    fallbacks: Option<u64>,
}

/// One ping-pong measurement: a fresh pair, warm-up, then round trips until the budget.
fn pingpong_once(kind: Kind, size: usize, plan: &Plan, tag: &str) -> Result<Round, String> {
    let (mut client, peer) = pair(kind, tag, size, Mode::PingPong(size))?;
    let err = |e: std::io::Error| format!("{} {}: {e}", kind.name(), report::bytes(size));
    let mut fill: u8 = 1;
    let mut next_fill = || {
        fill = if fill >= 250 { 1 } else { fill + 1 };
        fill
    };
    let warmup = (plan.min_iters / 2).max(5);
    for _ in 0..warmup {
        let f = next_fill();
        let sum = client.round_trip(size, f).map_err(err)?;
        check(sum, size, f)?;
    }
    let mut rtts = Vec::with_capacity(plan.max_iters.min(1 << 20) as usize);
    let window = machine::Window::start(peer.pid());
    let allocs0 = allocations();
    let wakeups0 = client.wakeups_sent();
    let (last_fill, last_sum) = client
        .measure(
            size,
            plan.min_iters,
            plan.budget,
            plan.max_iters,
            &mut next_fill,
            &mut rtts,
        )
        .map_err(err)?;
    let allocs = allocations() - allocs0;
    let usage = window.end();
    let wakeups = wakeups0
        .zip(client.wakeups_sent())
        .map(|(a, b)| (b - a) as f64 / rtts.len().max(1) as f64);
    let fallbacks = client.fallbacks();
    if last_sum != 0 || last_fill != 0 {
        check(last_sum, size, last_fill)?;
    }
    drop(client);
    peer.finish();
    rtts.sort_unstable();
    let n = rtts.len() as u64;
    Ok(Round {
        median: percentile(&rtts, 0.5),
        p99: percentile(&rtts, 0.99),
        cpu: [0, 1].map(|i| usage.cpu_ns[i] as f64 / n as f64),
        allocs: allocs as f64 / n as f64,
        iters: n,
        disturbed: usage.disturbed,
        wakeups,
        fallbacks,
    })
}

fn expected(size: usize, fill: u8) -> u64 {
    size as u64 * u64::from(fill.wrapping_add(1))
}

fn check(sum: u64, size: usize, fill: u8) -> Result<(), String> {
    if sum == expected(size, fill) {
        Ok(())
    } else {
        Err(format!(
            "reply checksum {sum} for {size} bytes of {fill}, expected {}",
            expected(size, fill)
        ))
    }
}

/// Measures with the idle wait and up to two retries of a disturbed measurement.
fn pingpong(kind: Kind, size: usize, plan: &Plan, tag: &str) -> Result<Round, String> {
    let mut attempt = 0;
    loop {
        machine::wait_idle(0.15, Duration::from_secs(5));
        let round = pingpong_once(kind, size, plan, &format!("{tag}-{attempt}"))?;
        if !round.disturbed || attempt == 2 {
            return Ok(round);
        }
        attempt += 1;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run_pingpong(plan: &Plan, kinds: &[Kind], report: &mut Report) -> Result<(), String> {
    let total = plan.rounds * plan.sizes.len() * kinds.len();
    let mut rounds: Vec<Vec<Round>> = (0..plan.sizes.len() * kinds.len())
        .map(|_| Vec::new())
        .collect();
    let mut done = 0;
    for round in 0..plan.rounds {
        for (si, &size) in plan.sizes.iter().enumerate() {
            for (ki, &kind) in kinds.iter().enumerate() {
                done += 1;
                let r = pingpong(kind, size, plan, &format!("{round}-{si}-{ki}"))?;
                eprintln!(
                    "[{done:>3}/{total}] ping-pong {:>7} {:<28} median {:>9} p99 {:>9}{}",
                    report::bytes(size),
                    kind.name(),
                    report::time(r.median),
                    report::time(r.p99),
                    if r.disturbed {
                        "  (disturbed by other processes)"
                    } else {
                        ""
                    }
                );
                rounds[si * kinds.len() + ki].push(r);
            }
        }
    }
    for (si, &size) in plan.sizes.iter().enumerate() {
        for (ki, &kind) in kinds.iter().enumerate() {
            let rs = &rounds[si * kinds.len() + ki];
            report.pingpong.push(PingPong {
                kind,
                size,
                median_ns: median(rs.iter().map(|r| r.median).collect()),
                p99_ns: median(rs.iter().map(|r| r.p99).collect()),
                cpu_ns: [0, 1].map(|i| median(rs.iter().map(|r| r.cpu[i]).collect())),
                allocs: median(rs.iter().map(|r| r.allocs).collect()),
                iterations: rs.iter().map(|r| r.iters).sum(),
                disturbed: rs.iter().filter(|r| r.disturbed).count() as u32,
                wakeups: rs
                    .iter()
                    .map(|r| r.wakeups)
                    .collect::<Option<Vec<_>>>()
                    .map(median),
                fallbacks: rs.iter().map(|r| r.fallbacks).sum(),
            });
        }
    }
    Ok(())
}

fn run_pipelined(plan: &Plan, report: &mut Report) -> Result<(), String> {
    let kinds = [
        Kind::Unix,
        SHMLINK,
        Kind::Shmlink(transports::Rt::Tokio, shmlink::SyncMode::Adaptive),
        Kind::CloudwegoV3,
    ];
    for size in [64usize, 1024] {
        for kind in kinds {
            let mut rates = Vec::new();
            let mut wakeups = Vec::new();
            let mut reads = Vec::new();
            let mut fallbacks = Vec::new();
            for round in 0..plan.rounds {
                machine::wait_idle(0.15, Duration::from_secs(5));
                let count = plan.pipeline_count;
                let (mut client, peer) = pair(
                    kind,
                    &format!("pipe-{size}-{round}"),
                    size,
                    Mode::Pipeline(size, count),
                )?;
                let w0 = client.wakeups_sent();
                let t = Instant::now();
                let (sum, peer_reads) = client
                    .pipeline(size, count, 7)
                    .map_err(|e| format!("{} pipelined: {e}", kind.name()))?;
                let elapsed = t.elapsed();
                if sum != 7 * (size * count) as u64 {
                    return Err(format!("{}: pipelined checksum {sum}", kind.name()));
                }
                if let (Some(a), Some(b)) = (w0, client.wakeups_sent()) {
                    wakeups.push((b - a) as f64 / count as f64);
                }
                if let Some(f) = client.fallbacks() {
                    fallbacks.push(f as f64);
                }
                drop(client);
                peer.finish();
                rates.push(count as f64 / elapsed.as_secs_f64());
                reads.push(peer_reads as f64 / count as f64);
            }
            let p = Pipelined {
                kind,
                size,
                rate: median(rates),
                wakeups: (!wakeups.is_empty()).then(|| median(wakeups)),
                reads: median(reads),
                fallbacks: (!fallbacks.is_empty())
                    .then(|| fallbacks.iter().copied().fold(0.0, f64::max)),
            };
            eprintln!(
                "pipelined {:>6} {:<28} {:>12.0} msg/s, {} fell back",
                report::bytes(size),
                kind.name(),
                p.rate,
                p.fallbacks.map_or("n/a".into(), |f| format!("{f:.0}"))
            );
            report.pipelined.push(p);
        }
    }
    Ok(())
}

fn run_scale(plan: &Plan, report: &mut Report) -> Result<(), String> {
    for &streams in &plan.streams {
        machine::wait_idle(0.15, Duration::from_secs(5));
        let endpoint = transports::endpoint(SHMLINK, &format!("scale-{streams}"));
        let peer = Peer::start(SHMLINK, &endpoint, 64, Mode::Streams(64))?;
        let client = transports::ShmlinkClient::connect(&endpoint, shmlink::SyncMode::Adaptive)
            .map_err(|e| e.to_string())?;
        let session = client.session();
        let mut opened = Vec::new();
        for _ in 0..streams {
            opened.push(session.open_stream().map_err(|e| e.to_string())?);
        }
        let sc = timed_workers(opened, plan.stream_budget, |stream, fill| {
            transports::StreamRef(stream)
                .round_trip(64, fill)
                .map_err(|e| e.to_string())
        })?;
        drop(client);
        peer.finish();
        eprintln!(
            "streams {:>5}: {:>10.0} round trips/s, p99 {}",
            streams,
            sc.rate,
            report::time(sc.p99_ns)
        );
        report.scale.push(sc);
    }
    Ok(())
}

/// Runs one thread per item, each timing 64 B round trips (`op` returns the reply's
/// checksum, checked) until `budget` has passed and it made at least one: all threads'
/// rate and percentiles; `streams` counts the threads.
fn timed_workers<T: Send>(
    items: Vec<T>,
    budget: Duration,
    op: impl Fn(&mut T, u8) -> Result<u64, String> + Sync,
) -> Result<Scale, String> {
    let threads = items.len();
    let start = Instant::now();
    let samples: Vec<Result<Vec<u64>, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = items
            .into_iter()
            .map(|mut item| {
                let op = &op;
                s.spawn(move || {
                    let mut rtts = Vec::new();
                    let mut fill = 1u8;
                    while start.elapsed() < budget || rtts.is_empty() {
                        fill = if fill >= 250 { 1 } else { fill + 1 };
                        let t = Instant::now();
                        let sum = op(&mut item, fill)?;
                        rtts.push(t.elapsed().as_nanos() as u64);
                        check(sum, 64, fill)?;
                    }
                    Ok(rtts)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all = Vec::new();
    for s in samples {
        all.extend(s?);
    }
    all.sort_unstable();
    Ok(Scale {
        streams: threads,
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p99_ns: percentile(&all, 0.99),
        median_ns: percentile(&all, 0.5),
    })
}

/// Sessions in the pooled client's pool.
const POOL_SESSIONS: usize = 4;

/// A service's client: threads sharing one `SessionManager`; every 64 B request borrows a
/// stream from the pool and returns it. Beside it in the report: one stream's rate.
fn run_pooled(plan: &Plan, report: &mut Report) -> Result<(), String> {
    for &threads in &plan.pooled_threads {
        machine::wait_idle(0.15, Duration::from_secs(5));
        let endpoint = transports::endpoint(SHMLINK, &format!("pooled-{threads}"));
        let peer = Peer::start(SHMLINK, &endpoint, 64, Mode::Pooled(64, POOL_SESSIONS))?;
        let manager = shmlink::SessionManager::new(
            &endpoint,
            shmlink::Config::default(),
            shmlink::ManagerConfig {
                sessions: POOL_SESSIONS,
                ..shmlink::ManagerConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let p = timed_workers(
            vec![&manager; threads],
            plan.stream_budget,
            |manager, fill| {
                let mut stream = manager.get_stream().map_err(|e| e.to_string())?;
                let sum = transports::StreamRef(&mut stream)
                    .round_trip(64, fill)
                    .map_err(|e| e.to_string());
                drop(stream); // back to the pool, inside the timed request
                sum
            },
        )?;
        manager.close();
        drop(manager);
        peer.finish();
        eprintln!(
            "pooled, {:>3} threads: {:>10.0} requests/s, p99 {}",
            threads,
            p.rate,
            report::time(p.p99_ns)
        );
        report.pooled.push(p);
    }
    Ok(())
}

fn peer_main(args: &[String]) -> Result<(), String> {
    let usage = "usage: shmlink-bench peer <transport> <endpoint> <max> <mode...>";
    let kind = args.first().and_then(|k| Kind::parse(k)).ok_or(usage)?;
    let endpoint = PathBuf::from(args.get(1).ok_or(usage)?);
    let max: usize = args.get(2).and_then(|m| m.parse().ok()).ok_or(usage)?;
    let mode = Mode::parse(&args[3..]).ok_or(usage)?;
    transports::run_peer(kind, &endpoint, max, mode)
        .map_err(|e| format!("peer {}: {e}", kind.name()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("peer") {
        if let Err(e) = peer_main(&args[1..]) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let plan = if args.iter().any(|a| a == "--full") {
        Plan::full()
    } else if args.iter().any(|a| a == "--smoke") {
        Plan::smoke()
    } else {
        Plan::quick()
    };
    let write = args.iter().any(|a| a == "--write-benchmarks");
    if let Err(e) = run(&plan, write, &args) {
        eprintln!("shmlink-bench: {e}");
        std::process::exit(1);
    }
}

fn run(plan: &Plan, write: bool, args: &[String]) -> Result<(), String> {
    let machine = machine::describe();
    eprintln!("shmlink-bench ({} run) on {machine}", plan.name);
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run with --release for numbers worth reading");
    }
    let mut report = Report {
        machine,
        command: format!(
            "cargo run --release -p shmlink-bench{}{}",
            if args.is_empty() { "" } else { " -- " },
            args.join(" ")
        ),
        ..Report::default()
    };
    let started = Instant::now();
    let kinds: Vec<Kind> = match args.iter().position(|a| a == "--only") {
        Some(i) => args[i + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .filter_map(|a| Kind::parse(a))
            .collect(),
        None => Kind::all(),
    };
    // `--parallel-only`: just the many-streams section (for iterating on the driver).
    // `--pingpong-only`: just the one-stream round trips (for the stability check);
    // `--pipelined-only [--pipeline-count N]`: just the pipelined rows.
    let only = |flag: &str| args.iter().any(|a| a == flag);
    let mut plan = plan.clone();
    if let Some(n) = args
        .iter()
        .position(|a| a == "--pipeline-count")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
    {
        plan.pipeline_count = n;
    }
    let plan = &plan;
    if only("--pipelined-only") {
        run_pipelined(plan, &mut report)?;
    } else if !only("--parallel-only") {
        run_pingpong(plan, &kinds, &mut report)?;
        if !only("--pingpong-only") {
            run_pipelined(plan, &mut report)?;
            run_scale(plan, &mut report)?;
            run_pooled(plan, &mut report)?;
        }
    }
    if !only("--no-parallel") && !only("--pingpong-only") && !only("--pipelined-only") {
        parallel::run(
            &plan.parallel_sizes,
            &plan.parallel,
            plan.parallel_budget,
            false,
            &mut report.parallel,
        )?;
        // shmipc-go's own shape: client and server in one process, 64 B.
        let go_ps: Vec<usize> = plan.parallel.iter().copied().filter(|&p| p <= 32).collect();
        parallel::run(
            &[64],
            &go_ps,
            plan.parallel_budget,
            true,
            &mut report.parallel,
        )?;
        report.idle = Some(parallel::run_idle(64, plan.stream_budget)?);
    }
    let (dir, md_name, plot_path, plot_ref) = if write {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        (
            root.clone(),
            "BENCHMARKS.md",
            root.join("benches/latency.svg"),
            "benches/latency.svg".to_owned(),
        )
    } else {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmlink-bench");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        (
            dir.clone(),
            "report.md",
            dir.join("latency.svg"),
            "latency.svg".to_owned(),
        )
    };
    if !report.pingpong.is_empty() {
        report.plot(&plot_path)?;
    }
    let mut md = report.markdown(Some(&plot_ref));
    if write {
        md = format!("{}\n{md}", benchmarks_preamble());
        // The criterion numbers of core's pieces, kept by hand next to the harness (see the
        // file for the command that produced them).
        let criterion = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("criterion.md");
        if let Ok(extra) = std::fs::read_to_string(criterion) {
            md = format!("{md}\n{extra}");
        }
    }
    let md_path = dir.join(md_name);
    std::fs::write(&md_path, md).map_err(|e| e.to_string())?;
    println!("\n{}", report.pingpong_table());
    println!("{}", report.pipelined_table());
    println!("{}", report.scale_table());
    println!("{}", report.pooled_table());
    println!("{}", report.parallel_table());
    for line in report.verdicts() {
        println!("{line}");
    }
    println!(
        "\n{} run took {:.0} s; full report: {} (plot: {})",
        plan.name,
        started.elapsed().as_secs_f64(),
        md_path.display(),
        plot_path.display()
    );
    Ok(())
}

fn benchmarks_preamble() -> &'static str {
    include_str!("../PREAMBLE.md")
}
