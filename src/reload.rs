//! SIGHUP: load and validate the config file and every file it names, then swap the whole
//! [`Live`] state atomically, or keep the old one and report every error exactly as
//! `gatehouse check` prints them.
//!
//! In-flight requests hold an `Arc` of the state they started with, so they finish under
//! it; the new state carries a new decision cache, so no decision made under the old
//! config answers under the new one. Listener addresses, `threads`, `tls_min_version` and
//! `proxy_protocol` are fixed at start, and so are `audit.path` and `retention_days` (one
//! writer per process) and the `[tracing]` table (one span exporter per process): a change
//! to them is reported as needing a restart. A new `audit.pseudonym_key` applies at once
//! (a rotated Secret): later audit lines carry pseudonyms under the new key.
//!
//! The same reload runs when a watched file changes ([`crate::watch`]): the reloader
//! keeps, for the watcher, every file its last attempt read with the fingerprint the
//! loader took just before reading it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::admin::metrics;
use crate::auth::Authenticator;
use crate::config::{self, ConfigErrors, Runtime, WatchedFile};
use crate::gate::Live;
use crate::proxy::Shared;
use crate::tls::SwappableCert;
use crate::watch;

pub struct Reloader {
    pub path: PathBuf,
    /// The config the process started with: what listeners, threads and audit run on.
    boot: Arc<Runtime>,
    pub shared: Arc<Shared>,
    pub cert: Arc<SwappableCert>,
    pub io: tokio::runtime::Handle,
    generation: AtomicU64,
    lock: Mutex<()>,
    /// Every file the last attempt read (the config first) and how it was just before.
    watched: Mutex<Vec<WatchedFile>>,
    /// Counts reload attempts, for the file watcher.
    attempts: tokio::sync::watch::Sender<u64>,
}

/// Publishes `gatehouse_certificate_expiry_timestamp_seconds` for every loaded certificate.
pub fn publish_certs(rt: &Runtime) {
    metrics::CERT_EXPIRY.reset();
    for c in &rt.certificates {
        metrics::CERT_EXPIRY
            .with_label_values(&[c.name.as_str()])
            .set(c.not_after);
    }
}

