//! `gatehouse serve` as a process and its signals: SIGTERM drains in-flight requests within
//! the live `drain_timeout_s`, reports draining on /readyz, writes every audit line and exits
//! 0 promptly; SIGHUP during start-up or with a broken config never kills the process.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// After `drain_timeout_s` is raised by SIGHUP, SIGTERM drains for the new window.
#[test]
fn sigterm_after_raising_drain_timeout_by_sighup_uses_the_new_window() {
    let env = ops_env(false);
    edit_config(&env, "read_timeout_ms = 1500", "read_timeout_ms = 20000");
    edit_config(&env, "drain_timeout_s = 5", "drain_timeout_s = 1");
    let admin = admin_addr_of(&env);
    let mut p = Proc::serve(&env, "drain-reload");
    p.wait_listening(env.https);
    edit_config(&env, "drain_timeout_s = 1", "drain_timeout_s = 30");
    p.signal(libc::SIGHUP);
    wait_reloads(admin, 1.0);
    let client = env.client(false);
    let url = env.url("/slow?ms=4000");
    let inflight = env
        .rt
        .spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    std::thread::sleep(Duration::from_millis(500));
    p.signal(libc::SIGTERM);
    let status = env.block_on(inflight).unwrap();
    let exit = p.wait_exit(Duration::from_secs(40));
    assert!(
        matches!(status, Ok(200)),
        "the in-flight request was cut by the old 1 s drain window: {status:?}"
    );
    assert!(exit.is_some_and(|e| e.success()));
}

/// SIGHUP while `serve` is still loading its config (a slow secret file, DNS) does not kill
/// the process: the handlers are installed before the first load.
#[test]
fn sighup_while_loading_the_config_does_not_kill_serve() {
    let env = ops_env(false);
    let key = env.dir.path().join("pseudonym.key");
    std::fs::remove_file(&key).unwrap();
    // A FIFO holds the config load open (stands in for a slow DNS lookup or a slow
    // network file system) so that the signal lands deterministically in that window.
    let c = std::ffi::CString::new(key.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut p = Proc::serve(&env, "hup-early");
    std::thread::sleep(Duration::from_millis(700));
    p.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let exited = p.wait_exit(Duration::from_millis(100));
    assert!(
        exited.is_none(),
        "SIGHUP during start-up killed serve: {exited:?}"
    );
}

/// /readyz answers 503 while the process drains after SIGTERM, so probes stop routing to it.
#[test]
fn readyz_reports_draining_after_sigterm() {
    let env = ops_env(false);
    edit_config(&env, "read_timeout_ms = 1500", "read_timeout_ms = 20000");
    edit_config(&env, "drain_timeout_s = 5", "drain_timeout_s = 30");
    let admin = admin_addr_of(&env);
    let mut p = Proc::serve(&env, "readyz-drain");
    p.wait_listening(env.https);
    // Ready once the issuer's keys are in (that can lag the listener on a busy machine).
    let start = std::time::Instant::now();
    while plain_get(admin, "/readyz").0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = env.client(false);
    let url = env.url("/slow?ms=3000");
    let inflight = env
        .rt
        .spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    std::thread::sleep(Duration::from_millis(500));
    p.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let (during, body) = plain_get(admin, "/readyz");
    assert!(matches!(env.block_on(inflight).unwrap(), Ok(200)));
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
    assert_eq!(during, 503, "readyz while draining: {during} {body}");
}

/// Every audit line of the requests answered just before SIGTERM is written before exit.
#[test]
fn audit_lines_of_requests_just_before_sigterm_are_all_written() {
    let env = ops_env(false);
    let mut p = Proc::serve(&env, "audit-exit");
    p.wait_listening(env.https);
    let ids: Vec<String> = (0..40).map(|i| format!("exit-{i}")).collect();
    let client = env.client(true);
    env.block_on(async {
        let futs = ids.iter().map(|id| {
            client
                .get(env.url("/slow?ms=1"))
                .header("x-request-id", id.as_str())
                .send()
        });
        for r in futures::future::join_all(futs).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    });
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
    let mut seen = Vec::new();
    for f in std::fs::read_dir(env.dir.path().join("audit")).unwrap() {
        for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            seen.push(v["request_id"].as_str().unwrap().to_string());
        }
    }
    for id in &ids {
        assert!(seen.contains(id), "{id} missing from the audit log");
    }
}

