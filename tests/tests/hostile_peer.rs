//! The hostile peer suite (issue 10, item 1). A peer built by hand from core's state machines
//! and the Linux backend completes a correct V3 memfd handshake, in the client role against
//! our `Listener` or in the server role against our `Session::connect`, exchanges one good
//! message, and then misbehaves in one way per case: garbage and truncated frames, a wrong
//! version or type, a huge length, handshake frames mid-session, queue elements out of range
//! or into the middle of a slice, chains that loop or leave the region, a chain announced
//! twice, a slice recycled twice into a free list, a queue tail that jumps, headers rewritten
//! while we read them, a peer that stops reading. Plus the handshake-time cases of each role:
//! wrong fd counts, wrong versions and types, a peer that hangs up half way.
//!
//! Each case checks: only the victim session closes, with an error naming the problem (the
//! reader's error and `close_reason` agree); the hostile peer sees its socket closed; another
//! session of the same process keeps echoing; nothing panics or hangs (every wait has a
//! timeout). CI runs this file under AddressSanitizer, so an out-of-bounds access fails it.

mod common;

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shmlink::{Config, Error, Listener, Session, Stream};
use shmlink_core::buffer::{self, BufferManager, Role, SizeClass};
use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::{self, Element, Side};
use shmlink_linux::region::SharedRegion;
use shmlink_linux::socket::{self as raw, Conn};
use shmlink_tests::{check_echoes, echo_session, unique};

const BUFFER_LEN: usize = 1 << 20;
const SLICE: u32 = 4096;
const QUEUE_CAP: u32 = 16;
const WAIT: Duration = Duration::from_secs(5);

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.sock", unique(name)))
}

fn encode(version: u8, message: Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::new(version, message).encode_into(&mut out).unwrap();
    out
}

/// A peer driven by hand: the regions (created by it as a client, received as a server), the
/// socket, and its side.
struct RawPeer {
    conn: Conn,
    queue: SharedRegion,
    buffer: SharedRegion,
    side: Side,
}

impl RawPeer {
    /// A client: creates and formats its regions (1 MiB of 4 KiB slices, queues of 16) and
    /// runs the client handshake.
    fn connect(path: &Path) -> Self {
        let name = unique("hostile");
        let buffer = SharedRegion::create_memfd(&format!("{name}_buffer"), BUFFER_LEN).unwrap();
        let queue =
            SharedRegion::create_memfd(&format!("{name}_queue"), queue::region_size(QUEUE_CAP))
                .unwrap();
        buffer::format(
            buffer.region(),
            &[SizeClass {
                size: SLICE,
                percent: 100,
            }],
        )
        .unwrap();
        queue::format_region(queue.region(), QUEUE_CAP).unwrap();
        let conn = Conn::connect_unix(path).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        common::client_handshake(
            &conn,
            &format!("{name}_queue"),
            &format!("{name}_buffer"),
            &queue,
            &buffer,
        );
        Self {
            conn,
            queue,
            buffer,
            side: Side::Client,
        }
    }

    /// A server: accepts one client and runs the server handshake.
    fn accept(listener: &raw::Listener) -> Self {
        let conn = listener.accept_timeout(WAIT).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let (queue, buffer, _) = common::server_handshake(&conn);
        Self {
            conn,
            queue,
            buffer,
            side: Side::Server,
        }
    }

