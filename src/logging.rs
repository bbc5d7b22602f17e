//! Operational logs through `tracing`: a `RUST_LOG`-style filter, `json` or `pretty`
//! output to stderr, and pingora's `log` records routed in. rustls's per-handshake
//! warnings (IP-address SNI, scanners) are kept at error level, and pingora's
//! per-connection handshake failures (scanners, health probes) are off unless asked for
//! with `RUST_LOG=pingora_core::services::listening=error`.

use tracing_subscriber::{fmt, EnvFilter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The default filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,rustls=error,pingora_core::services::listening=off,pingora_core::listeners=warn,pingora_core::protocols=warn,pingora_proxy=warn,h2=warn,hyper=warn";

/// Installs the global subscriber once; later calls do nothing.
pub fn init(format: LogFormat) {
    let _ = tracing_log::LogTracer::init();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
