//! The audit log: one JSON line per request that reached a route (fields in docs/reference.md).
//!
//! Data flow:
//!
//! ```text
//! request task: AuditLog::write(rec) / write_now(rec)
//!   the record, boxed (its pseudonym made, or taken from the cached grant)
//!     │  bounded mpsc channel (8192): a full channel makes the request wait, never drops
//!     ▼
//! writer task, on gatehouse's own io runtime (not the request runtime)
//!   cut the query string, serialize to one line, tag it with the record's UTC day
//!   (off the request threads: serialising showed in request profiles)
//!   pending: VecDeque<Line>, the only place an unwritten line lives (≤ 100k lines)
//!     │  consecutive lines of one day, ≤ 64 KiB per write(2)
//!     ▼
//!   stdout (locked)  or  DIR/audit-YYYY-MM-DD.jsonl (append, 0640, one file per UTC day)
//! ```
//!
//! Lines leave `pending` only once the OS has accepted their bytes, so a write error
//! (directory removed, disk full, permission denied) loses nothing: the writer counts
//! the error (`gatehouse_audit_write_errors_total`), reports it through
//! [`AuditLog::healthy`] (and so `/readyz`), keeps queueing, and retries every second.
//! When `pending` is full the writer stops reading the channel, the channel fills, and
//! requests wait for the audit log instead of going unrecorded.
//!
//! There is deliberately no `BufWriter`: the writer's own batch (everything queued while
//! it was busy) is the buffer, written with one syscall. A `BufWriter` that fails holds
//! bytes we can neither retry nor account for; here nothing sits in a user-space buffer,
//! so "flushed at least once a second" holds trivially and `flush()` only has to drain
//! the queue.
//!
//! Record content never reaches `tracing`: errors are logged with the io error, the file
//! and counts only. Tokens and cookies are not fields of [`AuditRecord`] at all.
//!
//! Retention: [`retention_sweep`] runs at start and whenever the UTC day changes.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use crate::admin::metrics::AUDIT_WRITE_ERRORS;
use crate::config::{AuditPath, AuditSettings};
pub use crate::names::Decision;

mod line;

/// Records in flight between requests and the writer.
const CHANNEL_CAPACITY: usize = 8192;
/// Lines the writer keeps while the sink is failing; beyond this, requests wait.
const MAX_PENDING: usize = 100_000;
/// Messages taken from the channel before writing, so a burst cannot starve the timer.
const DRAIN_MAX: usize = 4096;
/// How long the writer lets lines gather before a write (at most this late on disk).
const COALESCE: Duration = Duration::from_millis(5);
/// Room for one serialized line (most are 250 to 400 bytes).
const LINE_CAPACITY: usize = 512;
/// Upper bound of one write(2).
const BATCH_BYTES: usize = 64 * 1024;
/// Retry (and day-change check) period.
const TICK: Duration = Duration::from_secs(1);

/// One line of the audit log. Field names and order are documented in docs/reference.md.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC, millisecond precision (see [`now_ts`]); also picks the day file.
    pub ts: String,
    pub request_id: String,
    /// Shared with the route: a record costs no copy of it.
    pub route: Arc<str>,
    /// A standard method is a static string; only an extension method is copied.
    pub method: Cow<'static, str>,
    /// Never the query string: [`AuditRecord::new`] cuts it and `write` cuts it again.
    pub path: String,
    /// `allow`, `deny` or `public`.
    pub decision: Decision,
    /// Deny reason label; `None` when allowed or public.
    pub reason: Option<&'static str>,
    /// [`Pseudonymizer::subject`]; `None` on public routes.
    pub subject: Option<Arc<str>>,
    pub client_id: Option<String>,
    pub roles: Arc<[String]>,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub duration_ms: u64,
}