    /// The buffer manager as this peer sees it (a fresh view each time; its ledger is the
    /// peer's business).
    fn manager(&self) -> BufferManager<'_> {
        let role = match self.side {
            Side::Client => Role::Creator,
            Side::Server => Role::Mapper,
        };
        buffer::attach(self.buffer.region(), role).unwrap()
    }

    /// Byte offset of the header of the queue this peer sends on.
    fn send_queue_offset(&self) -> usize {
        match self.side {
            Side::Client => 0,
            Side::Server => self.queue.len() / 2,
        }
    }

    /// Pushes elements (as many as fit) and wakes the other side.
    fn push(&self, elements: &[Element]) {
        let (producer, _) = queue::attach_region(self.queue.region(), self.side)
            .unwrap()
            .into_roles();
        for &e in elements {
            let _ = producer.push(e);
        }
        self.wake();
    }

    fn wake(&self) {
        self.send_raw(&encode(3, Message::Polling));
    }

    fn send_raw(&self, bytes: &[u8]) {
        // The other side may already have hung up on us; that is its right.
        let _ = self.conn.send(bytes, "raw send");
    }

    /// Allocates one slice per part, writes it, links them, and hands them over; returns
    /// their offsets (the first is what an element names).
    fn write_chain(&self, parts: &[&[u8]]) -> Vec<u32> {
        let m = self.manager();
        let mut slices: Vec<u32> = Vec::new();
        for part in parts {
            let chain = m.alloc(part.len().max(1) as u64).unwrap();
            assert_eq!(chain.count(), 1);
            let abs = chain.first();
            let (data, _) = m.data_area(abs).unwrap();
            self.poke_buffer(data as usize, part);
            m.set_len(abs, part.len() as u32).unwrap();
            if let Some(&prev) = slices.last() {
                m.link(prev, abs).unwrap();
            }
            slices.push(abs);
        }
        for &abs in &slices {
            m.hand_over(abs).unwrap();
        }
        slices
    }

    fn send_message(&self, stream: u32, bytes: &[u8]) -> u32 {
        let first = self.write_chain(&[bytes])[0];
        self.push(&[Element::data(stream, first)]);
        first
    }

    fn poke_buffer(&self, offset: usize, bytes: &[u8]) {
        poke(&self.buffer, offset, bytes);
    }

    fn poke_queue(&self, offset: usize, bytes: &[u8]) {
        poke(&self.queue, offset, bytes);
    }

    /// Whether the other side closed the socket within `WAIT` (frames it sent are skipped).
    fn sees_close(&self) -> bool {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.conn.read_some(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.is_peer_gone() => return true,
                Err(e) if e.is_timeout() => return false,
                Err(e) => panic!("{e}"),
            }
        }
        false
    }
}

/// The peer writes shared memory (any bytes, anywhere in the mapping).
fn poke(region: &SharedRegion, offset: usize, bytes: &[u8]) {
    let target = region
        .region()
        .sub(offset, bytes.len())
        .expect("poke inside the mapping");
    // SAFETY: in bounds of the live mapping (checked by `sub`); the hostile peer writes
    // shared memory that the other process reads only through atomics and raw copies.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), target.as_ptr().as_ptr(), bytes.len()) };
}

/// Reads `N` bytes of shared memory.
fn peek<const N: usize>(region: &SharedRegion, offset: usize) -> [u8; N] {
    let source = region
        .region()
        .sub(offset, N)
        .expect("peek inside the mapping");
    let mut out = [0u8; N];
    // SAFETY: in bounds of the live mapping (checked by `sub`); a racy read of plain bytes.
    unsafe { std::ptr::copy_nonoverlapping(source.as_ptr().as_ptr(), out.as_mut_ptr(), N) };
    out
}

