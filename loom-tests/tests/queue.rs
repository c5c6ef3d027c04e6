//! Loom models of the IO queue (core/src/queue.rs).
//!
//! The head/tail counter's loom twin loads with Acquire, exactly what x86's `mov` gives: a
//! SeqCst twin would synchronise with earlier SeqCst fences and hide missing ones.
//!
//! # Mutations tried (`python3 loom-tests/mutations.py`, LOOM_MAX_PREEMPTIONS=2)
//!
//! | mutation of core | model | result |
//! | --- | --- | --- |
//! | `finish_drain`: fence deleted, flag store Relaxed | `lost_wakeup_is_impossible_when_consumer_goes_idle` | caught |
//! | the same, with the counter twin's load SeqCst (as before issue 6) | `lost_wakeup_is_impossible_when_consumer_goes_idle` | missed: the SeqCst load hides it, which is why the twin is Acquire |
//! | the same | `a_full_queue_and_the_flag_handshake_strand_nothing` | caught |
//! | tail increment Release without the SeqCst fence | `lost_wakeup_is_impossible_when_consumer_goes_idle` | caught |
//! | producer lock removed | `two_producers_serialised_by_the_local_lock` | caught |
//! | `finish_drain`: fence deleted, flag store Relaxed | `adaptive_spinning_and_hot_returns_strand_nothing` | caught |
//! | the producer's flag load before its CAS made Relaxed | `lost_wakeup_is_impossible_when_consumer_goes_idle` | missed, and not a bug: the tail increment before it is a SeqCst fence, and fence-then-load is the Dekker pattern as well; the load stays SeqCst for the reader |
//! | `mark_working` store Relaxed | `adaptive_spinning_and_hot_returns_strand_nothing` | missed, and not a bug: raising the flag only makes the producer skip a Polling frame, and a consumer that raised it always looks at the queue again before it sleeps (`finish_drain`, whose SeqCst store and fence do the ordering) |
#![cfg(loom)]

use loom::thread;
use shmlink_core::queue::{
    Consumer, Drain, Element, ElementSlot, Producer, Queue, QueueError, QueueHeader, Wake,
};
use shmlink_loom_tests::leak;

fn queue(cap: u32) -> Queue<'static> {
    let header = leak(QueueHeader::new(cap));
    let slots = leak((0..cap).map(|_| ElementSlot::default()).collect::<Vec<_>>());
    Queue::from_parts(header, slots).unwrap()
}

fn push_until_accepted(producer: &Producer<'_>, e: Element) -> Wake {
    loop {
        match producer.push(e) {
            Ok(wake) => return wake,
            Err(QueueError::Full { .. }) => thread::yield_now(),
            Err(other) => panic!("push failed: {other}"),
        }
    }
}

/// One drain cycle as the session driver runs it after a Polling frame: pop until empty,
/// lower the flag, drain again if told to.
fn drain(consumer: &mut Consumer<'_>, out: &mut Vec<Element>) {
    loop {
        while let Some(e) = consumer.pop().unwrap() {
            out.push(e);
        }
        match consumer.finish_drain().unwrap() {
            Drain::Idle => return,
            Drain::Again => {}
        }
    }
}

/// (a) A producer thread and a consumer thread over a queue smaller than the message count:
/// every element arrives once, in order, with its content intact.
#[test]
fn push_pop_keeps_order_and_content() {
    loom::model(|| {
        let (producer, mut consumer) = queue(2).split();
        let producer = leak(producer);
        let sent = [
            Element::data(2, 44),
            Element::data(3, 8236),
            Element::close(2),
        ];
        let t = thread::spawn(move || {
            for e in sent {
                let _ = push_until_accepted(producer, e);
            }
        });
        let mut got = Vec::new();
        while got.len() < sent.len() {
            match consumer.pop().unwrap() {
                Some(e) => got.push(e),
                None => thread::yield_now(),
            }
        }
        t.join().unwrap();
        assert_eq!(got, sent);
        assert_eq!(consumer.pop().unwrap(), None);
    });
}

/// (b) The working-flag handshake never loses a wake-up: the consumer is draining (flag up,
/// one element queued) while the producer pushes two more. Whatever the interleaving,
/// either the consumer's drain cycle sees the new elements or the producer is told to
/// notify; so after delivering the Polling frames that were sent, nothing is left behind.
#[test]
fn lost_wakeup_is_impossible_when_consumer_goes_idle() {
    loom::model(|| {
        let (producer, mut consumer) = queue(4).split();
        let producer = leak(producer);
        let first = Element::data(2, 1);
        assert_eq!(producer.push(first).unwrap(), Wake::NotifyPeer);

        let t = thread::spawn(move || {
            let mut notifies = 0;
            for offset in [2, 3] {
                if producer.push(Element::data(2, offset)).unwrap() == Wake::NotifyPeer {
                    notifies += 1;
                }
            }
            notifies
        });
        // The consumer handles the Polling for `first`.
        let mut got = Vec::new();
        drain(&mut consumer, &mut got);
        let notifies = t.join().unwrap();

        // Each Polling the producer sent is delivered and handled by a drain cycle.
        for _ in 0..notifies {
            drain(&mut consumer, &mut got);
        }
        assert_eq!(
            got,
            [first, Element::data(2, 2), Element::data(2, 3)],
            "an element was stranded"
        );
        assert_eq!(consumer.queue().len().unwrap(), 0);
    });
}

