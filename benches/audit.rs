//! The audit writer's cost per request: building a record (with its HMAC pseudonym),
//! queueing it, and the writer task serialising and appending it to the day's file.
//! Compare with the load script's per-request budget (`scripts/load.sh`).
//!
//! `cargo bench --bench audit`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::audit::{AuditLog, AuditRecord};
use gatehouse::config::{AuditPath, AuditSettings};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = AuditSettings {
        path: AuditPath::Dir(dir.path().join("audit")),
        retention_days: 90,
        pseudonym_key: Some(b"bench-key".to_vec()),
    };
    let log = AuditLog::start(&settings, io.handle()).unwrap();
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function(
        "audit: record + pseudonym + queue + write (per line)",
        |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                driver.block_on(async {
                    for i in 0..iters {
                        let mut rec = AuditRecord::new(
                            format!("req-{i}"),
                            "orders-read",
                            "GET",
                            "/orders/42?x=1",
                        );
                        rec.decision = gatehouse::names::Decision::Allow;
                        rec.subject = Some(
                            log.pseudonymizer()
                                .subject("https://idp.example/tenant", "alice")
                                .into(),
                        );
                        rec.roles = vec!["data-steward".into()].into();
                        rec.status = 200;
                        rec.upstream = Some("orders".into());
                        rec.duration_ms = 1;
                        log.write(rec).await;
                    }
                    log.flush().await;
                });
                start.elapsed()
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
