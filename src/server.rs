//! Starting and stopping the whole gateway: the HTTPS data plane on its own runtime
//! (`server.threads` workers), the background runtime (admin and redirect listeners,
//! JWKS refresh, reload, signals, the audit writer) and draining.
//!
//! Everything but the data plane runs on one small background runtime so that a slow
//! IdP or a metrics scrape never occupies a proxy worker. `serve` and `demo` install OS
//! signal handling; tests drive the same [`Gatehouse`] in-process and stop it with
//! [`Gatehouse::stop`] or by dropping it.
//!
//! Zero-downtime binary upgrade (SIGQUIT) uses Cloudflare's `ecdysis`: the running
//! process starts its own binary again (same path, arguments and folder) with the
//! listening sockets inherited; once the new process is ready (keys loaded) the old one
//! stops accepting, finishes what is in flight and exits 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::admin::{self, metrics};
use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::{self, ConfigErrors};
use crate::gate::Live;
use crate::proxy::Shared;
use crate::reload::{self, Reloader};
use crate::tls::{self, SwappableCert};

/// How to start.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    /// Handle SIGHUP (reload), SIGTERM/SIGINT (drain, exit 0) and SIGQUIT (upgrade).
    pub signals: bool,
    /// How long `start` waits for every issuer's keys before returning (readiness is
    /// reported either way).
    pub wait_ready: Duration,
    /// Written with the process id once serving (and by a new process after an upgrade).
    pub pid_file: Option<PathBuf>,
}

impl Options {
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Options {
            config: config.into(),
            signals: false,
            wait_ready: Duration::from_secs(5),
            pid_file: None,
        }
    }
}

/// A running gateway.
pub struct Gatehouse {
    pub shared: Arc<Shared>,
    pub reloader: Arc<Reloader>,
    pub https_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub redirect_addr: Option<SocketAddr>,
    bg: Option<tokio::runtime::Runtime>,
    proxy: Option<ProxyThreads>,
    /// Stops accepting on the HTTPS listener (drain, upgrade, shutdown).
    stop_https: watch::Sender<bool>,
    /// Stops the admin and redirect listeners (upgrade, shutdown; not a drain, so that
    /// `/readyz` says 503 while draining).
    stop_plain: watch::Sender<bool>,
}

static EXIT_HOOKS: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>> =
    std::sync::Mutex::new(Vec::new());

/// Registers work to do before the process exits after a drain (flush the audit log,
/// remove the demo's files).
pub fn on_exit(f: Box<dyn FnOnce() + Send>) {
    EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).push(f);
}

fn exit_now() -> ! {
    let hooks = std::mem::take(&mut *EXIT_HOOKS.lock().unwrap_or_else(|e| e.into_inner()));
    for h in hooks {
        h();
    }
    std::process::exit(0)
}

/// The data plane: `server.threads` threads, each with its own single-threaded tokio
/// runtime accepting on the shared listening socket (thread per core, as nginx and
/// HAProxy workers do). A connection stays on the thread that accepted it, so a request
/// never crosses threads: no work stealing, no cross-thread wake-ups on the hot path.
struct ProxyThreads {
    threads: Vec<std::thread::JoinHandle<()>>,
    halt: watch::Sender<bool>,
}

