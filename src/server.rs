//! Starting and stopping the whole gateway: the pingora HTTPS service, the background
//! runtime (admin and redirect listeners, JWKS refresh, reload, signals) and draining.
//!
//! pingora runs on its own thread with its own runtimes; everything else runs on one
//! small background runtime so that a slow IdP or a metrics scrape never occupies a
//! proxy worker. `serve` and `demo` install OS signal handling; tests drive the same
//! [`Gatehouse`] in-process and stop it with [`Gatehouse::stop`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::{mpsc, watch};

use crate::admin::{self, metrics};
use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::{self, ConfigErrors};
use crate::gate::Live;
use crate::proxy::{Gateway, Shared};
use crate::reload::{self, Reloader};
use crate::tls::{self, SwappableCert};

/// How to start.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    /// Take the listening sockets over from a running gatehouse (pingora's SIGQUIT
    /// hand-over; see the README).
    pub upgrade: bool,
    /// Handle SIGHUP (reload), SIGTERM/SIGINT (drain, exit 0) and SIGQUIT (hand-over).
    pub signals: bool,
    /// How long `start` waits for every issuer's keys before returning (readiness is
    /// reported either way).
    pub wait_ready: Duration,
}

impl Options {
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Options {
            config: config.into(),
            upgrade: false,
            signals: false,
            wait_ready: Duration::from_secs(5),
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
    stop_listeners: watch::Sender<bool>,
    pingora_signal: mpsc::UnboundedSender<ShutdownSignal>,
    pingora_thread: Option<std::thread::JoinHandle<()>>,
}

/// Hands pingora the shutdown requests that gatehouse decides on.
struct ChannelSignal(tokio::sync::Mutex<mpsc::UnboundedReceiver<ShutdownSignal>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        match self.0.lock().await.recv().await {
            Some(s) => s,
            None => ShutdownSignal::FastShutdown,
        }
    }
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

/// Signals that arrived before the tokio handlers existed (while the config loads).
static EARLY_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const HANDLED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

extern "C" fn remember_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    EARLY_SIGNALS.fetch_or(1 << sig, Ordering::SeqCst);
}