impl AuditRecord {
    /// A record stamped now, with the query string cut from `path_and_query`. The rest
    /// starts as a public request with no status yet, for the caller to fill in.
    pub fn new(
        request_id: impl Into<String>,
        route: impl Into<Arc<str>>,
        method: impl Into<Cow<'static, str>>,
        path_and_query: &str,
    ) -> Self {
        AuditRecord {
            ts: now_ts(),
            request_id: request_id.into(),
            route: route.into(),
            method: method.into(),
            path: strip_query(path_and_query).to_string(),
            decision: Decision::Public,
            reason: None,
            subject: None,
            client_id: None,
            roles: Arc::from([]),
            status: 0,
            upstream: None,
            duration_ms: 0,
        }
    }
}

/// Now, as the audit log's `ts`: RFC 3339, UTC, milliseconds, `Z`.
pub fn now_ts() -> String {
    ts_of(Utc::now())
}

/// `t` as the audit log's `ts`. The `YYYY-MM-DDTHH:MM:SS` part is formatted once per
/// second per thread (chrono's formatter showed in request profiles); the milliseconds
/// are appended.
fn ts_of(t: DateTime<Utc>) -> String {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let ms = t.timestamp_subsec_millis();
    if ms > 999 {
        // A leap second: rare enough for the slow path.
        return t.to_rfc3339_opts(SecondsFormat::Millis, true);
    }
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        let secs = t.timestamp();
        if cell.0 != secs {
            cell.1.clear();
            use std::fmt::Write as _;
            let _ = write!(cell.1, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
            cell.0 = secs;
        }
        let mut out = String::with_capacity(cell.1.len() + 5);
        out.push_str(&cell.1);
        let digits = [
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ];
        out.push_str(std::str::from_utf8(&digits).expect("ASCII"));
        out
    })
}

/// The path without its query string (query strings may carry tokens).
pub fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// Turns (`iss`, `sub`) into a stable pseudonym, so auditors can follow one caller
/// without the log holding who it is.
pub struct Pseudonymizer {
    /// The keyed HMAC state, cloned per call so the key is hashed once, not per request.
    mac: Hmac<Sha256>,
    /// Tells this key from the others of the process (see [`Pseudonymizer::subject_cached`]).
    id: u64,
}

/// A caller's pseudonym remembered where the caller is cached (a decision's grant), with
/// the [`Pseudonymizer`] key it was made under: `(key id, lower-case hex of the HMAC)`.
/// Inline, not an `Arc<str>`: a shared string saved a copy of 64 bytes per request but
/// cost every cached caller a heap block (RSS at 100 000 cached tokens 112 → 117 MiB).
pub type PseudonymSlot = std::sync::OnceLock<(u64, [u8; 64])>;