/// What differs between the running process (`running`: the config it started with) and
/// the file, among the settings only a restart applies; one line each, both values named.
pub fn needs_restart(running: &Runtime, file: &Runtime) -> Vec<String> {
    fn addr(a: Option<std::net::SocketAddr>) -> String {
        a.map(|a| a.to_string()).unwrap_or_else(|| "off".into())
    }
    let mut v = Vec::new();
    let mut differ = |key: &str, run: String, new: String| {
        if run != new {
            v.push(format!("{key}: running {run}, file says {new}"));
        }
    };
    differ(
        "server.listen",
        running.server.listen.to_string(),
        file.server.listen.to_string(),
    );
    differ(
        "server.redirect_http",
        addr(running.server.redirect_http),
        addr(file.server.redirect_http),
    );
    differ(
        "admin.listen",
        addr(running.admin_listen),
        addr(file.admin_listen),
    );
    differ(
        "server.tls_min_version",
        format!("{:?}", running.server.tls_min),
        format!("{:?}", file.server.tls_min),
    );
    differ(
        "server.max_connections",
        running.server.limits.max_connections.to_string(),
        file.server.limits.max_connections.to_string(),
    );
    differ(
        "server.max_header_bytes",
        running.server.limits.max_header_bytes.to_string(),
        file.server.limits.max_header_bytes.to_string(),
    );
    differ(
        "server.proxy_protocol",
        running.server.proxy_protocol.to_string(),
        file.server.proxy_protocol.to_string(),
    );
    differ(
        "server.threads",
        running.server.threads.to_string(),
        file.server.threads.to_string(),
    );
    differ(
        "audit.path",
        format!("{:?}", running.audit.path),
        format!("{:?}", file.audit.path),
    );
    differ(
        "audit.retention_days",
        running.audit.retention_days.to_string(),
        file.audit.retention_days.to_string(),
    );
    // One exporter per process, started with the data plane: a reload keeps it.
    let tracing = |rt: &Runtime, f: fn(&config::TracingSettings) -> &str| {
        rt.tracing
            .as_ref()
            .map(|t| f(t).to_string())
            .unwrap_or_else(|| "off".into())
    };
    differ(
        "tracing.otlp_endpoint",
        tracing(running, |t| &t.otlp_endpoint),
        tracing(file, |t| &t.otlp_endpoint),
    );
    differ(
        "tracing.service_name",
        tracing(running, |t| &t.service_name),
        tracing(file, |t| &t.service_name),
    );
    v
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        shared: Arc<Shared>,
        cert: Arc<SwappableCert>,
        io: tokio::runtime::Handle,
    ) -> Self {
        let boot = shared.live.load().rt.clone();
        let mut files = boot.files.clone();
        if !files.iter().any(|(p, _)| *p == path) {
            files.insert(0, (path.clone(), watch::fingerprint(&path)));
        }
        Reloader {
            path,
            boot,
            shared,
            cert,
            io,
            generation: AtomicU64::new(1),
            lock: Mutex::new(()),
            watched: Mutex::new(files),
            attempts: tokio::sync::watch::channel(0).0,
        }
    }

    /// The files the last reload attempt read (the config file first), each with its
    /// fingerprint from just before that attempt read it.
    pub fn watched(&self) -> Vec<WatchedFile> {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes after every reload attempt, successful or not.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Records what an attempt read; after a refused one (`keep`) the files watched
    /// before stay watched too.
    fn watch_next(&self, read: Vec<WatchedFile>, keep: bool) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::mem::replace(&mut *watched, read);
        if keep {
            for (p, f) in before {
                if !watched.iter().any(|(q, _)| *q == p) {
                    watched.push((p, f));
                }
            }
        }
    }

    /// Tells the watcher an attempt is over (after the new config is live).
    fn attempted(&self) {
        self.attempts.send_modify(|n| *n += 1);
    }

    /// Reloads once. `Ok` holds the settings that changed but need a restart.
    pub fn reload(&self) -> Result<Vec<String>, ConfigErrors> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (loaded, files) = config::load_naming_files(&self.path);
        let new = match loaded {
            Ok(rt) => {
                self.watch_next(files, false);
                Arc::new(rt)
            }
            Err(e) => {
                // What the broken config tried to read: creating a file it names but is
                // missing retries.
                self.watch_next(files, true);
                metrics::CONFIG_RELOADS_TOTAL
                    .with_label_values(&["error"])
                    .inc();
                for err in &e.0 {
                    tracing::error!(target: "gatehouse::reload", "{err}");
                }
                tracing::error!(target: "gatehouse::reload", errors = e.0.len(), "reload refused; still serving the previous config");
                self.attempted();
                return Err(e);
            }
        };
        let old = self.shared.live.load_full();
        let restart = needs_restart(&self.boot, &new);
        for w in &new.warnings {
            tracing::warn!(target: "gatehouse::reload", "{w}");
        }
        let auth = Arc::new(Authenticator::new(
            new.issuers.clone(),
            self.io.clone(),
            Some(&old.auth),
        ));
        auth.start();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.cert.swap(new.server.cert.clone());
        publish_certs(&new);
        if old.rt.audit.pseudonym_key != new.audit.pseudonym_key {
            // The operator rotated it (a Kubernetes Secret, say): pseudonyms of requests
            // from here on use the new key, as they will in every replica that reloads.
            self.shared
                .audit
                .set_pseudonym_key(new.audit.pseudonym_key.as_deref());
            tracing::info!(target: "gatehouse::reload", "audit.pseudonym_key changed: subject pseudonyms use the new key from now on");
        }
        for gone in old
            .rt
            .issuers
            .iter()
            .filter(|o| !new.issuers.iter().any(|n| n.name == o.name))
        {
            let _ = metrics::JWKS_KEYS.remove_label_values(&[gone.name.as_str()]);
        }
        self.shared.live.store(Arc::new(Live::for_threads(
            new.clone(),
            auth,
            self.boot.server.threads,
        )));
        metrics::CONFIG_RELOADS_TOTAL
            .with_label_values(&["ok"])
            .inc();
        for r in &restart {
            tracing::warn!(target: "gatehouse::reload", setting = %r, "changed in the file but only applies after a restart");
        }
        tracing::info!(target: "gatehouse::reload", generation, routes = new.routes.len(), "config reloaded");
        self.attempted();
        Ok(restart)
    }
}