/// Call first thing in `serve`: until [`Gatehouse::start`] installs the real handlers, a
/// SIGHUP or SIGTERM must not kill the process with the default action; it is remembered
/// and handled once the gateway runs.
pub fn hold_early_signals() {
    for sig in HANDLED_SIGNALS {
        // SAFETY: installs a handler that only performs an atomic operation.
        unsafe {
            libc::signal(
                sig,
                remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
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
            // SAFETY: raising a signal for this process; its handler is installed.
            unsafe {
                libc::raise(sig);
            }
        }
    }
}

/// Loads the config or returns every error (for `serve`: print and exit 1).
pub fn load(path: &Path) -> Result<config::Runtime, ConfigErrors> {
    config::load(path)
}

impl Gatehouse {
    /// Loads the config and starts everything. Returns once the listeners are bound.
    pub fn start(opts: Options) -> anyhow::Result<Gatehouse> {
        let rt = load(&opts.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        Gatehouse::start_with(rt, opts)
    }

    /// Starts from a config already loaded and validated (`serve` loads it once, so that
    /// a bad file exits 1 and nothing can change between check and start).
    pub fn start_with(rt: config::Runtime, opts: Options) -> anyhow::Result<Gatehouse> {
        let rt = Arc::new(rt);
        for w in &rt.warnings {
            tracing::warn!("{w}");
        }
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
        let auth = Arc::new(Authenticator::new(
            rt.issuers.clone(),
            bg.handle().clone(),
            None,
        ));
        auth.start();
        if rt.audit.pseudonym_key.is_none() {
            tracing::warn!("audit.pseudonym_key is not set: subject pseudonyms use a random per-process key and change at every restart");
        }
        let audit = AuditLog::start(&rt.audit, bg.handle())
            .map_err(|e| anyhow::anyhow!("cannot open the audit log (audit.path): {e}"))?;
        let shared = Shared::new(Live::new(rt.clone(), auth.clone(), 1), audit);
        let cert = SwappableCert::new(rt.server.cert.clone());
        let reloader = Arc::new(Reloader::new(
            opts.config.clone(),
            shared.clone(),
            cert.clone(),
            bg.handle().clone(),
        ));

        // Admin and redirect listeners: bound here so that a port in use fails the start;
        // during a binary upgrade the old process still holds them, so they are bound as
        // soon as it lets go.
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin_addr = match rt.admin_listen {
            Some(addr) => {
                let shared_r = shared.clone();
                let ready: admin::ReadyCheck = Arc::new(move || readiness(&shared_r));
                let shared_s = shared.clone();
                let on_scrape: admin::ScrapeHook = Arc::new(move || {
                    let n = shared_s.live.load().cache.entry_count();
                    metrics::DECISION_CACHE_ENTRIES.set(n as i64);
                });
                let handler = admin::admin_handler(ready, on_scrape);
                Some(listen_plain(
                    &bg,
                    addr,
                    "admin.listen",
                    opts.upgrade,
                    stop_rx.clone(),
                    handler,
                )?)
            }
            None => None,
        };
        let redirect_addr = match rt.server.redirect_http {
            Some(addr) => {
                let handler =
                    admin::redirect_handler(rt.server.listen.port(), rt.server.hsts_max_age_s);
                Some(listen_plain(
                    &bg,
                    addr,
                    "server.redirect_http",
                    opts.upgrade,
                    stop_rx.clone(),
                    handler,
                )?)
            }
            None => None,
        };

        // The HTTPS listener must be free: pingora would only panic on its own thread.
        if !opts.upgrade {
            std::net::TcpListener::bind(rt.server.listen).map_err(|e| {
                anyhow::anyhow!("cannot listen on {} (server.listen): {e}", rt.server.listen)
            })?;
        }

        let conf = ServerConf {
            threads: rt.server.threads,
            // pingora sleeps this long after SIGTERM; gatehouse exits earlier, as soon as
            // the last in-flight request is done (see `drain`).
            // An upper bound only: gatehouse's own drain (which reads the live
            // drain_timeout_s) exits as soon as the last request is done.
            grace_period_seconds: Some(crate::config::MAX_DRAIN_TIMEOUT_S),
            graceful_shutdown_timeout_seconds: Some(1),
            upgrade_sock: upgrade_sock(&opts.config),
            pid_file: std::env::temp_dir()
                .join("gatehouse.pid")
                .display()
                .to_string(),
            ..ServerConf::default()
        };
        let opt = Opt {
            upgrade: opts.upgrade,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);
        server.bootstrap();
        let mut service = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            Gateway {
                shared: shared.clone(),
            },
            "gatehouse",
        );
        let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
            .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
        settings.set_cert_resolver(cert.clone());
        settings.enable_h2();
        service.add_tls_with_settings(&rt.server.listen.to_string(), None, settings);
        server.add_service(service);

        let phases = server.watch_execution_phase();
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let watch = ChannelSignal(tokio::sync::Mutex::new(sig_rx));
        let pingora_thread = std::thread::Builder::new()
            .name("gatehouse-pingora".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(watch),
                })
            })
            .context("cannot start the proxy thread")?;

        wait_listening(rt.server.listen, Duration::from_secs(10))?;
        if let Some(signals) = signals {
            bg.spawn(signal_loop(
                signals,
                reloader.clone(),
                shared.clone(),
                sig_tx.clone(),
                phases,
            ));
        }
        bg.block_on(auth.wait_ready(opts.wait_ready));
        if opts.signals {
            replay_early_signals();
        }
        tracing::info!(
            listen = %rt.server.listen,
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            redirect = %redirect_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            audit = %match &rt.audit.path {
                crate::config::AuditPath::Stdout => "stdout".to_string(),
                crate::config::AuditPath::Dir(d) => d.display().to_string(),
            },
            routes = rt.routes.len(),
            "gatehouse is serving"
        );
        Ok(Gatehouse {
            shared,
            reloader,
            https_addr: rt.server.listen,
            admin_addr,
            redirect_addr,
            bg: Some(bg),
            stop_listeners: stop_tx,
            pingora_signal: sig_tx,
            pingora_thread: Some(pingora_thread),
        })
    }

    /// What SIGHUP does.
    pub fn reload(&self) -> Result<Vec<String>, ConfigErrors> {
        self.reloader.reload()
    }

    /// Blocks until the proxy stops (a signal when started with `signals`).
    pub fn wait(mut self) {
        if let Some(t) = self.pingora_thread.take() {
            let _ = t.join();
        }
        self.shutdown_background();
    }

    /// Stops at once (tests, demo teardown).
    pub fn stop(mut self) {
        let _ = self.pingora_signal.send(ShutdownSignal::FastShutdown);
        if let Some(t) = self.pingora_thread.take() {
            let _ = t.join();
        }
        self.shutdown_background();
    }

    fn shutdown_background(&mut self) {
        if let Some(bg) = &self.bg {
            let audit = self.shared.audit.clone();
            let _ = bg.block_on(async move {
                tokio::time::timeout(Duration::from_secs(5), audit.flush()).await
            });
        }
        let _ = self.stop_listeners.send(true);
        self.shared.live.load().auth.stop();
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
        if self.pingora_thread.is_some() {
            let _ = self.pingora_signal.send(ShutdownSignal::FastShutdown);
            if let Some(t) = self.pingora_thread.take() {
                let _ = t.join();
            }
        }
        self.shutdown_background();
    }
}