/// Ids of pseudonymizer keys, never reused in a process.
static NEXT_KEY_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Pseudonymizer {
    /// `None`: a random 32-byte key for this process (pseudonyms then change on restart;
    /// the caller warns about that once).
    pub fn new(key: Option<&[u8]>) -> Self {
        let mut random = [0u8; 32];
        let key = match key {
            Some(k) => k,
            None => {
                rand::rngs::OsRng.fill_bytes(&mut random);
                &random[..]
            }
        };
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
        let id = NEXT_KEY_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pseudonymizer { mac, id }
    }

    /// Lower-case hex HMAC-SHA256 over `iss` + "\n" + `sub`.
    pub fn subject(&self, iss: &str, sub: &str) -> String {
        hex_lower(&self.digest(iss, sub))
    }

    /// [`Pseudonymizer::subject`], remembered in `slot` (a cached grant's): a caller
    /// seen again costs no HMAC. A slot filled under another key (the key was rotated
    /// since) is not used; the pseudonym is then made afresh every time.
    pub fn subject_cached(&self, slot: &PseudonymSlot, iss: &str, sub: &str) -> Arc<str> {
        let (id, hex) = slot.get_or_init(|| {
            let mut hex = [0u8; 64];
            hex.copy_from_slice(self.subject(iss, sub).as_bytes());
            (self.id, hex)
        });
        match std::str::from_utf8(hex) {
            Ok(s) if *id == self.id => s.into(),
            _ => self.subject(iss, sub).into(),
        }
    }

    fn digest(&self, iss: &str, sub: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(iss.as_bytes());
        mac.update(b"\n");
        mac.update(sub.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for Pseudonymizer {
    // The key must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer { .. }")
    }
}

/// Lower-case hex of `bytes`, two table lookups a byte (the `hex` crate's iterator showed
/// in request profiles: pseudonyms and request ids are made per request).
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// One serialized record, without its newline, and the UTC day whose file it belongs to.
struct Line {
    day: NaiveDate,
    /// UTF-8 JSON (escaped from `&str` fields); kept as bytes, which is all a file takes.
    text: Vec<u8>,
}

impl Line {
    fn from_record(mut rec: AuditRecord) -> Line {
        // Fields are public, so a caller may have bypassed `AuditRecord::new`.
        let cut = strip_query(&rec.path).len();
        rec.path.truncate(cut);
        let day = utc_day(&rec.ts);
        // A line is about 300 bytes: one allocation, not a few growing ones.
        let mut text = Vec::with_capacity(LINE_CAPACITY);
        line::write(&mut text, &rec);
        Line { day, text }
    }
}

/// The UTC day of an RFC 3339 timestamp; today if it does not parse (the line is still
/// written, just possibly in a neighbouring day's file).
fn utc_day(ts: &str) -> NaiveDate {
    // The usual case, `YYYY-MM-DDT...Z` as `now_ts` writes it, without a full parse.
    let b = ts.as_bytes();
    if b.len() >= 20 && b[b.len() - 1] == b'Z' && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' {
        let num = |r: std::ops::Range<usize>| ts.get(r).and_then(|d| d.parse::<u32>().ok());
        if let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) {
            if let Some(day) = NaiveDate::from_ymd_opt(y as i32, m, d) {
                return day;
            }
        }
    }
    DateTime::parse_from_rfc3339(ts)
        .map(|t| t.with_timezone(&Utc).date_naive())
        .unwrap_or_else(|_| Utc::now().date_naive())
}

enum Msg {
    /// Serialised by the writer task, not on the request's thread.
    Record(Box<AuditRecord>),
    /// Travels in the same channel as lines, so it is answered after every earlier line.
    Flush(oneshot::Sender<()>),
}

/// `None` = healthy, else the reason for `/readyz`. Shared with the writer.
type Health = Arc<Mutex<Option<String>>>;

/// Clone-able handle to the audit log; the writer task stops once every handle is gone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    /// Swapped when a reload brings another `pseudonym_key`.
    pseudonymizer: arc_swap::ArcSwap<Pseudonymizer>,
    health: Health,
}