/// Our side of one case: the session facing the hostile peer, a stream on it that has
/// carried one good message, and a healthy session that must keep working.
struct Arena {
    raw: RawPeer,
    victim: Session,
    stream: Stream,
    healthy: Session,
    _threads: Vec<std::thread::JoinHandle<()>>,
    _listeners: Vec<Box<dyn std::any::Any + Send>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ours {
    /// Our `Listener` serves; the hostile peer is a client.
    Server,
    /// Our client connects; the hostile peer is the server.
    Client,
}

fn config() -> Config {
    Config {
        queue_cap: QUEUE_CAP,
        write_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

fn serve_echo(listener: &Listener) -> std::thread::JoinHandle<()> {
    let session = listener.accept_timeout(WAIT).unwrap();
    std::thread::spawn(move || {
        let _ = echo_session(&session, None);
    })
}

fn arena(ours: Ours) -> Arena {
    arena_with(ours, config())
}

/// An arena whose victim session (ours) has `victim` as its configuration.
fn arena_with(ours: Ours, victim: Config) -> Arena {
    match ours {
        Ours::Server => {
            let path = sock("hostile-srv");
            let listener = Listener::bind(&path, victim).unwrap();
            // The healthy client first, so that the accepts come in a known order.
            let healthy = Session::connect(&path, config()).unwrap();
            let echo = serve_echo(&listener);
            let raw = RawPeer::connect(&path);
            let victim = listener.accept_timeout(WAIT).unwrap();
            raw.send_message(1, b"hello");
            let mut stream = victim.accept_stream(Some(WAIT)).unwrap();
            stream.set_read_timeout(Some(WAIT));
            assert_eq!(&stream.read_view().unwrap().unwrap()[..], b"hello");
            Arena {
                raw,
                victim,
                stream,
                healthy,
                _threads: vec![echo],
                _listeners: vec![Box::new(listener)],
            }
        }
        Ours::Client => {
            let good_path = sock("hostile-good");
            let listener = Listener::bind(&good_path, config()).unwrap();
            let healthy = Session::connect(&good_path, config()).unwrap();
            let echo = serve_echo(&listener);
            let path = sock("hostile-cli");
            let raw_listener = raw::Listener::bind_unix(&path).unwrap();
            let accept = std::thread::spawn(move || (RawPeer::accept(&raw_listener), raw_listener));
            let victim = Session::connect(&path, victim).unwrap();
            let (raw, raw_listener) = accept.join().unwrap();
            let mut stream = victim.open_stream().unwrap();
            stream.set_read_timeout(Some(WAIT));
            raw.send_message(stream.id(), b"hello");
            assert_eq!(&stream.read_view().unwrap().unwrap()[..], b"hello");
            Arena {
                raw,
                victim,
                stream,
                healthy,
                _threads: vec![echo],
                _listeners: vec![Box::new(listener), Box::new(raw_listener)],
            }
        }
    }
}

impl Arena {
    /// The victim's reader gets an error naming every one of `names`; `close_reason` agrees;
    /// the hostile peer sees the socket close; the healthy session still echoes.
    fn expect_closed(mut self, names: &[String]) {
        let start = Instant::now();
        let err = match self.stream.read_view() {
            Ok(Some(v)) => panic!("{} bytes delivered instead of an error", v.len()),
            Ok(None) => panic!("a clean end of stream instead of an error"),
            Err(e) => e,
        };
        assert!(
            start.elapsed() < WAIT,
            "noticed only after {:?}: {err}",
            start.elapsed()
        );
        let text = err.to_string();
        for name in names {
            assert!(
                text.contains(name.as_str()),
                "{text:?} does not name {name:?}"
            );
        }
        assert!(self.victim.is_closed());
        let reason = self
            .victim
            .close_reason()
            .expect("a closed session has a reason");
        assert_eq!(reason.to_string(), text, "reader and session disagree");
        assert!(
            self.raw.sees_close(),
            "the hostile peer's socket stays open"
        );
        self.healthy_still_works();
    }

    fn healthy_still_works(&mut self) {
        let mut s = self.healthy.open_stream().unwrap();
        s.set_read_timeout(Some(WAIT));
        check_echoes(&mut s, &[1, 5000, 70_000], 7).expect("the healthy session echoes");
    }
}

/// Runs `case` in both roles; `case` misbehaves through the peer and returns the words the
/// error must contain.
fn both(case: impl Fn(&mut Arena) -> Vec<String>) {
    for ours in [Ours::Server, Ours::Client] {
        let mut arena = arena(ours);
        let names = case(&mut arena);
        eprintln!("our {ours:?}: expecting {names:?}");
        arena.expect_closed(&names);
    }
}

fn header(length: u32, version: u8, kind: u8) -> Vec<u8> {
    let mut h = length.to_be_bytes().to_vec();
    h.extend_from_slice(&[0x77, 0x58, version, kind]);
    h
}

#[test]
fn garbage_on_the_socket() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::garbage_on_the_socket",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        vec!["bad frame magic".into()]
    });
}

