//! Issue 9, item 4: log events carry the session's id (and the stream's, for stream events),
//! and nothing is logged per message. One test: it installs the process-wide subscriber.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use shmlink::{Config, Listener, Session};
use shmlink_tests::{socket_path, unique};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[derive(Clone, Debug)]
struct Seen {
    target: String,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Capture(Mutex<Vec<Seen>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            target: event.metadata().target().to_owned(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Shared(Arc<Capture>);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        self.0.new_span(a)
    }
    fn record(&self, i: &Id, r: &Record<'_>) {
        self.0.record(i, r)
    }
    fn record_follows_from(&self, a: &Id, b: &Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, i: &Id) {
        self.0.enter(i)
    }
    fn exit(&self, i: &Id) {
        self.0.exit(i)
    }
}

#[test]
fn events_name_their_session_and_stream_and_none_come_per_message() {
    let _deadline = shmlink_tests::deadline(
        "tracing_events::events_name_their_session_and_stream_and_none_come_per_message",
        std::time::Duration::from_secs(60),
    );
    let capture = Arc::new(Capture::default());
    tracing::subscriber::set_global_default(Shared(Arc::clone(&capture))).unwrap();
    let seen = || capture.0.lock().unwrap().clone();

    let path = socket_path(&unique("tracing"));
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let client = Session::connect(&path, Config::default()).unwrap();
    let server = listener.accept().unwrap();
    let mut c = client.open_stream().unwrap();
    c.write_all(b"hello").unwrap();
    let mut s = server.accept_stream(None).unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();

    let started: Vec<Seen> = seen()
        .into_iter()
        .filter(|e| e.field("message") == Some("session started"))
        .collect();
    assert_eq!(started.len(), 2, "client and server: {started:?}");
    for e in &started {
        assert_eq!(e.target, "shmlink::session");
        assert!(e.field("session").is_some(), "{e:?}");
        assert!(e.field("peer").is_some(), "{e:?}");
    }
    let opened = seen()
        .into_iter()
        .find(|e| e.field("message") == Some("stream opened"))
        .expect("a stream-opened event");
    assert_eq!(opened.field("stream"), Some(c.id().to_string().as_str()));
    assert!(opened.field("session").is_some());

    // A thousand messages each way: not one event.
    let before = seen().len();
    for i in 0..1000u32 {
        c.write_all(&i.to_be_bytes()).unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        s.write_all(&got).unwrap();
        c.read_exact(&mut got).unwrap();
    }
    let during: Vec<Seen> = seen().into_iter().skip(before).collect();
    assert!(during.is_empty(), "events on the message path: {during:?}");

    drop(c);
    drop(s);
    drop(client);
    let closed: Vec<Seen> = seen()
        .into_iter()
        .filter(|e| e.field("message") == Some("session closed"))
        .collect();
    assert!(!closed.is_empty(), "the client's close is logged");
    assert!(
        closed
            .iter()
            .all(|e| e.field("session").is_some() && e.field("reason").is_some())
    );
}