impl AuditLog {
    /// Starts the writer task on `io` (a tokio runtime handle owned by gatehouse, not the
    /// request runtime). For a directory: creates it if missing and opens today's file,
    /// so an unusable directory fails here instead of on the first request; then sweeps.
    pub fn start(settings: &AuditSettings, io: &tokio::runtime::Handle) -> io::Result<AuditLog> {
        let today = Utc::now().date_naive();
        let (sink, retention) = match &settings.path {
            AuditPath::Stdout => (Sink::Stdout { torn: false }, None),
            AuditPath::Dir(dir) => {
                let mut files = DayFiles {
                    dir: dir.clone(),
                    open: None,
                };
                files.ensure_open(today)?;
                sweep_logged(dir, settings.retention_days, today);
                (
                    Sink::Dir(files),
                    Some((dir.clone(), settings.retention_days)),
                )
            }
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let health: Health = Arc::new(Mutex::new(None));
        let writer = Writer {
            sink,
            pending: VecDeque::new(),
            buf: Vec::with_capacity(BATCH_BYTES),
            health: health.clone(),
            failures: 0,
            full_warned: false,
            retention,
            last_sweep: today,
        };
        io.spawn(writer.run(rx));
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                pseudonymizer: arc_swap::ArcSwap::from_pointee(Pseudonymizer::new(
                    settings.pseudonym_key.as_deref(),
                )),
                health,
            }),
        })
    }

    pub fn pseudonymizer(&self) -> arc_swap::Guard<Arc<Pseudonymizer>> {
        self.inner.pseudonymizer.load()
    }

    /// Uses `key` for the pseudonyms of requests from now on (a reload that brings
    /// another `audit.pseudonym_key`: the operator rotated it). Earlier lines keep theirs.
    pub fn set_pseudonym_key(&self, key: Option<&[u8]>) {
        self.inner
            .pseudonymizer
            .store(Arc::new(Pseudonymizer::new(key)));
    }

    /// Queues one record. Waits for room when the writer is behind: lines are never
    /// dropped silently.
    pub async fn write(&self, rec: AuditRecord) {
        if self
            .inner
            .tx
            .send(Msg::Record(Box::new(rec)))
            .await
            .is_err()
        {
            // Only after the io runtime shut down; loud, since the line is gone.
            AUDIT_WRITE_ERRORS.inc();
            tracing::error!("audit writer is not running; an audit record was not written");
        }
    }

    /// Queues one record from synchronous code (the end of a response body). When the
    /// queue is full the record waits in a task for room: never dropped silently.
    pub fn write_now(&self, rec: AuditRecord) {
        // Serialised by the writer, off the request's thread.
        match self.inner.tx.try_send(Msg::Record(Box::new(rec))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.inner.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(h) => {
                        h.spawn(async move {
                            if tx.send(msg).await.is_err() {
                                AUDIT_WRITE_ERRORS.inc();
                            }
                        });
                    }
                    Err(_) => {
                        AUDIT_WRITE_ERRORS.inc();
                        tracing::error!(
                            "audit queue full outside a runtime; an audit record was not written"
                        );
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                AUDIT_WRITE_ERRORS.inc();
                tracing::error!("audit writer is not running; an audit record was not written");
            }
        }
    }

    /// Ok when the last write (or the start-up directory check) succeeded; Err(reason)
    /// after a write error until a later write succeeds.
    pub fn healthy(&self) -> Result<(), String> {
        if self.inner.tx.is_closed() {
            return Err("audit writer is not running".to_string());
        }
        match &*self.inner.health.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// Waits until the writer has tried to write everything queued before this call.
    /// While the sink is failing that attempt fails and the lines stay queued in memory;
    /// `healthy()` says so. If the backlog is full this waits like `write` does.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// `flush` for exit hooks: needs no runtime context, gives up after `timeout`.
    /// Must not be called on a thread the io runtime needs to run the writer.
    pub fn flush_blocking(&self, timeout: Duration) {
        // Polling rather than `blocking_send`/`blocking_recv`: those panic inside an async
        // context, and exit hooks may run in one.
        let deadline = Instant::now() + timeout;
        let (ack, mut done) = oneshot::channel();
        let mut msg = Msg::Flush(ack);
        loop {
            match self.inner.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(m)) => msg = m,
            }
            if Instant::now() >= deadline {
                return tracing::warn!("audit flush timed out: queue still full");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        while let Err(oneshot::error::TryRecvError::Empty) = done.try_recv() {
            if Instant::now() >= deadline {
                return tracing::warn!("audit flush timed out waiting for the writer");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Deletes `audit-YYYY-MM-DD.jsonl` files in `dir` more than `retention_days` days older
/// than `today` (by the date in the name; files are per UTC day). Returns what it
/// deleted, sorted; other files, and directories with such names, are left alone.
pub fn retention_sweep(
    dir: &Path,
    retention_days: u64,
    today: NaiveDate,
) -> io::Result<Vec<PathBuf>> {
    let mut deleted = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(day) = name.to_str().and_then(day_of_file_name) else {
            continue;
        };
        let age = (today - day).num_days();
        if age <= 0 || age.unsigned_abs() <= retention_days {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => deleted.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // One stubborn file must not keep the others forever; tried again tomorrow.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "audit retention could not delete a file")
            }
        }
    }
    deleted.sort();
    Ok(deleted)
}

fn file_name(day: NaiveDate) -> String {
    format!("audit-{}.jsonl", day.format("%Y-%m-%d"))
}

fn day_of_file_name(name: &str) -> Option<NaiveDate> {
    let date = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    // Only names this module writes (chrono would also accept e.g. unpadded months).
    (file_name(day) == name).then_some(day)
}

fn sweep_logged(dir: &Path, days: u64, today: NaiveDate) {
    match retention_sweep(dir, days, today) {
        Ok(deleted) if !deleted.is_empty() => {
            tracing::info!(files = deleted.len(), dir = %dir.display(), "audit retention deleted old files")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "audit retention sweep failed"),
    }
}

enum Sink {
    /// `torn`: a failed write left part of a line on stdout; start the next with "\n".
    Stdout {
        torn: bool,
    },
    Dir(DayFiles),
}

struct DayFiles {
    dir: PathBuf,
    open: Option<OpenFile>,
}

struct OpenFile {
    day: NaiveDate,
    path: PathBuf,
    file: File,
    /// Identity at open time, to notice the file or directory being removed or replaced:
    /// writes to an unlinked file succeed and vanish, which an audit log must not allow.
    dev: u64,
    ino: u64,
}

impl OpenFile {
    fn open(dir: &Path, day: NaiveDate) -> io::Result<OpenFile> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
        let path = dir.join(file_name(day));
        // read: to look at the last byte below; append: lines never overwrite.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)?;
        let meta = file.metadata()?;
        if meta.len() > 0 {
            // A torn last line (earlier failed write, crash) gets terminated, so the next
            // line is not glued onto it: the fragment stays unparseable, our line does not.
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, meta.len() - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(OpenFile {
            day,
            path,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn still_linked(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl DayFiles {
    fn ensure_open(&mut self, day: NaiveDate) -> io::Result<&mut File> {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.day != day || !o.still_linked())
        {
            self.open = None;
        }
        let open = match self.open.take() {
            Some(open) => open,
            None => OpenFile::open(&self.dir, day)?,
        };
        Ok(&mut self.open.insert(open).file)
    }
}

impl Sink {
    /// Writes whole lines. On error also returns how many bytes the OS accepted, so the
    /// caller knows which lines are done.
    fn write(&mut self, day: NaiveDate, bytes: &[u8]) -> Result<(), (io::Error, usize)> {
        match self {
            Sink::Stdout { torn } => {
                let mut out = io::stdout().lock();
                if *torn {
                    write_counted(&mut out, b"\n").map_err(|(e, _)| (e, 0))?;
                    *torn = false;
                }
                let result = write_counted(&mut out, bytes)
                    .and_then(|()| out.flush().map_err(|e| (e, bytes.len())));
                if let Err((_, n)) = &result {
                    *torn = *n > 0 && bytes[*n - 1] != b'\n';
                }
                result
            }
            Sink::Dir(files) => {
                let file = files.ensure_open(day).map_err(|e| (e, 0))?;
                let result = write_counted(file, bytes);
                if result.is_err() {
                    // Reopen next time: that re-checks the directory and ends a torn line.
                    files.open = None;
                }
                result
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Sink::Stdout { .. } => "stdout".to_string(),
            Sink::Dir(files) => files.dir.display().to_string(),
        }
    }
}

/// `write_all` that reports how far it got.
fn write_counted(w: &mut impl Write, bytes: &[u8]) -> Result<(), (io::Error, usize)> {
    let mut done = 0;
    while done < bytes.len() {
        match w.write(&bytes[done..]) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), done)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, done)),
        }
    }
    Ok(())
}

struct Writer {
    sink: Sink,
    /// Received, not yet accepted by the OS, in arrival order.
    pending: VecDeque<Line>,
    buf: Vec<u8>,
    health: Health,
    /// Consecutive failed attempts; 0 = healthy.
    failures: u64,
    full_warned: bool,
    /// Directory and days, for the sweep whenever the UTC day changes.
    retention: Option<(PathBuf, u64)>,
    last_sweep: NaiveDate,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            tokio::select! {
                // A full backlog stops reading: the channel fills and requests wait.
                msg = rx.recv(), if self.pending.len() < MAX_PENDING => {
                    let Some(msg) = msg else { break };
                    self.take(msg, &mut acks);
                    // Under load, let lines gather for a moment so that many go out in
                    // one write and request threads do not wake this task per line (a
                    // sender only wakes a receiver that waits in `recv`). A flush is
                    // answered at once.
                    if acks.is_empty() && self.failures == 0 {
                        tokio::time::sleep(COALESCE).await;
                    }
                    // Take what else is queued so a burst becomes a few large writes.
                    for _ in 0..DRAIN_MAX {
                        if self.pending.len() >= MAX_PENDING {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(msg) => self.take(msg, &mut acks),
                            Err(_) => break,
                        }
                    }
                    // While failing, new lines wait for the once-a-second retry (a flush
                    // forces an attempt), rather than hammering a broken disk per request.
                    if self.failures == 0 || !acks.is_empty() {
                        self.write_pending();
                    }
                    for ack in acks.drain(..) {
                        let _ = ack.send(()); // the flusher may have given up: fine
                    }
                    if self.pending.len() >= MAX_PENDING && !self.full_warned {
                        self.full_warned = true;
                        tracing::error!("audit backlog full; requests now wait for the audit log");
                    }
                }
                _ = tick.tick() => {
                    if !self.pending.is_empty() {
                        self.write_pending();
                    }
                    self.sweep_on_new_day();
                }
            }
        }
        // Every handle is gone: last attempt, and say so if lines remain.
        self.write_pending();
        if !self.pending.is_empty() {
            tracing::error!(
                lines = self.pending.len(),
                "audit writer stopped with lines it could not write"
            );
        }
    }

    fn take(&mut self, msg: Msg, acks: &mut Vec<oneshot::Sender<()>>) {
        match msg {
            Msg::Record(rec) => self.pending.push_back(Line::from_record(*rec)),
            Msg::Flush(ack) => acks.push(ack),
        }
    }

    /// Writes `pending` front to back in batches; stops at the first error.
    fn write_pending(&mut self) {
        while let Some(first) = self.pending.front() {
            let day = first.day;
            self.buf.clear();
            let mut lines = 0;
            for line in &self.pending {
                if line.day != day || (lines > 0 && self.buf.len() + line.text.len() >= BATCH_BYTES)
                {
                    break;
                }
                self.buf.extend_from_slice(&line.text);
                self.buf.push(b'\n');
                lines += 1;
            }
            match self.sink.write(day, &self.buf) {
                Ok(()) => drop(self.pending.drain(..lines)),
                Err((err, written)) => {
                    // Lines the OS took whole are done; a torn one is written again whole.
                    let done = self.buf[..written].iter().filter(|&&b| b == b'\n').count();
                    self.pending.drain(..done);
                    self.failed(&err);
                    return;
                }
            }
        }
        self.recovered();
    }

    fn failed(&mut self, err: &io::Error) {
        AUDIT_WRITE_ERRORS.inc();
        self.failures += 1;
        let target = self.sink.describe();
        // The io error and the target only: never record content.
        if self.failures == 1 {
            tracing::error!(target_path = %target, error = %err, backlog = self.pending.len(),
                "audit log write failed; keeping lines in memory, retrying every second");
        } else if self.failures % 60 == 0 {
            tracing::error!(target_path = %target, error = %err, backlog = self.pending.len(),
                attempts = self.failures, "audit log still cannot be written");
        }
        let reason = format!("audit log cannot be written to {target}: {err}");
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn recovered(&mut self) {
        if self.failures == 0 {
            return;
        }
        tracing::warn!(
            failed_attempts = self.failures,
            "audit log writable again; kept lines written"
        );
        self.failures = 0;
        self.full_warned = false;
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn sweep_on_new_day(&mut self) {
        let today = Utc::now().date_naive();
        if let Some((dir, days)) = self.retention.as_ref().filter(|_| today != self.last_sweep) {
            sweep_logged(dir, *days, today);
            self.last_sweep = today;
        }
    }
}

#[cfg(test)]
mod tests;