#[test]
fn a_frame_cut_short_by_a_hang_up() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_frame_cut_short_by_a_hang_up",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(&header(16, 3, 2)[..6]);
        a.raw.conn.shutdown();
        vec!["middle of a frame".into()]
    });
}

#[test]
fn a_frame_of_version_zero() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_frame_of_version_zero",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(&header(8, 0, 1));
        vec!["bad frame version 0".into()]
    });
}

#[test]
fn a_frame_of_unknown_type() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_frame_of_unknown_type",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(&header(8, 3, 42));
        vec!["unknown message type 42".into()]
    });
}

#[test]
fn a_frame_with_a_huge_length() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_frame_with_a_huge_length",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(&header(0xffff_fff0, 3, 3));
        vec!["4294967280".into(), "exceeds the limit".into()]
    });
}

#[test]
fn a_length_that_does_not_fit_the_type() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_length_that_does_not_fit_the_type",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(&header(9, 3, 1));
        vec!["Polling frame with length 9".into()]
    });
}

#[test]
fn a_handshake_frame_after_the_handshake() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_handshake_frame_after_the_handshake",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        a.raw.send_raw(&encode(3, Message::AckReadyRecvFd));
        vec!["AckReadyRecvFd after the handshake".into()]
    });
}

#[test]
fn a_queue_element_outside_the_region() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_queue_element_outside_the_region",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        let offset = a.raw.buffer.len() as u32 + 4096;
        a.raw.push(&[Element::data(a.stream.id(), offset)]);
        vec![
            format!("bad slice at offset {offset}"),
            "not a slice boundary".into(),
        ]
    });
}

#[test]
fn a_queue_element_into_the_middle_of_a_slice() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_queue_element_into_the_middle_of_a_slice",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        let slice = a.raw.write_chain(&[b"abc"])[0];
        let offset = slice + 100;
        a.raw.push(&[Element::data(a.stream.id(), offset)]);
        vec![
            format!("bad slice at offset {offset}"),
            "not a slice boundary".into(),
        ]
    });
}

#[test]
fn a_chain_that_loops() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_chain_that_loops",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        let slices = a.raw.write_chain(&[b"one", b"two"]);
        // The second links back to the first: next at header offset 12, flags at 16.
        a.raw
            .poke_buffer(slices[1] as usize + 12, &slices[0].to_ne_bytes());
        a.raw
            .poke_buffer(slices[1] as usize + 16, &3u32.to_ne_bytes());
        a.raw.push(&[Element::data(a.stream.id(), slices[0])]);
        vec!["peer sent an invalid buffer chain".into()]
    });
}

#[test]
fn a_chain_that_runs_past_the_region() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_chain_that_runs_past_the_region",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        let slice = a.raw.write_chain(&[b"one"])[0];
        let past = a.raw.buffer.len() as u32 - 8;
        a.raw.poke_buffer(slice as usize + 12, &past.to_ne_bytes());
        a.raw.poke_buffer(slice as usize + 16, &3u32.to_ne_bytes());
        a.raw.push(&[Element::data(a.stream.id(), slice)]);
        vec![format!("bad slice at offset {past}")]
    });
}

#[test]
fn a_length_past_the_slice() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_length_past_the_slice",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        let slice = a.raw.write_chain(&[b"one"])[0];
        // One byte more than the slice holds (the client's regions decide the size).
        let cap = a.raw.manager().data_area(slice).unwrap().1;
        a.raw
            .poke_buffer(slice as usize + 4, &(cap + 1).to_ne_bytes());
        a.raw.push(&[Element::data(a.stream.id(), slice)]);
        vec![
            format!("bad slice at offset {slice}"),
            "exceeds the slice capacity".into(),
        ]
    });
}

