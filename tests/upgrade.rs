//! Zero-downtime binary upgrade through pingora's socket hand-over: a new process started
//! with `serve --upgrade` takes the listening sockets when the old one gets SIGQUIT, while
//! traffic keeps flowing.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn serve(env: &Env, upgrade: bool) -> Guarded {
    let mut c = serve_command(env);
    if upgrade {
        c.arg("--upgrade");
    }
    Guarded::spawn(c.stdout(Stdio::null()).stderr(Stdio::null()))
}

#[test]
fn sigquit_hands_the_sockets_to_a_new_process_without_failed_requests() {
    let env = Env::with(EnvOptions {
        start_gateway: false,
        ..EnvOptions::default()
    });
    let mut old = serve(&env, false);
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
    let mut new = serve(&env, true);
    std::thread::sleep(Duration::from_millis(1000));
    send_signal(&old, libc::SIGQUIT);
    let old_exit = old.wait().unwrap();
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
    send_signal(&new, libc::SIGTERM);
    assert!(new.wait().unwrap().success());
}
