//! Waiting without a herd, and what the pump's owner owes the others. Each test is bounded by
//! its own deadline: a lost hand-off fails in seconds, naming what it waited for.
//!
//! - A read abandoned mid-wait (a future dropped after two polls, a `timeout` around a bare
//!   `AsyncRead::read`, a read on a runtime nobody drives) must not strand the session: what
//!   the peer sends for streams nobody reads is still taken in, and other readers still get
//!   their data.
//! - A stream's close must not overtake its last message when that message went over the
//!   socket (a fallback).
//! - No slice is ever recycled twice (`refused_recycle_count` stays zero).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use shmlink::{Config, Listener, SyncMode};
use shmlink_tests::{payload, socket_path};
use tokio::io::AsyncReadExt;

/// Polls the inner future `polls` times, then gives up on it (drops it) and is ready.
struct PollTwiceThenDrop<F> {
    inner: Option<Pin<Box<F>>>,
    polls: usize,
}

impl<F: Future> Future for PollTwiceThenDrop<F> {
    type Output = bool;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(false);
        };
        if inner.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        self.polls -= 1;
        if self.polls == 0 {
            self.inner = None;
            return Poll::Ready(false);
        }
        // Come back at once for the second poll.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[derive(Clone, Copy, Debug)]
enum Abandon {
    /// Adaptive: a read future dropped after two polls.
    AfterTwoPolls,
    /// Poll mode: `timeout(2 ms)` around a bare `AsyncRead::read`.
    Timeout,
    /// Event mode: a read started on a current-thread runtime that nobody drives again.
    UndrivenRuntime,
}

