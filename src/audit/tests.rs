//! Unit tests of the audit log: exact fields, pseudonyms, daily files, retention, write
//! errors and recovery, bursts.

use super::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use tokio::runtime::Handle;

fn settings(dir: &Path) -> AuditSettings {
    AuditSettings {
        path: AuditPath::Dir(dir.to_path_buf()),
        // Far past any test date, so the start-up sweep leaves test files alone.
        retention_days: 365_000,
        pseudonym_key: Some(b"gatehouse-test-key".to_vec()),
    }
}

fn record(ts: &str, request_id: &str) -> AuditRecord {
    let ts = ts.to_string();
    AuditRecord {
        ts,
        ..AuditRecord::new(request_id, "orders-read", "GET", "/orders")
    }
}

fn ids(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    let ids = text
        .lines()
        .map(|l| encode_str(l)["request_id"].as_str().unwrap().into());
    ids.collect()
}

fn encode_str(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

fn encode(rec: AuditRecord) -> Value {
    let line = Line::from_record(rec);
    let text = std::str::from_utf8(&line.text).expect("a line is UTF-8");
    assert!(!text.contains('\n'));
    encode_str(text)
}

#[test]
fn allow_deny_public_records_have_exactly_the_spec_fields() {
    let allow = AuditRecord {
        ts: "2024-05-01T10:00:00.123Z".into(),
        decision: Decision::Allow,
        subject: Some("ab".repeat(32).into()),
        client_id: Some("billing-sync".into()),
        roles: vec!["integration".into(), "data-steward".into()].into(),
        status: 200,
        upstream: Some("orders".into()),
        duration_ms: 12,
        ..AuditRecord::new("req-1", "orders-read", "GET", "/orders/7")
    };
    let expected = json!({
        "ts": "2024-05-01T10:00:00.123Z", "request_id": "req-1", "route": "orders-read",
        "method": "GET", "path": "/orders/7", "decision": "allow", "reason": null,
        "subject": "ab".repeat(32), "client_id": "billing-sync",
        "roles": ["integration", "data-steward"], "status": 200, "upstream": "orders",
        "duration_ms": 12
    });
    assert_eq!(encode(allow.clone()), expected);
    // Field order is the documented one too (readers grep these files).
    assert!(Line::from_record(allow.clone())
        .text
        .starts_with(br#"{"ts":"#));

    let (client_id, roles, upstream) = (None, Vec::<String>::new(), None);
    let reason = Some("insufficient_role");
    let (status, duration_ms) = (403, 1);
    let deny = AuditRecord {
        decision: Decision::Deny,
        reason,
        client_id,
        roles: roles.into(),
        status,
        upstream,
        duration_ms,
        ..allow
    };
    let expected = json!({
        "ts": "2024-05-01T10:00:00.123Z", "request_id": "req-1", "route": "orders-read",
        "method": "GET", "path": "/orders/7", "decision": "deny",
        "reason": "insufficient_role", "subject": "ab".repeat(32), "client_id": null,
        "roles": [], "status": 403, "upstream": null, "duration_ms": 1
    });
    assert_eq!(encode(deny), expected);

    let (ts, upstream) = ("2024-05-01T10:00:00.123Z".into(), Some("orders".into()));
    let public = AuditRecord {
        ts,
        status: 200,
        upstream,
        duration_ms: 3,
        ..AuditRecord::new("req-2", "health", "HEAD", "/health")
    };
    let expected = json!({
        "ts": "2024-05-01T10:00:00.123Z", "request_id": "req-2", "route": "health",
        "method": "HEAD", "path": "/health", "decision": "public", "reason": null,
        "subject": null, "client_id": null, "roles": [], "status": 200,
        "upstream": "orders", "duration_ms": 3
    });
    assert_eq!(encode(public), expected);
}

#[test]
fn ts_is_rfc3339_utc_millis_and_path_loses_its_query() {
    let rec = AuditRecord::new("r", "x", "GET", "/orders/7?access_token=secret&a=b");
    assert_eq!(rec.path, "/orders/7");
    assert_eq!(rec.ts.len(), "2024-05-01T10:00:00.123Z".len());
    assert!(rec.ts.ends_with('Z') && DateTime::parse_from_rfc3339(&rec.ts).is_ok());
    // Set directly, bypassing the constructor: still cut.
    let v = encode(AuditRecord {
        path: "/a?token=secret".into(),
        ..rec
    });
    assert_eq!(v["path"], "/a");
    assert!(!v.to_string().contains("secret"));
    assert_eq!((strip_query("/plain"), strip_query("/?")), ("/plain", "/"));
}

#[test]
fn pseudonym_is_keyed_hmac_sha256_hex() {
    let p = Pseudonymizer::new(Some(b"gatehouse-test-key"));
    let got = p.subject("https://login.example.com/tenant", "alice");
    // Independently: the hmac crate directly, and Python's hmac module (hard-coded).
    let mut mac = Hmac::<Sha256>::new_from_slice(b"gatehouse-test-key").unwrap();
    mac.update(b"https://login.example.com/tenant\nalice");
    assert_eq!(got, hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        got,
        "4ec48b0386e0cccf2741064d0589874d4712e90cc5590bba5e43e5be1a4bbcfb"
    );
    assert_eq!(got.len(), 64);
    assert!(got.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(got, p.subject("https://login.example.com/tenant", "alice"));
    let other = Pseudonymizer::new(Some(b"another-key"));
    assert_ne!(
        got,
        other.subject("https://login.example.com/tenant", "alice")
    );
    assert_ne!(got, p.subject("https://other.example.com", "alice"));
    assert!(!got.contains("alice"));
    let (a, b) = (Pseudonymizer::new(None), Pseudonymizer::new(None));
    assert_ne!(a.subject("i", "s"), b.subject("i", "s"));
    assert_eq!(format!("{a:?}"), "Pseudonymizer { .. }");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_named_by_utc_day_with_mode_0640() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit"); // missing: created by start
    let log = AuditLog::start(&settings(&dir), &Handle::current()).unwrap();
    assert!(log.healthy().is_ok());
    assert!(dir.join(file_name(Utc::now().date_naive())).exists());
    log.write(record("2024-03-01T23:59:59.999Z", "a")).await;
    log.write(record("2024-03-02T00:00:00.000Z", "b")).await;
    // 01:30 at +02:00 is 23:30 UTC the day before.
    log.write(record("2024-03-02T01:30:00.000+02:00", "c"))
        .await;
    let path = "/orders?access_token=secret".into();
    log.write(AuditRecord {
        path,
        ..record("2024-03-02T00:00:01.000Z", "d")
    })
    .await;
    log.flush().await;
    let (day1, day2) = (
        dir.join("audit-2024-03-01.jsonl"),
        dir.join("audit-2024-03-02.jsonl"),
    );
    assert_eq!(
        (ids(&day1), ids(&day2)),
        (vec!["a".into(), "c".into()], vec!["b".into(), "d".into()])
    );
    let text = fs::read_to_string(&day2).unwrap();
    assert!(!text.contains("secret") && text.contains(r#""path":"/orders","#));
    assert_eq!(
        fs::metadata(&day1).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert!(log.healthy().is_ok());
}

#[test]
fn retention_deletes_only_audit_files_older_than_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let today = NaiveDate::from_ymd_opt(2024, 3, 10).unwrap();
    // 2024-03-11: clock skew, a future file. The rest of the second row is not ours.
    let names = "audit-2024-03-10.jsonl audit-2024-03-07.jsonl audit-2024-03-06.jsonl \
        audit-2024-02-01.jsonl audit-2023-12-31.jsonl audit-2024-03-11.jsonl \
        notes.txt audit-2020-01-01.jsonl.gz audit-2020-1-01.jsonl audit-garbage.jsonl \
        xaudit-2020-01-01.jsonl";
    for name in names.split_whitespace() {
        fs::write(dir.join(name), "{}\n").unwrap();
    }
    fs::create_dir(dir.join("audit-2019-01-01.jsonl")).unwrap();
    let names = |paths: Vec<PathBuf>| -> String {
        let mut names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.join(" ")
    };

    let deleted = retention_sweep(dir, 3, today).unwrap();
    assert_eq!(
        names(deleted),
        "audit-2023-12-31.jsonl audit-2024-02-01.jsonl audit-2024-03-06.jsonl"
    );
    let left = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        names(left),
        "audit-2019-01-01.jsonl audit-2020-01-01.jsonl.gz audit-2020-1-01.jsonl \
         audit-2024-03-07.jsonl audit-2024-03-10.jsonl audit-2024-03-11.jsonl \
         audit-garbage.jsonl notes.txt xaudit-2020-01-01.jsonl"
    );
    assert!(retention_sweep(dir, 3, today).unwrap().is_empty());
    // retention 0 keeps only today (and the future).
    assert_eq!(
        names(retention_sweep(dir, 0, today).unwrap()),
        "audit-2024-03-07.jsonl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_keeps_lines_and_recovers_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let log = AuditLog::start(&settings(&dir), &Handle::current()).unwrap();
    let ts = "2024-05-01T10:00:00.000Z";
    log.write(record(ts, "before")).await;
    log.flush().await;
    assert!(log.healthy().is_ok());

    // The directory goes away and a regular file takes its place: unwritable.
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, b"not a directory").unwrap();
    let errors_before = AUDIT_WRITE_ERRORS.get();
    for i in 0..3 {
        log.write(record(ts, &format!("kept-{i}"))).await;
    }
    log.flush().await;
    let reason = log.healthy().unwrap_err();
    // The same directory at start is refused outright.
    assert!(AuditLog::start(&settings(&dir), &Handle::current()).is_err());
    assert!(reason.contains("audit log cannot be written"), "{reason}");
    assert!(!reason.contains("kept-"), "no record content in the reason");
    assert!(AUDIT_WRITE_ERRORS.get() > errors_before);
    log.write(record(ts, "kept-3")).await;

    // Writable again: the once-a-second retry gets there without a flush.
    fs::remove_file(&dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.healthy().is_err() {
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.write(record(ts, "after")).await;
    log.flush().await;
    let ids = ids(&dir.join("audit-2024-05-01.jsonl"));
    assert_eq!(ids, ["kept-0", "kept-1", "kept-2", "kept-3", "after"]);
    assert!(log.healthy().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_50k_records_all_arrive_in_order_per_producer() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(tmp.path()), &Handle::current()).unwrap();
    let producer = |p: usize, log: AuditLog| async move {
        for i in 0..12_500 {
            log.write(record("2024-06-01T12:00:00.000Z", &format!("{p}-{i}")))
                .await;
        }
    };
    let tasks: Vec<_> = (0..4)
        .map(|p| tokio::spawn(producer(p, log.clone())))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    log.flush().await;
    let ids = ids(&tmp.path().join("audit-2024-06-01.jsonl"));
    assert_eq!(ids.len(), 50_000);
    let mut next = [0u32; 4];
    for id in ids {
        let (p, i) = id.split_once('-').unwrap();
        let p: usize = p.parse().unwrap();
        assert_eq!(
            i.parse::<u32>().unwrap(),
            next[p],
            "producer {p} out of order"
        );
        next[p] += 1;
    }
}

#[test]
fn flush_blocking_works_outside_any_runtime() {
    // As in production: the writer on its own runtime, the caller elsewhere.
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&settings(tmp.path()), io.handle()).unwrap();
    futures::executor::block_on(log.write(record("2024-07-01T00:00:00.000Z", "x")));
    log.flush_blocking(Duration::from_secs(5));
    assert_eq!(ids(&tmp.path().join("audit-2024-07-01.jsonl")), ["x"]);
    // A torn last line (crash mid-write) is terminated before the next line.
    let path = tmp.path().join("audit-2024-07-02.jsonl");
    fs::write(&path, "{\"torn\":").unwrap();
    futures::executor::block_on(log.write(record("2024-07-02T00:00:00.000Z", "y")));
    log.flush_blocking(Duration::from_secs(5));
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines()
            .nth(1)
            .map(|l| encode_str(l)["request_id"].clone()),
        Some(json!("y"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_sink_writes_and_stays_healthy() {
    let s = AuditSettings {
        path: AuditPath::Stdout,
        ..settings(Path::new("/"))
    };
    let log = AuditLog::start(&s, &Handle::current()).unwrap();
    log.write(record("2024-01-01T00:00:00.000Z", "stdout-sink-test"))
        .await;
    log.flush().await;
    assert!(log.healthy().is_ok());
}

#[test]
fn hex_lower_matches_the_hex_crate() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(super::hex_lower(&all), hex::encode(&all));
    assert_eq!(super::hex_lower(&[]), "");
}

#[test]
fn a_cached_pseudonym_is_the_same_and_follows_key_rotation() {
    let old = Pseudonymizer::new(Some(b"key-one"));
    let slot = super::PseudonymSlot::new();
    let first = old.subject_cached(&slot, "https://idp", "alice");
    assert_eq!(first, old.subject("https://idp", "alice").into());
    assert!(slot.get().is_some(), "the HMAC is remembered");
    assert_eq!(old.subject_cached(&slot, "https://idp", "alice"), first);
    // After a rotation the slot (filled under the old key) is not used.
    let new = Pseudonymizer::new(Some(b"key-two"));
    let rotated = new.subject_cached(&slot, "https://idp", "alice");
    assert_eq!(rotated, new.subject("https://idp", "alice").into());
    assert_ne!(rotated, first);
}

#[test]
fn timestamps_match_chrono_across_seconds() {
    use chrono::{SecondsFormat, TimeZone, Utc};
    let base = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 58).unwrap();
    for ms in [
        0i64, 1, 9, 10, 99, 100, 999, 1000, 1001, 1999, 2000, 86_400_123,
    ] {
        let t = base + chrono::Duration::milliseconds(ms);
        assert_eq!(
            super::ts_of(t),
            t.to_rfc3339_opts(SecondsFormat::Millis, true),
            "{ms} ms after {base}"
        );
    }
    // Back to an earlier second on the same thread (the cached second is replaced).
    assert_eq!(super::ts_of(base), "2026-12-31T23:59:58.000Z");
}

#[test]
fn the_day_of_a_line_is_its_utc_day() {
    let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    assert_eq!(super::utc_day("2024-05-01T23:59:59.999Z"), day(2024, 5, 1));
    assert_eq!(super::utc_day("2024-02-29T00:00:00Z"), day(2024, 2, 29));
    // Offsets count: these are other UTC days.
    assert_eq!(
        super::utc_day("2024-05-01T23:30:00.000-01:00"),
        day(2024, 5, 2)
    );
    assert_eq!(
        super::utc_day("2024-05-01T00:30:00+02:00"),
        day(2024, 4, 30)
    );
    // Not a date: today.
    let today = Utc::now().date_naive();
    for bad in [
        "2024-13-01T00:00:00.000Z",
        "2023-02-29T00:00:00.000Z",
        "garbage",
        "",
    ] {
        assert!(super::utc_day(bad) >= today, "{bad}");
    }
}