#[test]
fn a_chain_announced_twice() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_chain_announced_twice",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        let first = a.raw.write_chain(&[b"twice"])[0];
        a.raw.push(&[
            Element::data(a.stream.id(), first),
            Element::data(a.stream.id(), first),
        ]);
        // Delivered once, then refused.
        assert_eq!(&a.stream.read_view().unwrap().unwrap()[..], b"twice");
        vec![format!("bad slice at offset {first}"), "received it".into()]
    });
}

#[test]
fn a_queue_tail_that_jumps() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_queue_tail_that_jumps",
        std::time::Duration::from_secs(60),
    );
    both(|a| {
        // The compat header: head (i64) at 4, tail (i64) at 12.
        let at = a.raw.send_queue_offset();
        let head = i64::from_ne_bytes(peek(&a.raw.queue, at + 4));
        a.raw.poke_queue(at + 12, &(head + 1_000_000).to_ne_bytes());
        a.raw.wake();
        vec!["io queue header corrupted".into()]
    });
}

/// The peer recycles a slice that we hold (one it sent us, which our reader has not given
/// back): the slice is recycled twice, once by the peer now and once by us later. Put at the
/// head of the free list, our next allocation meets it; the ledger refuses to give it a
/// second owner, and the session closes naming it.
#[test]
fn a_slice_recycled_twice() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_slice_recycled_twice",
        std::time::Duration::from_secs(60),
    );
    for ours in [Ours::Server, Ours::Client] {
        let mut a = arena(ours);
        let slice = a.raw.send_message(a.stream.id(), b"keep me");
        let held = a.stream.read_view().unwrap().unwrap();
        assert_eq!(&held[..], b"keep me");
        // The peer's recycle: the slice goes to the head of its list, linked to the old head.
        let m = a.raw.manager();
        let list = m
            .lists()
            .iter()
            .find(|l| slice >= l.base() && slice < l.base() + l.capacity() * l.slices().stride())
            .copied()
            .unwrap();
        let head_field = list.base() as usize - 36 + 8;
        let old_head = u32::from_ne_bytes(peek(&a.raw.buffer, head_field));
        a.raw
            .poke_buffer(slice as usize + 12, &old_head.to_ne_bytes());
        a.raw.poke_buffer(slice as usize + 16, &1u32.to_ne_bytes());
        a.raw
            .poke_buffer(head_field, &(slice - list.base()).to_ne_bytes());
        drop(m);
        // Our next write pops it.
        let err = a
            .stream
            .send(&vec![1u8; list.slice_size() as usize])
            .expect_err("a slice we hold was handed out again");
        let text = err.to_string();
        eprintln!("our {ours:?}: {text}");
        assert!(matches!(err, Error::ProtocolViolation(_)), "{err:?}");
        assert!(
            text.contains(&format!("bad slice at offset {slice}")),
            "{text}"
        );
        assert!(text.contains("we received it"), "{text}");
        // Our reader's bytes were never given to a writer.
        assert_eq!(&held[..], b"keep me");
        drop(held);
        assert!(
            a.victim.is_closed(),
            "the session goes on after a corrupt free list"
        );
        assert_eq!(a.victim.close_reason().unwrap().to_string(), text);
        assert!(a.raw.sees_close());
        a.healthy_still_works();
    }
}