fn abandoned_read_strands_nothing(how: Abandon) {
    let sync = match how {
        Abandon::AfterTwoPolls => SyncMode::Adaptive,
        Abandon::Timeout => SyncMode::Poll,
        Abandon::UndrivenRuntime => SyncMode::Event,
    };
    let (sock, listener, replies) =
        shmlink_tests::counting_echo_server(&format!("abandon-{how:?}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        sync,
        idle_drain_interval: Some(Duration::from_millis(20)),
        ..Config::default()
    };
    let session = rt.block_on(shmlink::tokio::connect(&sock, config)).unwrap();
    let mut idle = session.open_stream().unwrap();
    // Keep the server's reader of `idle` busy-free: it never gets anything.
    let undriven = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut buf = [0u8; 16];
    match how {
        Abandon::AfterTwoPolls => {
            let got = rt.block_on(PollTwiceThenDrop {
                inner: Some(Box::pin(idle.read(&mut buf))),
                polls: 2,
            });
            assert!(!got, "nothing was sent on the idle stream");
        }
        Abandon::Timeout => {
            let r = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(2), idle.read(&mut buf)).await
            });
            assert!(r.is_err(), "nothing was sent on the idle stream");
        }
        Abandon::UndrivenRuntime => {
            let got = undriven.block_on(PollTwiceThenDrop {
                inner: Some(Box::pin(idle.read(&mut buf))),
                polls: 1,
            });
            assert!(!got);
        }
    }
    // Requests on a stream closed before its replies come: nobody reads them, so only a
    // pump that still runs gives their shared memory back.
    let before = replies.load(Ordering::SeqCst);
    let unread = session.open_stream().unwrap();
    rt.block_on(async {
        for i in 0..8 {
            let body = payload(300 + i * 500, i);
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&body);
            unread.send(&framed).await.unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while replies.load(Ordering::SeqCst) < before + 8 {
        assert!(
            Instant::now() < deadline,
            "{how:?}: the server never sent its 8 replies"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The replies are in our shared memory (in the queue, or in the stream's buffer if
    // something pumped): closing the stream gives back what was delivered, and only a pump
    // that still runs takes in the rest.
    drop(unread);
    loop {
        let m = session.metrics();
        if m.share_memory.all_in_used_share_memory_in_bytes == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{how:?}: the replies to a closed stream still hold {} bytes of shared memory: \
             the abandoned read stranded the session's pump",
            m.share_memory.all_in_used_share_memory_in_bytes
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Another reader still gets its data, within a deadline.
    rt.block_on(async {
        let mut other = session.open_stream().unwrap();
        for i in 0..4 {
            let body = payload(64 + i, i);
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&body);
            other.send(&framed).await.unwrap();
            let mut reply = vec![0u8; framed.len()];
            tokio::time::timeout(Duration::from_secs(3), other.read_exact(&mut reply))
                .await
                .unwrap_or_else(|_| panic!("{how:?}: a reply on another stream never came"))
                .unwrap();
            assert_eq!(reply, framed);
        }
    });
    assert_eq!(session.metrics().stability.refused_recycle_count, 0);
    drop(idle);
    drop(session);
    drop(undriven);
    listener.close();
}

#[test]
fn a_read_abandoned_after_two_polls_strands_nothing() {
    let _deadline = shmlink_tests::deadline(
        "waiting::a_read_abandoned_after_two_polls_strands_nothing",
        std::time::Duration::from_secs(60),
    );
    abandoned_read_strands_nothing(Abandon::AfterTwoPolls);
}

#[test]
fn a_bare_read_under_a_timeout_in_poll_mode_strands_nothing() {
    let _deadline = shmlink_tests::deadline(
        "waiting::a_bare_read_under_a_timeout_in_poll_mode_strands_nothing",
        std::time::Duration::from_secs(60),
    );
    abandoned_read_strands_nothing(Abandon::Timeout);
}

#[test]
fn a_read_on_a_runtime_nobody_drives_strands_nothing_in_event_mode() {
    let _deadline = shmlink_tests::deadline(
        "waiting::a_read_on_a_runtime_nobody_drives_strands_nothing_in_event_mode",
        std::time::Duration::from_secs(60),
    );
    abandoned_read_strands_nothing(Abandon::UndrivenRuntime);
}

/// The last message of a stream goes over the socket (shared memory is held by another
/// stream, so the write falls back), then the stream closes. The server reads only after the
/// close was sent: the close must not overtake the message.
#[test]
fn a_close_never_overtakes_a_last_message_that_fell_back() {
    let _deadline = shmlink_tests::deadline(
        "waiting::a_close_never_overtakes_a_last_message_that_fell_back",
        std::time::Duration::from_secs(60),
    );
    for sync in [SyncMode::Event, SyncMode::Adaptive] {
        let sock = socket_path("close-after-fallback");
        let server_config = Config {
            // Nothing may take the socket's bytes in before the reader looks.
            idle_drain_interval: None,
            ..Config::default()
        };
        let listener = Listener::bind(&sock, server_config).unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let server = std::thread::spawn(move || {
            let session = listener.accept().unwrap();
            let mut stream = session.accept_stream(Some(Duration::from_secs(5))).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5)));
            let first = stream.read_bytes(5).unwrap().unwrap();
            seen_tx.send(first.to_vec()).unwrap();
            drop(first);
            go_rx.recv().unwrap();
            let mut rest = Vec::new();
            while let Some(view) = stream.read_view().unwrap() {
                rest.extend_from_slice(&view);
            }
            seen_tx.send(rest).unwrap();
            assert_eq!(session.metrics().stability.refused_recycle_count, 0);
        });
        let config = Config {
            sync,
            idle_drain_interval: None,
            ..Config::default()
        };
        let session = shmlink::Session::connect(&sock, config).unwrap();
        let stream = session.open_stream().unwrap();
        stream.send(b"hello").unwrap();
        assert_eq!(
            seen_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            b"hello"
        );
        // Hold every slice of shared memory on another stream.
        let hog = session.open_stream().unwrap();
        let mut held = Vec::new();
        loop {
            let r = hog.reserve(200).unwrap();
            if !r.is_shared_memory() {
                break;
            }
            held.push(r);
        }
        stream.send(b"the last message").unwrap();
        assert!(
            stream.is_fallback(),
            "precondition: the last message went over the socket"
        );
        drop(stream);
        go_tx.send(()).unwrap();
        let rest = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            rest, b"the last message",
            "{sync:?}: the close overtook the message"
        );
        server.join().unwrap();
        drop(held);
        drop(hog);
    }
}