/// SIGTERM on an idle gateway exits at once: the audit flush does not wait for a timeout.
#[test]
fn sigterm_on_an_idle_gateway_exits_promptly() {
    let env = ops_env(false);
    let mut p = Proc::serve(&env, "idle-exit");
    p.wait_listening(env.https);
    assert_eq!(env.get("/slow?ms=1", None, false).status, 200);
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let exit = p.wait_exit(Duration::from_secs(20)).expect("exits");
    let took = t.elapsed();
    assert!(exit.success());
    let err = p.stderr();
    assert!(
        took < Duration::from_secs(3) && !err.contains("audit flush timed out"),
        "idle gateway took {took:?} to exit after SIGTERM; stderr:\n{err}"
    );
}

/// A `drain_timeout_s` near i64::MAX is refused by `check`, or SIGTERM still exits.
#[test]
fn huge_drain_timeout_is_refused_or_sigterm_still_exits() {
    let env = ops_env(false);
    edit_config(
        &env,
        "drain_timeout_s = 5",
        "drain_timeout_s = 9223372036854775807",
    );
    let (check, out) = run_cli(&env, "check");
    if check == Some(1) {
        return; // refused by check: fine
    }
    assert_eq!(check, Some(0), "{out}");
    let mut p = Proc::serve(&env, "huge-drain");
    p.wait_listening(env.https);
    p.signal(libc::SIGTERM);
    let exit = p.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|e| e.success()),
        "`check` accepted it but SIGTERM never finished: {exit:?}; stderr:\n{}",
        p.stderr()
    );
}

/// A SIGHUP with a broken config keeps serving and counts the error; SIGINT exits 0.
#[test]
fn broken_sighup_keeps_serving_and_serve_exit_codes() {
    let env = ops_env(false);
    let admin = admin_addr_of(&env);
    let mut p = Proc::serve(&env, "broken-hup");
    p.wait_listening(env.https);
    edit_config(
        &env,
        "upstream = \"echo\"\nauth",
        "upstream = \"nope\"\nauth",
    );
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(
        &plain_get(admin, "/metrics").1,
        "gatehouse_config_reloads_total",
        &[("result", "error")],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "reload error never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.get("/slow?ms=1", None, false).status, 200);
    p.signal(libc::SIGINT);
    assert_eq!(
        p.wait_exit(Duration::from_secs(20)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn sigterm_lets_a_slow_in_flight_request_finish_then_exits_0() {
    // A longer read timeout and drain window than the harness default.
    let (env, mut child) = ops_process(|text| {
        text.replace("read_timeout_ms = 1500", "read_timeout_ms = 10000")
            .replace("drain_timeout_s = 5", "drain_timeout_s = 30")
    });
    let client = env.client(false);
    let url = env.url("/slow?ms=2000");
    let inflight = env
        .rt
        .spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    send_signal(&child, libc::SIGTERM);
    let status = env
        .block_on(inflight)
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(status, 200);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    // Exits once the request is done, not after the 30 s drain window.
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "exited after {:?}",
        signalled.elapsed()
    );
    assert!(
        std::net::TcpStream::connect(env.https).is_err(),
        "no longer listening"
    );
}

#[test]
fn signals_right_after_the_listener_is_up_are_handled() {
    // The handlers must be in place before the listener accepts: a SIGTERM then drains
    // and exits 0, a SIGHUP reloads instead of killing the process (default action).
    let env = Env::with(EnvOptions {
        start_gateway: false,
        ..EnvOptions::default()
    });
    for i in 0..4 {
        let mut p = Proc::serve(&env, &format!("early{i}"));
        p.wait_listening(env.https);
        if i % 2 == 1 {
            assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGHUP) }, 0);
            let raw = raw_get(&env, "/public", None, "");
            assert_eq!(
                status_of(&raw),
                200,
                "attempt {i}: {raw}; stderr:\n{}",
                p.stderr()
            );
        }
        assert_eq!(unsafe { libc::kill(p.pid(), libc::SIGTERM) }, 0);
        let code = p.wait_code(Duration::from_secs(20));
        assert_eq!(code, Some(0), "attempt {i}; stderr:\n{}", p.stderr());
    }
}