/// Headers rewritten while we read: a thread keeps scribbling on the headers of every slice
/// in flight while the peer sends. We may deliver a message or close the session naming a
/// slice; we never read outside a slice (ASan) and never hang.
#[test]
fn headers_rewritten_while_we_read() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::headers_rewritten_while_we_read",
        std::time::Duration::from_secs(60),
    );
    for ours in [Ours::Server, Ours::Client] {
        let mut a = arena(ours);
        let stop = AtomicBool::new(false);
        let region = &a.raw.buffer;
        let list_base = a.raw.manager().lists()[0].base() as usize;
        let stride = (SLICE + 20) as usize;
        let slices = (BUFFER_LEN - list_base) / stride;
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                let mut x = 0x9e37_79b9u32;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let slice = list_base + (x as usize % 64.min(slices)) * stride;
                    let field = 4 + 4 * ((x >> 8) as usize % 4); // len, start, next, flags
                    poke(region, slice + field, &(x >> 3).to_ne_bytes());
                }
            });
            let mut delivered = 0;
            let mut result = Ok(());
            for i in 0..200u32 {
                if a.victim.is_closed() {
                    break;
                }
                let m = a.raw.manager();
                let Ok(chain) = m.alloc(100) else { break };
                let abs = chain.first();
                let _ = m.set_len(abs, 100);
                let _ = m.hand_over(abs);
                a.raw.push(&[Element::data(a.stream.id(), abs)]);
                match a.stream.read_view() {
                    Ok(Some(v)) => delivered += v.len(),
                    Ok(None) => {
                        result = Err(format!("clean end at message {i}"));
                        break;
                    }
                    Err(e) => {
                        result = Err(e.to_string());
                        break;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            (delivered, result)
        });
        eprintln!("our {ours:?}: {outcome:?}");
        if let (_, Err(text)) = &outcome {
            assert!(
                text.contains("protocol violation") && text.contains("offset"),
                "not a named violation: {text}"
            );
            assert!(a.victim.is_closed());
        }
        a.healthy_still_works();
    }
}

/// The peer stops reading: our writes fill the queue and then fail with a clear error within
/// the write timeout; the session itself stays usable (reads still work) and others work.
#[test]
fn a_peer_that_stops_reading() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_peer_that_stops_reading",
        std::time::Duration::from_secs(60),
    );
    for ours in [Ours::Server, Ours::Client] {
        let mut a = arena(ours);
        let start = Instant::now();
        let err = loop {
            if let Err(e) = a.stream.send(&[7u8; 100]) {
                break e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "writes never fail"
            );
        };
        assert!(matches!(err, Error::QueueFull), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(!a.victim.is_closed());
        a.raw.send_message(a.stream.id(), b"still here");
        assert_eq!(&a.stream.read_view().unwrap().unwrap()[..], b"still here");
        a.healthy_still_works();
    }
}

/// With `Exhaustion::Wait`, a write that finds no room waits for the peer to make some, up
/// to the write timeout, then fails with `Timeout`; the session stays open.
#[test]
fn a_peer_that_stops_reading_fails_waiting_writes_at_their_deadline() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_peer_that_stops_reading_fails_waiting_writes_at_their_deadline",
        std::time::Duration::from_secs(60),
    );
    for ours in [Ours::Server, Ours::Client] {
        let mut a = arena_with(
            ours,
            Config {
                on_exhaustion: shmlink::Exhaustion::Wait,
                write_timeout: Duration::from_millis(300),
                ..config()
            },
        );
        let mut waited = None;
        for _ in 0..1000 {
            let start = Instant::now();
            if let Err(e) = a.stream.send(&[7u8; 100]) {
                waited = Some((e, start.elapsed()));
                break;
            }
        }
        let (err, took) = waited.expect("writes never failed");
        eprintln!("our {ours:?}: {err} after {took:?}");
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(!a.victim.is_closed());
        a.healthy_still_works();
    }
}

