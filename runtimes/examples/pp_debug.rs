use std::time::{Duration, Instant};
fn main() {
    let mode = match std::env::args().nth(1).as_deref() { Some("event") => shmlink::SyncMode::Event, Some("poll") => shmlink::SyncMode::Poll, _ => shmlink::SyncMode::Adaptive };
    let config = shmlink::Config { sync: mode, ..Default::default() };
    if let Ok(p) = std::env::var("PPDBG_SERVER") {
        let listener = shmlink::Listener::bind(&p, config.clone()).unwrap();
        println!("ready");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let session = shmlink::tokio::accept(&listener).await.unwrap();
            let mut s = session.accept_stream(None).await.unwrap();
            while let Ok(Some(v)) = s.read_view().await { let d = v.to_vec(); drop(v); s.send(&d).await.unwrap(); }
        });
        return;
    }
    let path = std::env::temp_dir().join(format!("ppdbg-{}.sock", std::process::id()));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap()).args(std::env::args().skip(1)).env("PPDBG_SERVER", &path).stdout(std::process::Stdio::piped()).spawn().unwrap();
    { use std::io::BufRead; let mut l = String::new(); std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut l).unwrap(); }
    let listener = shmlink::Listener::bind(std::env::temp_dir().join(format!("ppdbg-x-{}.sock", std::process::id())), config.clone()).unwrap();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _ = (rt, listener);
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let session = rt.block_on(shmlink::tokio::connect(&path, config)).unwrap();
    let mut s = rt.block_on(async { session.open_stream() }).unwrap();
    let mut times = Vec::new();
    for _ in 0..20000 {
        let t = Instant::now();
        rt.block_on(async { s.send(&[1u8; 64]).await.unwrap(); let v = s.read_view().await.unwrap().unwrap(); assert_eq!(v.len(), 64); });
        times.push(t.elapsed());
    }
    times.sort();
    println!("median {:?} p99 {:?} polling sent {}", times[times.len()/2], times[times.len()*99/100], session.metrics().send_sync_event_count);
    drop(s); drop(session); drop(rt);
    let _ = server.join(); let _ = child.wait();
    let _ = Duration::ZERO;
}