/// (e) The adaptive sync mode (issue 8) over the same flag: the consumer raises the flag
/// itself when it starts spinning (`mark_working`), looks at the queue a bounded number of
/// times, and either leaves with the flag still up (a "hot" return with data: the next wait
/// starts by looking at the queue) or lowers it with `finish_drain` before sleeping. A producer
/// pushes meanwhile and sends a Polling frame only when its CAS finds the flag down. Whatever
/// the interleaving, the consumer's next wait plus the Polling frames sent find every element.
#[test]
fn adaptive_spinning_and_hot_returns_strand_nothing() {
    loom::model(|| {
        let (producer, mut consumer) = queue(4).split();
        let producer = leak(producer);
        let sent = [Element::data(2, 1), Element::data(2, 2)];
        let t = thread::spawn(move || {
            let mut notifies = 0;
            for e in sent {
                if producer.push(e).unwrap() == Wake::NotifyPeer {
                    notifies += 1;
                }
            }
            notifies
        });
        let mut got = Vec::new();
        // One wait in Adaptive mode: look, start spinning (flag up), look once more.
        while let Some(e) = consumer.pop().unwrap() {
            got.push(e);
        }
        consumer.mark_working();
        while let Some(e) = consumer.pop().unwrap() {
            got.push(e);
        }
        let hot = !got.is_empty();
        if !hot {
            // The window ended without data: lower the flag (draining what raced in) and
            // sleep until a Polling frame.
            drain(&mut consumer, &mut got);
        }
        let notifies = t.join().unwrap();
        if hot {
            // A hot return leaves the flag up; the next wait looks at the queue first, then
            // goes idle properly.
            while let Some(e) = consumer.pop().unwrap() {
                got.push(e);
            }
            drain(&mut consumer, &mut got);
        }
        // Each Polling frame sent is handled by a drain cycle; nothing else looks.
        for _ in 0..notifies {
            drain(&mut consumer, &mut got);
        }
        assert_eq!(got, sent, "an element was stranded or reordered");
        assert_eq!(consumer.queue().len().unwrap(), 0);
    });
}

/// (d) Two producer threads of one process push through the process-local lock while a
/// consumer thread pops: nothing is lost or duplicated and each producer's order holds.
#[test]
fn two_producers_serialised_by_the_local_lock() {
    loom::model(|| {
        let (producer, mut consumer) = queue(4).split();
        let producer = leak(producer);
        let threads: Vec<_> = [2u32, 3]
            .into_iter()
            .map(|id| {
                thread::spawn(move || {
                    for seq in 0..2 {
                        let _ = push_until_accepted(producer, Element::data(id, seq));
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 4 {
            match consumer.pop().unwrap() {
                Some(e) => got.push(e),
                None => thread::yield_now(),
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        for id in [2u32, 3] {
            let seqs: Vec<u32> = got
                .iter()
                .filter(|e| e.stream_id == id)
                .map(|e| e.offset)
                .collect();
            assert_eq!(seqs, [0, 1], "stream {id}");
        }
        assert_eq!(consumer.queue().pushed_total(), 4);
    });
}

/// A full queue combined with the working-flag handshake: a one-slot queue, the consumer
/// draining while the producer waits for room. The producer's second push can only land
/// after the consumer popped the first, possibly after the consumer lowered its flag; either
/// the consumer's drain sees it or the producer is told to notify, so nothing is stranded.
#[test]
fn a_full_queue_and_the_flag_handshake_strand_nothing() {
    loom::model(|| {
        let (producer, mut consumer) = queue(1).split();
        let producer = leak(producer);
        let first = Element::data(2, 1);
        let second = Element::data(2, 2);
        assert_eq!(producer.push(first).unwrap(), Wake::NotifyPeer);
        let t = thread::spawn(move || push_until_accepted(producer, second) == Wake::NotifyPeer);
        let mut got = Vec::new();
        drain(&mut consumer, &mut got); // the Polling for `first`
        let notified = t.join().unwrap();
        if notified {
            drain(&mut consumer, &mut got);
        }
        assert_eq!(got, [first, second], "an element was stranded");
        assert_eq!(
            consumer.queue().stats().working,
            0,
            "the consumer ends idle"
        );
    });
}

/// A stream's close pushed by another thread than its last write (a stream dropped on one
/// thread after a write on another, ordered by the application, here by a join): the
/// consumer sees the data before the close, never a close followed by data for the stream.
#[test]
fn a_close_pushed_after_a_write_on_another_thread_arrives_after_it() {
    loom::model(|| {
        let (producer, mut consumer) = queue(2).split();
        let producer = leak(producer);
        let closer = thread::spawn(move || {
            let writer = thread::spawn(move || producer.push(Element::data(2, 44)).unwrap());
            let _ = writer.join().unwrap();
            producer.push(Element::close(2)).unwrap()
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            match consumer.pop().unwrap() {
                Some(e) => got.push(e),
                None => thread::yield_now(),
            }
        }
        let _ = closer.join().unwrap();
        assert_eq!(got, [Element::data(2, 44), Element::close(2)]);
    });
}
