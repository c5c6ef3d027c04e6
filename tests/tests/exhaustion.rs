//! Running out without silent loss: the `Exhaustion` policies. A writer far faster than its
//! reader over 1 MiB of shared memory: with `Wait` every message arrives once and in order,
//! through shared memory only; with `Error` a refused write is reported and never arrives,
//! and the stream goes on once memory is back; a write that can never fit is refused at once.

use std::time::{Duration, Instant};

use shmlink::{Config, Error, Exhaustion, Listener, Session, SizeClass, Stream};
use shmlink_tests::{payload, recv_framed, send_framed, socket_path};

/// 1 MiB of 16 KiB slices: 63 usable.
fn small(policy: Exhaustion) -> Config {
    Config {
        buffer_capacity: 1 << 20,
        size_classes: vec![SizeClass {
            size: 16 << 10,
            percent: 100,
        }],
        on_exhaustion: policy,
        ..Config::default()
    }
}

fn pair(config: Config) -> (Session, Stream, Session, Stream) {
    let sock = socket_path("exhaust");
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let client = std::thread::spawn(move || Session::connect(&sock, config).unwrap());
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let client = client.join().unwrap();
    let c = client.open_stream().unwrap();
    send_framed(&c, b"hi").unwrap();
    let mut s = server.accept_stream(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20)));
    assert_eq!(recv_framed(&mut s).unwrap().unwrap(), b"hi");
    (client, c, server, s)
}

/// A message with its sequence number in front, so order and identity are checked.
fn message(seq: u32, size: usize) -> Vec<u8> {
    let mut m = seq.to_be_bytes().to_vec();
    m.extend(payload(size, seq as usize));
    m
}

#[test]
fn wait_delivers_every_message_once_and_in_order_through_shared_memory_only() {
    let _deadline = shmlink_tests::deadline(
        "exhaustion::wait_delivers_every_message_once_and_in_order_through_shared_memory_only",
        std::time::Duration::from_secs(60),
    );
    use std::sync::atomic::{AtomicBool, Ordering};
    let (client, c, _server, mut s) = pair(small(Exhaustion::Wait));
    const COUNT: u32 = 200;
    const SIZE: usize = 40_000; // 3 slices each: 200 of them are 24 MiB through 1 MiB
    // The precondition is forced, not hoped for: the reader starts only once the writer has
    // found memory exhausted (and waits for it), whatever the machine's speed.
    let ran_out = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let ran_out = &ran_out;
        let reader = scope.spawn(move || {
            let until = Instant::now() + Duration::from_secs(20);
            // SYNC: Acquire; pairs with the Release store below.
            while !ran_out.load(Ordering::Acquire) {
                assert!(
                    Instant::now() < until,
                    "memory never ran out: the writer never waited"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            for seq in 0..COUNT {
                let got = recv_framed(&mut s).unwrap().expect("a message");
                assert!(
                    got == message(seq, SIZE),
                    "message {seq} wrong or out of order"
                );
                if seq % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(5)); // a slow reader
                }
            }
        });
        let writer = scope.spawn(|| {
            for seq in 0..COUNT {
                send_framed(&c, &message(seq, SIZE)).unwrap();
            }
        });
        let until = Instant::now() + Duration::from_secs(20);
        while client.metrics().stability.alloc_shm_error_count == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SYNC: Release; pairs with the reader's Acquire load.
        ran_out.store(true, Ordering::Release);
        writer.join().unwrap();
        reader.join().unwrap();
    });
    assert!(!c.is_fallback(), "no byte went to the socket");
    let m = client.metrics();
    assert_eq!(m.stability.fallback_write_count, 0);
    assert!(
        m.stability.alloc_shm_error_count > 0,
        "memory did run out: {m:?}"
    );
    assert_eq!(m.stability.refused_recycle_count, 0);
    assert!(client.is_healthy(), "the circuit breaker stayed closed");
}