/// `Config::peer_stall_timeout`: a peer that is alive (socket open) but takes nothing we
/// send is closed after the configured silence, and a pending read fails naming it.
#[test]
fn a_hanging_peer_is_closed_after_the_configured_silence() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::a_hanging_peer_is_closed_after_the_configured_silence",
        std::time::Duration::from_secs(60),
    );
    for ours in [Ours::Server, Ours::Client] {
        let mut a = arena_with(
            ours,
            Config {
                peer_stall_timeout: Some(Duration::from_millis(300)),
                ..config()
            },
        );
        // Quiet for longer than the timeout: nothing is owed, nothing closes.
        std::thread::sleep(Duration::from_millis(500));
        assert!(!a.victim.is_closed(), "an idle peer is not a stalled one");
        // Now the peer owes us: it never takes this.
        a.stream.send(b"are you there?").unwrap();
        let sent = Instant::now();
        a.stream.set_read_timeout(Some(Duration::from_secs(5)));
        let err = a
            .stream
            .read_view()
            .expect_err("the hanging peer is never noticed");
        let took = sent.elapsed();
        eprintln!("our {ours:?}: {err} after {took:?}");
        assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
        assert!(err.to_string().contains("peer_stall_timeout"), "{err}");
        assert!(
            took >= Duration::from_millis(290),
            "closed too early: {took:?}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "closed too late: {took:?}"
        );
        assert!(a.victim.is_closed());
        assert!(a.raw.sees_close());
        a.healthy_still_works();
    }
}

/// The stall check leaves a live peer alone however busy or idle: a session echoing through
/// our own server with a short timeout, with idle gaps longer than the timeout.
#[test]
fn the_stall_check_leaves_live_peers_alone() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::the_stall_check_leaves_live_peers_alone",
        std::time::Duration::from_secs(60),
    );
    let path = sock("stall-live");
    let config = Config {
        peer_stall_timeout: Some(Duration::from_millis(100)),
        ..config()
    };
    let listener = Listener::bind(&path, config.clone()).unwrap();
    let client = Session::connect(&path, config).unwrap();
    let server = listener.accept_timeout(WAIT).unwrap();
    let echo = std::thread::spawn(move || echo_session(&server, None));
    let mut stream = client.open_stream().unwrap();
    stream.set_read_timeout(Some(WAIT));
    for round in 0..4 {
        check_echoes(&mut stream, &[1, 5000, 70_000, 300_000], round).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!client.is_closed());
    drop(stream);
    drop(client);
    echo.join().unwrap().unwrap();
}

// ---- the handshake, hostile in each role ----

