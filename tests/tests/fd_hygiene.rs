//! A session's socket is not kept open by a thread that once looked at it: asking
//! `is_closed()` (which reads the socket without waiting) outside any blocking wait once left
//! the socket registered in that thread's wait list, one more open fd per session for as long
//! as the thread lived. One test: it counts this process's open fds.

use std::time::{Duration, Instant};

use shmlink::{Config, Listener, Session};
use shmlink_tests::{socket_path, unique};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn looking_at_sessions_does_not_keep_their_sockets_open() {
    let path = socket_path(&unique("fds"));
    let listener = Listener::bind(&path, Config::default()).unwrap();
    // Warm up (thread-locals, the first session's lazy statics).
    {
        let s = Session::connect(&path, Config::default()).unwrap();
        let _server = listener.accept().unwrap();
        assert!(!s.is_closed());
    }
    let before = open_fds();
    for _ in 0..20 {
        let s = Session::connect(&path, Config::default()).unwrap();
        let server = listener.accept().unwrap();
        assert!(!s.is_closed());
        assert!(!server.is_closed());
        drop(s);
        drop(server);
    }
    // Closes finish on their own threads for a moment; then the count is back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds() > before + 2 {
        assert!(
            Instant::now() < deadline,
            "{} fds open, {before} before",
            open_fds()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