/// Binds and serves a plain-HTTP listener on the background runtime. With `upgrade`, a
/// port still held by the old process is retried every 100 ms for a minute.
fn listen_plain<F, Fut>(
    bg: &tokio::runtime::Runtime,
    addr: SocketAddr,
    key: &'static str,
    upgrade: bool,
    stop: watch::Receiver<bool>,
    handler: F,
) -> anyhow::Result<SocketAddr>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    match bg.block_on(admin::bind(addr, key)) {
        Ok(l) => {
            let local = l.local_addr()?;
            bg.spawn(admin::serve_plain(l, stop, handler));
            Ok(local)
        }
        Err(e) if !upgrade => Err(e),
        Err(_) => {
            bg.spawn(async move {
                for _ in 0..600 {
                    if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                        tracing::info!(%addr, key, "listener taken over after upgrade");
                        admin::serve_plain(l, stop, handler).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tracing::error!(%addr, key, "could not bind after the upgrade");
            });
            Ok(addr)
        }
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

struct NoCallbacks;

#[async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}

/// The Unix socket over which pingora hands listening sockets to a new process: one per
/// config file (old and new process must agree; two gateways on one host must not).
fn upgrade_sock(config: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let full = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    full.hash(&mut h);
    let name = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gatehouse".into());
    std::env::temp_dir()
        .join(format!("gatehouse-{name}-{:08x}.sock", h.finish() as u32))
        .display()
        .to_string()
}

fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let target = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    };
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the HTTPS listener on {addr} did not come up within {within:?}")
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
/// most `drain_timeout_s`) and exit 0 as soon as the last one is done; SIGQUIT hands the
/// listening sockets to a new process started with `serve --upgrade`.
async fn signal_loop(
    signals: Signals,
    reloader: Arc<Reloader>,
    shared: Arc<Shared>,
    pingora: mpsc::UnboundedSender<ShutdownSignal>,
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
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
            _ = term.recv() => { drain(&shared, &pingora, drain_timeout_s(&shared), "SIGTERM").await; }
            _ = int.recv() => { drain(&shared, &pingora, drain_timeout_s(&shared), "SIGINT").await; }
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listening sockets to the new process");
                shared.draining.store(true, Ordering::Release);
                let _ = pingora.send(ShutdownSignal::GracefulUpgrade);
                // Keep serving until pingora has sent the sockets and stopped accepting
                // (it gives the new process a few seconds first), then drain.
                let handed_over = async {
                    loop {
                        match phases.recv().await {
                            Ok(ExecutionPhase::ShutdownStarted | ExecutionPhase::ShutdownGracePeriod | ExecutionPhase::Terminated) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                            _ => {}
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), handed_over).await;
                wait_idle(&shared, drain_timeout_s(&shared)).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), shared.audit.flush()).await;
                exit_now();
            }
        }
    }
}

async fn drain(
    shared: &Shared,
    pingora: &mpsc::UnboundedSender<ShutdownSignal>,
    drain_timeout_s: u64,
    sig: &str,
) {
    shared.draining.store(true, Ordering::Release);
    let n = shared.inflight.load(Ordering::Acquire);
    tracing::info!(
        in_flight = n,
        drain_timeout_s,
        "{sig}: no longer accepting; draining"
    );
    let _ = pingora.send(ShutdownSignal::GracefulTerminate);
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
    exit_now();
}

/// True when no request is in flight, false when the timeout came first.
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
        if shared.inflight.load(Ordering::Acquire) == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