/// Sends one byte with `fds` attached, as `send_fds` does with exactly two.
fn send_with_fds(conn: &Conn, fds: &[BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    sendmsg(
        conn.as_fd(),
        &[IoSlice::new(&[0])],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
}

/// A V3 memfd client that stops before the fds; returns the connection.
fn client_until_fds(path: &Path) -> Conn {
    let conn = Conn::connect_unix(path).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.send(&encode(3, Message::ExchangeProtoVersion), "send")
        .unwrap();
    let mut buf = Vec::new();
    conn.read_frame(&mut buf, "read").unwrap();
    let paths = shmlink_core::frame::Paths {
        queue: b"q",
        buffer: b"b",
    };
    conn.send(&encode(3, Message::ShareMemoryByMemfd(paths)), "send")
        .unwrap();
    conn.read_frame(&mut buf, "read").unwrap();
    conn
}

#[test]
fn clients_sending_the_wrong_number_of_fds_are_refused_by_our_listener() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::clients_sending_the_wrong_number_of_fds_are_refused_by_our_listener",
        std::time::Duration::from_secs(60),
    );
    let path = sock("fdcount");
    let listener = Listener::bind(&path, config()).unwrap();
    let healthy = Session::connect(&path, config()).unwrap();
    let _echo = serve_echo(&listener);
    let q = SharedRegion::create_memfd("fdcount_q", queue::region_size(QUEUE_CAP)).unwrap();
    let b = SharedRegion::create_memfd("fdcount_b", BUFFER_LEN).unwrap();
    let cases: [&[BorrowedFd<'_>]; 3] = [&[], &[b.fd()], &[b.fd(), q.fd(), b.fd()]];
    let mut conns = Vec::new();
    for fds in cases {
        let conn = client_until_fds(&path);
        send_with_fds(&conn, fds);
        conns.push(conn);
    }
    let failed = shmlink_tests::wait_failures(&listener, 3);
    let texts: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
    eprintln!("{texts:?}");
    for n in [0, 1, 3] {
        assert!(
            texts
                .iter()
                .any(|t| t.contains("expected 2 fds") && t.ends_with(&format!("got {n}"))),
            "no failure names {n} fds: {texts:?}"
        );
    }
    for conn in &conns {
        let mut buf = [0u8; 64];
        let n = conn.read_some(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a refused client's socket is closed");
    }
    let mut s = healthy.open_stream().unwrap();
    check_echoes(&mut s, &[1, 5000], 3).unwrap();
    // And the listener still accepts.
    let later = Session::connect(&path, config()).unwrap();
    let _echo2 = serve_echo(&listener);
    let mut s = later.open_stream().unwrap();
    check_echoes(&mut s, &[10], 4).unwrap();
}

/// A server that reads `at` frames of the client handshake (answering the first correctly
/// if more follow), then sends `reply`, then hangs up or holds the socket open.
fn hostile_server(
    at: usize,
    reply: Vec<u8>,
    hang_up: bool,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = sock("hostile-hs");
    let listener = raw::Listener::bind_unix(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let conn = listener.accept_timeout(WAIT).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = Vec::new();
        for step in 0..at {
            conn.read_frame(&mut buf, "read").unwrap();
            if step == 0 && at > 1 {
                conn.send(&encode(3, Message::ExchangeProtoVersion), "send")
                    .unwrap();
            }
        }
        let _ = conn.send(&reply, "send");
        if hang_up {
            conn.shutdown();
        } else {
            // Hold the socket open until the client gives up.
            let mut b = [0u8; 16];
            let _ = conn.read_some(&mut b);
        }
    });
    (path, handle)
}

#[test]
fn hostile_servers_fail_our_handshake_with_a_named_error_and_in_time() {
    let _deadline = shmlink_tests::deadline(
        "hostile_peer::hostile_servers_fail_our_handshake_with_a_named_error_and_in_time",
        std::time::Duration::from_secs(60),
    );
    let cases: Vec<(usize, Vec<u8>, bool, &str)> = vec![
        (
            1,
            encode(1, Message::ExchangeProtoVersion),
            false,
            "version",
        ),
        (1, b"SSH-2.0-OpenSSH\r\n".to_vec(), false, "bad frame magic"),
        (1, header(0x7fff_ffff, 3, 3), false, "exceeds the limit"),
        (
            1,
            encode(3, Message::AckShareMemory),
            false,
            "AckShareMemory",
        ),
        (2, encode(3, Message::Polling), false, "AckReadyRecvFD"),
        (2, Vec::new(), true, "closed"),
        (1, header(12, 3, 2)[..5].to_vec(), true, "closed"),
    ];
    let healthy_path = sock("hostile-hs-good");
    let listener = Listener::bind(&healthy_path, config()).unwrap();
    let healthy = Session::connect(&healthy_path, config()).unwrap();
    let _echo = serve_echo(&listener);
    for (at, reply, hang_up, name) in cases {
        let (path, server) = hostile_server(at, reply, hang_up);
        let start = Instant::now();
        let err = Session::connect(
            &path,
            Config {
                initialize_timeout: Duration::from_secs(2),
                ..config()
            },
        )
        .map(|_| ())
        .expect_err("a hostile server must not complete our handshake");
        let text = err.to_string();
        eprintln!("{name}: {text}");
        assert!(text.contains(name), "{text:?} does not name {name:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        server.join().unwrap();
    }
    let mut s = healthy.open_stream().unwrap();
    check_echoes(&mut s, &[1, 5000], 5).unwrap();
}
