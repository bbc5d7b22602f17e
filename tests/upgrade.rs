//! Zero-downtime binary upgrade: on SIGQUIT the running process starts its binary again
//! with the listening sockets inherited (ecdysis); once the new process is ready the old
//! one drains and exits 0, while traffic keeps flowing. The new process writes its pid
//! to `--pid-file`.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn serve(env: &Env, pid_file: &std::path::Path) -> Guarded {
    let mut c = serve_command(env);
    c.arg("--pid-file").arg(pid_file);
    Guarded::spawn(c.stdout(Stdio::null()).stderr(Stdio::null()))
}

#[test]
fn sigquit_hands_the_sockets_to_a_new_process_without_failed_requests() {
    let env = Env::with(EnvOptions {
        start_gateway: false,
        ..EnvOptions::default()
    });
    let pid_file = env.dir.path().join("gatehouse.pid");
    let mut old = serve(&env, &pid_file);
    let start = Instant::now();
    while env
        .block_on(async { env.client(false).get(env.url("/public")).send().await })
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "first process did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = env.url("/public");
        let client = env.client(false);
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        workers.push(env.rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        match other {
                            Ok(r) => eprintln!("failed request: status {}", r.status()),
                            Err(e) => eprintln!("failed request: {e:?}"),
                        }
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let old_pid = old.id() as i32;
    let start = Instant::now();
    while read_pid(&pid_file) != Some(old_pid) {
        assert!(start.elapsed() < Duration::from_secs(20), "no pid file");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    send_signal(&old, libc::SIGQUIT);
    let old_exit = old.wait().unwrap();
    let new = Pid(read_pid(&pid_file).expect("the new process wrote its pid"));
    assert_ne!(new.0, old_pid, "a new process took over");
    assert!(new.alive());
    let served_by_old = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        env.block_on(w).unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("upgrade: {ok} requests ok ({served_by_old} before the old process exited), {failed} failed");
    assert!(
        old_exit.success(),
        "old process exits 0 after the hand-over: {old_exit:?}"
    );
    assert!(
        ok > served_by_old,
        "the new process serves after the old one exited"
    );
    assert_eq!(failed, 0, "no request failed during the hand-over");
    let r = env.get("/public", None, false);
    assert_eq!(r.status, 200);
    new.signal(libc::SIGTERM);
    let start = Instant::now();
    while new.alive() {
        // Reaped by init once it exits (the old process, its parent, is gone).
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "new process still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
