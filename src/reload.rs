//! SIGHUP: load and validate the config file and every file it names, then swap the whole
//! [`Live`] state atomically, or keep the old one and report every error exactly as
//! `gatehouse check` prints them.
//!
//! In-flight requests hold an `Arc` of the state they started with, so they finish under
//! it; the new state carries a new decision cache, so no decision made under the old
//! config answers under the new one. Listener addresses, `threads`, `tls_min_version` and
//! `proxy_protocol` are fixed at start, and so is the `[audit]` table (one writer and one
//! pseudonym key per process, so that pseudonyms stay comparable) and the `[tracing]` table
//! (one span exporter per process): a change to them is reported as needing a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::admin::metrics;
use crate::auth::Authenticator;
use crate::config::{self, ConfigErrors, Runtime};
use crate::gate::Live;
use crate::proxy::Shared;
use crate::tls::SwappableCert;

pub struct Reloader {
    pub path: PathBuf,
    /// The config the process started with: what listeners, threads and audit run on.
    boot: Arc<Runtime>,
    pub shared: Arc<Shared>,
    pub cert: Arc<SwappableCert>,
    pub io: tokio::runtime::Handle,
    generation: AtomicU64,
    lock: std::sync::Mutex<()>,
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
    if running.audit.pseudonym_key != file.audit.pseudonym_key {
        v.push("audit.pseudonym_key: the file names another key than the one running".to_string());
    }
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
        Reloader {
            path,
            boot,
            shared,
            cert,
            io,
            generation: AtomicU64::new(1),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Reloads once. `Ok` holds the settings that changed but need a restart.
    pub fn reload(&self) -> Result<Vec<String>, ConfigErrors> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let new = match config::load(&self.path) {
            Ok(rt) => Arc::new(rt),
            Err(e) => {
                metrics::CONFIG_RELOADS_TOTAL
                    .with_label_values(&["error"])
                    .inc();
                for err in &e.0 {
                    tracing::error!(target: "gatehouse::reload", "{err}");
                }
                tracing::error!(target: "gatehouse::reload", errors = e.0.len(), "reload refused; still serving the previous config");
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
        for gone in old
            .rt
            .issuers
            .iter()
            .filter(|o| !new.issuers.iter().any(|n| n.name == o.name))
        {
            let _ = metrics::JWKS_KEYS.remove_label_values(&[gone.name.as_str()]);
        }
        self.shared
            .live
            .store(Arc::new(Live::new(new.clone(), auth)));
        metrics::CONFIG_RELOADS_TOTAL
            .with_label_values(&["ok"])
            .inc();
        for r in &restart {
            tracing::warn!(target: "gatehouse::reload", setting = %r, "changed in the file but only applies after a restart");
        }
        tracing::info!(target: "gatehouse::reload", generation, routes = new.routes.len(), "config reloaded");
        Ok(restart)
    }
}
