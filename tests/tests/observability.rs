//! Issue 9, item 4: metrics in Go's three sets readable at any time, a `Monitor` called
//! periodically and once at close, and `tracing` events that name their session and stream
//! and stay off the per-message path.
//!
//! One test per file part: the tracing test installs a process-wide subscriber.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmlink::{
    Config, Listener, ManagerConfig, Metrics, Monitor, Session, SessionInfo, SessionManager,
};
use shmlink_tests::{socket_path, unique};

#[derive(Debug, Default)]
struct Recorder {
    reports: Mutex<Vec<(SessionInfo, Metrics)>>,
    flushes: Mutex<usize>,
}

impl Monitor for Recorder {
    fn on_emit_session_metrics(&self, session: &SessionInfo, metrics: &Metrics) {
        self.reports
            .lock()
            .unwrap()
            .push((session.clone(), *metrics));
    }

    fn flush(&self) {
        *self.flushes.lock().unwrap() += 1;
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_monitor_hears_every_interval_and_once_at_close() {
    let _deadline = shmlink_tests::deadline(
        "observability::the_monitor_hears_every_interval_and_once_at_close",
        std::time::Duration::from_secs(60),
    );
    let recorder = Arc::new(Recorder::default());
    let config = Config {
        monitor: Some(recorder.clone()),
        monitor_interval: Duration::from_millis(50),
        ..Config::default()
    };
    let path = socket_path(&unique("monitor"));
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let client = Session::connect(&path, config).unwrap();
    let server = listener.accept().unwrap();
    let mut c = client.open_stream().unwrap();
    c.write_all(&[7u8; 3000]).unwrap();
    let mut s = server.accept_stream(None).unwrap();
    let mut buf = vec![0u8; 3000];
    s.read_exact(&mut buf).unwrap();

    let reports_of = |closed: bool| {
        recorder
            .reports
            .lock()
            .unwrap()
            .iter()
            .filter(|(info, _)| info.closed == closed)
            .cloned()
            .collect::<Vec<_>>()
    };
    wait_until("two periodic reports", || reports_of(false).len() >= 2);
    let (info, m) = reports_of(false).pop().unwrap();
    assert!(info.is_client);
    assert_eq!(m.performance.out_flow_bytes, 3000, "{m:?}");
    assert_eq!(m.stability.active_stream_count, 1);
    assert!(m.share_memory.capacity_of_share_memory_in_bytes > 0);
    // Readable at any time, the same numbers as the monitor's.
    let now = client.metrics();
    assert_eq!(now.performance.out_flow_bytes, 3000);
    assert_eq!(now.share_memory, m.share_memory);
    assert_eq!(
        *recorder.flushes.lock().unwrap(),
        0,
        "no flush before the close"
    );

    drop(c);
    drop(client);
    // The last report comes from the monitor thread, shortly after the close.
    wait_until("the last report", || *recorder.flushes.lock().unwrap() == 1);
    let last = reports_of(true);
    assert_eq!(last.len(), 1, "exactly one final report");
    assert_eq!(
        recorder.reports.lock().unwrap().last().map(|r| r.0.closed),
        Some(true),
        "no periodic report after the last"
    );
    assert_eq!(last[0].0.id, info.id);
    assert_eq!(*recorder.flushes.lock().unwrap(), 1);
    // A closed session is not reported again.
    let before = recorder.reports.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(recorder.reports.lock().unwrap().len(), before);
}

#[test]
fn a_manager_sums_its_sessions_metrics() {
    let _deadline = shmlink_tests::deadline(
        "observability::a_manager_sums_its_sessions_metrics",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("monitor-mgr"));
    let listener = Arc::new(Listener::bind(&path, Config::default()).unwrap());
    let server = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || {
            listener.serve(|mut stream| {
                let mut buf = [0u8; 100];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            })
        })
    };
    let m = SessionManager::new(
        &path,
        Config::default(),
        ManagerConfig {
            sessions: 3,
            ..ManagerConfig::default()
        },
    )
    .unwrap();
    for _ in 0..6 {
        let mut s = m.get_stream().unwrap();
        s.write_all(&[1u8; 100]).unwrap();
        let mut back = [0u8; 100];
        s.read_exact(&mut back).unwrap();
    }
    let total = m.metrics();
    assert_eq!(total.performance.out_flow_bytes, 600, "{total:?}");
    assert_eq!(total.performance.in_flow_bytes, 600, "{total:?}");
    assert_eq!(
        total.share_memory.capacity_of_share_memory_in_bytes,
        3 * Session::connect(&path, Config::default())
            .unwrap()
            .metrics()
            .share_memory
            .capacity_of_share_memory_in_bytes
    );
    m.close();
    listener.close();
    server.join().unwrap().unwrap();
}