impl ProxyThreads {
    fn start(
        n: usize,
        listener: std::net::TcpListener,
        tls: tokio_rustls::TlsAcceptor,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<ProxyThreads> {
        let (halt, halt_rx) = watch::channel(false);
        let limits = shared.live.load().rt.server.limits;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a proxy runtime")?;
            let l = listener
                .try_clone()
                .context("cannot share the HTTPS listener")?;
            let (tls, shared, stop, mut halt, slots) = (
                tls.clone(),
                shared.clone(),
                stop.clone(),
                halt_rx.clone(),
                slots.clone(),
            );
            let t = std::thread::Builder::new()
                .name(format!("gatehouse-proxy-{i}"))
                .spawn(move || {
                    // This thread's own table in the decision caches' front.
                    crate::cache::bind_worker(i);
                    rt.block_on(async move {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => crate::proxy::conn::serve(l, tls, shared, stop, slots).await,
                            Err(e) => tracing::error!(error = %e, "proxy thread cannot listen"),
                        }
                        // Accepting stopped (drain or upgrade); open connections go on as
                        // tasks of this runtime until they end or the gateway halts.
                        while !*halt.borrow() {
                            if halt.changed().await.is_err() {
                                break;
                            }
                        }
                    });
                })
                .context("cannot start a proxy thread")?;
            threads.push(t);
        }
        Ok(ProxyThreads { threads, halt })
    }

    /// Stops every proxy thread at once, dropping open connections.
    fn halt(self) {
        let _ = self.halt.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Signals that arrived before the tokio handlers existed (while the config loads).
static EARLY_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const HANDLED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// Call first thing in `serve`: until [`Gatehouse::start`] installs the real handlers, a
/// SIGHUP or SIGTERM must not kill the process with the default action; it is remembered
/// and handled once the gateway runs.
pub fn hold_early_signals() {
    for sig in HANDLED_SIGNALS {
        // Only an atomic store happens in the handler: async-signal-safe.
        // SAFETY: the closure is async-signal-safe (one atomic operation).
        let _ = unsafe {
            signal_hook::low_level::register(sig, move || {
                EARLY_SIGNALS.fetch_or(1 << sig, Ordering::SeqCst);
            })
        };
    }
}

/// Re-raises what [`hold_early_signals`] remembered, now that the tokio handlers see it.
fn replay_early_signals() {
    let pending = EARLY_SIGNALS.swap(0, Ordering::SeqCst);
    for sig in HANDLED_SIGNALS {
        if pending & (1 << sig) != 0 {
            tracing::info!(
                signal = sig,
                "handling a signal that arrived during start-up"
            );
            let _ = signal_hook::low_level::raise(sig);
        }
    }
}

/// Loads the config or returns every error (for `serve`: print and exit 1).
pub fn load(path: &Path) -> Result<config::Runtime, ConfigErrors> {
    config::load(path)
}

/// Binds a TCP listener, or takes it over from the process that started this one
/// (upgrade). The socket is non-blocking, ready for tokio.
fn listen(
    eco: Option<&ecdysis::Ecdysis>,
    addr: SocketAddr,
    key: &str,
) -> anyhow::Result<std::net::TcpListener> {
    let bind = |s: socket2::Socket, a: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        s.set_reuse_address(true)?;
        s.bind(&a.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    let l = match eco {
        Some(e) => e.build_listen_tcp(addr, bind),
        None => socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .and_then(|s| bind(s, addr)),
    }
    .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Gatehouse {
    /// Loads the config and starts everything. Returns once the listeners are bound.
    pub fn start(opts: Options) -> anyhow::Result<Gatehouse> {
        let rt = load(&opts.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        for w in &rt.warnings {
            tracing::warn!("{w}");
        }
        Gatehouse::start_with(rt, opts)
    }

    /// Starts from a config already loaded and validated (`serve` loads it once, so that
    /// a bad file exits 1 and nothing can change between check and start). The config's
    /// warnings were printed by whoever loaded it.
    pub fn start_with(rt: config::Runtime, opts: Options) -> anyhow::Result<Gatehouse> {
        let rt = Arc::new(rt);
        if !tls::install_provider(rt.server.tls_min)
            && tls::installed_min() != Some(rt.server.tls_min)
        {
            tracing::warn!("a TLS provider was already installed in this process; tls_min_version applies from the next start");
        }
        metrics::init();
        reload::publish_certs(&rt);
        let bg = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gatehouse-bg")
            .enable_all()
            .build()
            .context("cannot start the background runtime")?;
        // Before any listener exists: a SIGTERM or SIGHUP that arrives while starting must
        // be handled (drain / reload), not kill the process with the default action.
        let signals = if opts.signals {
            let _rt = bg.enter();
            Some(Signals::install().context("cannot install signal handlers")?)
        } else {
            None
        };
        // The upgrade manager: only for a process that handles signals (`serve`, `demo`);
        // in a process started by an upgrade it holds the inherited sockets.
        let eco = opts.signals.then(ecdysis::Ecdysis::new);
        let auth = Arc::new(Authenticator::new(
            rt.issuers.clone(),
            bg.handle().clone(),
            None,
        ));
        auth.start();
        let audit = AuditLog::start(&rt.audit, bg.handle())
            .map_err(|e| anyhow::anyhow!("cannot open the audit log (audit.path): {e}"))?;
        let tracing = match &rt.tracing {
            Some(t) => Some(crate::telemetry::Tracing::start(t, bg.handle().clone())?),
            None => None,
        };
        let shared = Shared::with_tracing(Live::new(rt.clone(), auth.clone()), audit, tracing);
        // Freed heap memory back to the OS after waves of closed connections (memory.rs).
        bg.spawn(crate::memory::trim_loop(shared.clone()));
        let cert = SwappableCert::new(rt.server.cert.clone());
        let reloader = Arc::new(Reloader::new(
            opts.config.clone(),
            shared.clone(),
            cert.clone(),
            bg.handle().clone(),
        ));

        let (stop_https, stop_https_rx) = watch::channel(false);
        let (stop_plain, stop_rx) = watch::channel(false);
        let https = listen(eco.as_ref(), rt.server.listen, "server.listen")?;
        let https_addr = https.local_addr()?;
        let admin_addr = match rt.admin_listen {
            Some(addr) => {
                let l = listen(eco.as_ref(), addr, "admin.listen")?;
                let local = l.local_addr()?;
                let shared_r = shared.clone();
                let ready: admin::ReadyCheck = Arc::new(move || readiness(&shared_r));
                let shared_s = shared.clone();
                let on_scrape: admin::ScrapeHook = Arc::new(move || {
                    let n = shared_s.live.load().cache.entry_count();
                    metrics::DECISION_CACHE_ENTRIES.set(n as i64);
                });
                let handler = admin::admin_handler(ready, on_scrape);
                let l = {
                    let _rt = bg.enter();
                    tokio::net::TcpListener::from_std(l)?
                };
                bg.spawn(admin::serve_plain(l, stop_rx.clone(), handler));
                Some(local)
            }
            None => None,
        };
        let redirect_addr = match rt.server.redirect_http {
            Some(addr) => {
                let l = listen(eco.as_ref(), addr, "server.redirect_http")?;
                let local = l.local_addr()?;
                let handler = admin::redirect_handler(https_addr.port());
                let l = {
                    let _rt = bg.enter();
                    tokio::net::TcpListener::from_std(l)?
                };
                bg.spawn(admin::serve_plain(l, stop_rx.clone(), handler));
                Some(local)
            }
            None => None,
        };

        let acceptor = crate::proxy::conn::tls_acceptor(cert.clone(), rt.server.tls_min)?;
        let proxy = ProxyThreads::start(
            rt.server.threads.max(1),
            https,
            acceptor,
            shared.clone(),
            stop_https_rx,
        )?;

        bg.block_on(auth.wait_ready(opts.wait_ready));
        let eco = eco.map(|mut e| {
            if let Some(p) = &opts.pid_file {
                e.set_pid_file(p);
            }
            // Tells the process that started this one (upgrade) to stop accepting; writes
            // the pid file.
            if let Err(err) = e.ready() {
                tracing::warn!(error = %err, "could not signal readiness to the upgrading process");
            }
            Arc::new(Mutex::new(e))
        });
        // Watches the config and the files it names; stops with the admin listeners
        // (shutdown, or an upgrade handing over to the new process).
        bg.spawn(crate::watch::run(
            reloader.clone(),
            shared.clone(),
            stop_plain.subscribe(),
        ));
        if let Some(signals) = signals {
            bg.spawn(signal_loop(
                signals,
                reloader.clone(),
                shared.clone(),
                Stops {
                    https: stop_https.clone(),
                    plain: stop_plain.clone(),
                },
                eco,
            ));
        }
        if opts.signals {
            replay_early_signals();
        }
        tracing::info!(
            listen = %https_addr,
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            redirect = %redirect_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            audit = %match &rt.audit.path {
                crate::config::AuditPath::Stdout => "stdout".to_string(),
                crate::config::AuditPath::Dir(d) => d.display().to_string(),
            },
            routes = rt.routes.len(),
            threads = rt.server.threads,
            traces = %rt.tracing.as_ref().map(|t| t.traces_url.as_str()).unwrap_or("off"),
            "gatehouse is serving"
        );
        Ok(Gatehouse {
            shared,
            reloader,
            https_addr,
            admin_addr,
            redirect_addr,
            bg: Some(bg),
            proxy: Some(proxy),
            stop_https,
            stop_plain,
        })
    }

    /// What SIGHUP does.
    pub fn reload(&self) -> Result<Vec<String>, ConfigErrors> {
        self.reloader.reload()
    }

    /// Blocks until the process exits: with `signals`, SIGTERM/SIGINT drain and exit,
    /// and SIGQUIT hands over and exits. (Without `signals` this never returns.)
    pub fn wait(self) {
        if let Some(bg) = &self.bg {
            bg.block_on(std::future::pending::<()>());
        }
    }

    /// Stops at once (tests, demo teardown): what dropping it does.
    pub fn stop(self) {}

    fn shutdown(&mut self) {
        let _ = self.stop_https.send(true);
        let _ = self.stop_plain.send(true);
        if let Some(proxy) = self.proxy.take() {
            proxy.halt();
        }
        if let Some(bg) = &self.bg {
            let audit = self.shared.audit.clone();
            let _ = bg.block_on(async move {
                tokio::time::timeout(Duration::from_secs(5), audit.flush()).await
            });
        }
        self.shared.live.load().auth.stop();
        // Spans still queued go out now (their exchanges run on the background runtime,
        // which is still up).
        if let Some(t) = &self.shared.tracing {
            t.shutdown(Duration::from_secs(3));
        }
        if let Some(bg) = self.bg.take() {
            bg.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// A handle on the background runtime (tests).
    pub fn io(&self) -> tokio::runtime::Handle {
        self.bg.as_ref().expect("running").handle().clone()
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `/readyz`: config loaded (always, once running), every issuer has keys, the audit
/// log can be written.
fn readiness(shared: &Shared) -> Result<(), String> {
    if shared.draining.load(Ordering::Acquire) {
        return Err("draining: shutting down, no longer accepting".to_string());
    }
    let live = shared.live.load();
    let missing = live.auth.not_ready();
    if !missing.is_empty() {
        return Err(format!(
            "no signing keys yet for issuer(s): {}",
            missing.join(", ")
        ));
    }
    shared
        .audit
        .healthy()
        .map_err(|e| format!("audit log: {e}"))
}

/// The signal streams `serve` handles, registered up front (see [`Gatehouse::start`]).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside a tokio runtime context.
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

/// SIGHUP reloads; SIGTERM and SIGINT stop accepting, wait for in-flight requests (at
/// most `drain_timeout_s`) and exit 0 as soon as the last one is done; SIGQUIT starts the
/// binary again with the listening sockets and, once it is ready, drains and exits.
/// The listeners a signal stops.
struct Stops {
    https: watch::Sender<bool>,
    plain: watch::Sender<bool>,
}

async fn signal_loop(
    signals: Signals,
    reloader: Arc<Reloader>,
    shared: Arc<Shared>,
    stop: Stops,
    eco: Option<Arc<Mutex<ecdysis::Ecdysis>>>,
) {
    // The drain window is read when the signal comes: a reload may have changed it.
    let drain_timeout_s = |shared: &Shared| shared.live.load().rt.server.drain_timeout_s;
    let Signals {
        mut hup,
        mut term,
        mut int,
        mut quit,
    } = signals;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let r = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            }
            _ = term.recv() => { drain(&shared, &stop.https, drain_timeout_s(&shared), "SIGTERM").await; }
            _ = int.recv() => { drain(&shared, &stop.https, drain_timeout_s(&shared), "SIGINT").await; }
            _ = quit.recv() => {
                let Some(eco) = eco.clone() else { continue };
                tracing::info!("SIGQUIT: starting the new binary with the listening sockets");
                let started = tokio::task::spawn_blocking(move || {
                    let e = eco.lock().unwrap_or_else(|e| e.into_inner());
                    e.upgrade().map_err(|err| err.to_string())
                })
                .await;
                match started {
                    Ok(Ok(())) => {
                        tracing::info!("the new process is ready; handing over");
                        // The new process answers admin and redirect requests from now on.
                        let _ = stop.plain.send(true);
                        drain(&shared, &stop.https, drain_timeout_s(&shared), "upgrade").await;
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "upgrade failed; still serving"),
                    Err(e) => tracing::error!(error = %e, "upgrade failed; still serving"),
                }
            }
        }
    }
}

async fn drain(shared: &Shared, stop: &watch::Sender<bool>, drain_timeout_s: u64, why: &str) {
    shared.start_draining();
    let _ = stop.send(true);
    let n = shared.inflight.load(Ordering::Acquire);
    tracing::info!(
        in_flight = n,
        drain_timeout_s,
        "{why}: no longer accepting; draining"
    );
    let done = wait_idle(shared, drain_timeout_s).await;
    if done {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            in_flight = shared.inflight.load(Ordering::Acquire),
            "drain timeout reached; exiting"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), shared.audit.flush()).await;
    if let Some(t) = &shared.tracing {
        // Blocks this worker (not a proxy worker) while the other one runs the export.
        tokio::task::block_in_place(|| t.shutdown(Duration::from_secs(3)));
    }
    exit_now();
}

/// True when no request is in flight and every client connection has closed, false when
/// the timeout came first.
async fn wait_idle(shared: &Shared, timeout_s: u64) -> bool {
    let deadline = Instant::now()
        .checked_add(Duration::from_secs(timeout_s))
        .unwrap_or_else(|| {
            Instant::now() + Duration::from_secs(crate::config::MAX_DRAIN_TIMEOUT_S)
        });
    // Let the listeners close before counting: a request accepted just before the
    // signal must be counted.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while Instant::now() < deadline {
        if shared.inflight.load(Ordering::Acquire) == 0
            && shared.connections.load(Ordering::Acquire) == 0
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGHUP that arrives while `serve` still loads its config must not kill the
    /// process (default action): it is remembered and replayed once the gateway runs.
    #[test]
    fn early_signals_are_held_and_replayed() {
        hold_early_signals();
        // SAFETY: the handler installed above only sets a bit.
        unsafe {
            libc::raise(libc::SIGHUP);
        }
        let pending = EARLY_SIGNALS.load(Ordering::SeqCst);
        assert_ne!(pending & (1 << libc::SIGHUP), 0, "SIGHUP remembered");
        // Still alive here; a replay with the real handler not installed would re-raise
        // into the same remembering handler, so only check that it clears the set.
        replay_early_signals();
        assert_eq!(
            EARLY_SIGNALS.load(Ordering::SeqCst) & (1 << libc::SIGHUP),
            1 << libc::SIGHUP
        );
    }
}