#[test]
fn error_refuses_at_once_loses_nothing_accepted_and_recovers() {
    let _deadline = shmlink_tests::deadline(
        "exhaustion::error_refuses_at_once_loses_nothing_accepted_and_recovers",
        std::time::Duration::from_secs(60),
    );
    let (_client, c, _server, mut s) = pair(small(Exhaustion::Error));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for seq in 0..100u32 {
        match send_framed(&c, &message(seq, 40_000)) {
            Ok(()) => accepted.push(seq),
            Err(Error::SharedMemoryExhausted { requested }) => {
                assert_eq!(requested, 4 + 4 + 40_000);
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0, "the reader never read, so memory must run out");
    for &seq in &accepted {
        let got = recv_framed(&mut s).unwrap().unwrap();
        assert!(got == message(seq, 40_000), "message {seq}");
    }
    assert_eq!(s.available(), 0, "refused writes never arrive");
    // Memory is back: the stream goes on, still in shared memory.
    send_framed(&c, &message(1000, 40_000)).unwrap();
    assert!(recv_framed(&mut s).unwrap().unwrap() == message(1000, 40_000));
    assert!(!c.is_fallback());
}

#[test]
fn wait_gives_up_at_the_write_timeout_and_refuses_what_can_never_fit() {
    let _deadline = shmlink_tests::deadline(
        "exhaustion::wait_gives_up_at_the_write_timeout_and_refuses_what_can_never_fit",
        std::time::Duration::from_secs(60),
    );
    let (_client, mut c, _server, _s) = pair(small(Exhaustion::Wait));
    c.set_write_timeout(Duration::from_millis(200));
    let start = Instant::now();
    let err = loop {
        if let Err(e) = c.send(&payload(40_000, 1)) {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never ran out");
    };
    assert!(matches!(err, Error::Timeout), "{err}");
    let err = c.send(&payload(2 << 20, 1)).unwrap_err();
    assert!(
        matches!(err, Error::SharedMemoryExhausted { requested } if requested == 2 << 20),
        "{err}"
    );
}

/// FNV-1a: a checksum of a message's bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One storm message: `[stream tag][seq][payload][checksum of all before]`; the last
/// message of a stream has seq `u32::MAX` and no payload.
fn storm_message(tag: u32, seq: u32, size: usize) -> Vec<u8> {
    let mut m = tag.to_be_bytes().to_vec();
    m.extend(seq.to_be_bytes());
    m.extend(payload(size, (tag as usize) << 16 | seq as usize));
    let sum = fnv(&m);
    m.extend(sum.to_be_bytes());
    m
}

/// Reads one stream's messages, checking each (tag, order, checksum); answers the end
/// message with `[tag][count][checksum of all checksums]`. Reads slowly now and then, so
/// that the writers run out of shared memory and queue room.
fn check_storm_stream(mut stream: Stream, late: bool) -> Result<u32, String> {
    stream.set_read_timeout(Some(Duration::from_secs(30)));
    if late {
        // The first readers start late, so that the writers run the memory out however fast
        // this machine's readers are (a CI run once kept up with all 60 streams); the later
        // ones read at once, so that memory comes back and new streams use it again.
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut tag = None;
    let mut count = 0u32;
    let mut sums = 0u64;
    loop {
        let m = recv_framed(&mut stream)
            .map_err(|e| format!("read: {e}"))?
            .ok_or("the stream ended before its end message")?;
        if m.len() < 16 {
            return Err(format!("a message of {} bytes", m.len()));
        }
        let (body, sum) = m.split_at(m.len() - 8);
        if fnv(body).to_be_bytes() != sum {
            return Err(format!(
                "checksum mismatch in message {count} ({} bytes)",
                m.len()
            ));
        }
        let t = u32::from_be_bytes(body[..4].try_into().unwrap());
        let seq = u32::from_be_bytes(body[4..8].try_into().unwrap());
        if *tag.get_or_insert(t) != t {
            return Err(format!("a message of stream {t} arrived on stream {tag:?}"));
        }
        if seq == u32::MAX {
            let mut reply = t.to_be_bytes().to_vec();
            reply.extend(count.to_be_bytes());
            reply.extend(sums.to_be_bytes());
            send_framed(&stream, &reply).map_err(|e| format!("reply: {e}"))?;
            return Ok(count);
        }
        if seq != count {
            return Err(format!("stream {t}: message {seq} where {count} was due"));
        }
        count += 1;
        sums = sums.rotate_left(5) ^ u64::from_be_bytes(sum.try_into().unwrap());
        if count % 4 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

/// Issue 10, item 5: tiny shared memory (1 MiB of 16 KiB slices) and a tiny queue (16) under
/// 12 concurrent writers, each opening stream after stream: every message arrives exactly
/// once and in order on its own stream (sequence numbers, checksums, a per-stream summary),
/// through every switch to the socket (fallback, circuit breaker open) and back to shared
/// memory once the breaker closes.
#[test]
fn a_storm_of_writers_over_tiny_memory_loses_mixes_and_reorders_nothing() {
    let _deadline = shmlink_tests::deadline(
        "exhaustion::a_storm_of_writers_over_tiny_memory_loses_mixes_and_reorders_nothing",
        std::time::Duration::from_secs(60),
    );
    const WRITERS: u32 = 12;
    const ROUNDS: u32 = 5;
    const MESSAGES: u32 = 48;
    let sock = socket_path("storm");
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let config = Config {
        queue_cap: 16,
        circuit_breaker: Duration::from_millis(20),
        ..small(Exhaustion::Fallback)
    };
    let client = {
        let sock = sock.clone();
        std::thread::spawn(move || Session::connect(&sock, config).unwrap())
    };
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let client = client.join().unwrap();
    let checker = std::thread::spawn(move || {
        let mut streams = Vec::new();
        loop {
            match server.accept_stream(Some(Duration::from_secs(30))) {
                Ok(s) => {
                    let late = streams.len() < WRITERS as usize;
                    streams.push(std::thread::spawn(move || check_storm_stream(s, late)));
                }
                Err(e) if e.is_session_closed() => break,
                Err(e) => panic!("accept: {e}"),
            }
        }
        let mut total = 0;
        for s in streams {
            total += s.join().unwrap().unwrap();
        }
        (total, server.metrics())
    });
    let started = Instant::now();
    let log = std::sync::Mutex::new(Vec::new());
    // Every writer is joined here and its panic kept, so that a failing writer cannot hide
    // the checker's own finding (the checker is joined below either way).
    let writer_failures: Vec<String> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (client, log) = (&client, &log);
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let tag = w * 1000 + round;
                        let stream = loop {
                            match client.open_stream() {
                                Ok(s) => break s,
                                // The breaker is open after a fallback: shared memory again soon.
                                Err(Error::Unhealthy { .. }) => {
                                    std::thread::sleep(Duration::from_millis(2))
                                }
                                Err(e) => panic!("open: {e}"),
                            }
                        };
                        let mut stream = stream;
                        stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut sums = 0u64;
                        for seq in 0..MESSAGES {
                            let size =
                                1 + (seq as usize * 7919 + w as usize * 104_729) % (48 << 10);
                            let m = storm_message(tag, seq, size);
                            sums = sums.rotate_left(5)
                                ^ u64::from_be_bytes(m[m.len() - 8..].try_into().unwrap());
                            send_framed(&stream, &m).unwrap();
                        }
                        let fell_back = stream.is_fallback();
                        send_framed(&stream, &storm_message(tag, u32::MAX, 0)).unwrap();
                        let reply = recv_framed(&mut stream).unwrap().expect("a summary");
                        let mut want = tag.to_be_bytes().to_vec();
                        want.extend(MESSAGES.to_be_bytes());
                        want.extend(sums.to_be_bytes());
                        assert_eq!(reply, want, "stream {tag}: the summary differs");
                        log.lock().unwrap().push((Instant::now(), fell_back));
                        stream.close();
                    }
                })
            })
            .collect();
        writers
            .into_iter()
            .filter_map(|h| h.join().err().map(|p| panic_text(&*p)))
            .collect()
    });
    let elapsed = started.elapsed();
    let metrics = client.metrics();
    drop(client);
    let checked = checker.join();
    if !writer_failures.is_empty() || checked.is_err() {
        panic!(
            "writers failed: {writer_failures:?}; the checker: {}",
            match &checked {
                Ok(_) => "found nothing wrong".to_owned(),
                Err(p) => panic_text(&**p),
            }
        );
    }
    let (total, server_metrics) = checked.unwrap();
    assert_eq!(
        total,
        WRITERS * ROUNDS * MESSAGES,
        "messages lost or duplicated"
    );
    let mut log = log.into_inner().unwrap();
    log.sort_by_key(|e| e.0);
    let fell_back = log.iter().filter(|e| e.1).count();
    let back_after = log.iter().skip_while(|e| !e.1).filter(|e| !e.1).count();
    eprintln!(
        "{} streams in {elapsed:?}: {fell_back} fell back to the socket, {back_after} used \
         shared memory again after the first fallback; client fallback writes {}, shm \
         allocation failures {}, queue full {}; server fallback reads {}",
        log.len(),
        metrics.stability.fallback_write_count,
        metrics.stability.alloc_shm_error_count,
        metrics.stability.queue_full_error_count,
        server_metrics.stability.fallback_read_count,
    );
    assert!(
        fell_back > 0,
        "the memory never ran out: the test proves nothing"
    );
    assert!(
        back_after > 0,
        "no stream used shared memory again after a fallback"
    );
}

/// The message of a thread's panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
