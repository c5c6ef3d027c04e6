//! Loom models of the IO queue (core/src/queue.rs).
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
