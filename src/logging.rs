//! Operational logs through `tracing`: a `RUST_LOG`-style filter, `json` or `pretty`
//! output to stderr, and `log` records (ecdysis) routed in.
//!
//! Nothing secret may reach a log, whatever `RUST_LOG` says: the HTTP crates (h2, hyper,
//! hyper-util, reqwest) dump whole request headers (tokens, cookies, query strings) at
//! debug and trace level, so their records below info are dropped by a filter that
//! `RUST_LOG` cannot lift. rustls's per-handshake warnings (IP-address SNI) are kept at
//! error level; failed client handshakes (scanners, health probes) are logged by
//! gatehouse at debug level only.

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The default filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str =
    "info,rustls=error,h2=warn,hyper=warn,hyper_util=warn,ecdysis=warn";

/// Crates whose debug and trace records carry request headers.
const HEADER_DUMPING: &[&str] = &["h2", "hyper", "reqwest", "tower", "tokio_rustls"];

/// Whether a record may be written: false for debug/trace records of the crates above.
pub fn allowed(target: &str, level: &Level) -> bool {
    !(*level > Level::INFO && HEADER_DUMPING.iter().any(|t| target.starts_with(t)))
}

/// The defaults with `RUST_LOG`'s directives after them: `RUST_LOG=gatehouse=debug` raises
/// gatehouse only, and the engine's noise stays down unless `RUST_LOG` names its target.
pub fn filter_directives(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(extra) => format!("{DEFAULT_FILTER},{extra}"),
        None => DEFAULT_FILTER.to_string(),
    }
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init(format: LogFormat) {
    let _ = tracing_log::LogTracer::init();
    let filter = EnvFilter::new(filter_directives(std::env::var("RUST_LOG").ok().as_deref()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let guard = filter_fn(|meta| allowed(meta.target(), meta.level()));
    let _ = match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false)
                    .with_writer(std::io::stderr)
                    .with_filter(guard),
            )
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt::layer()
                    .compact()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr)
                    .with_filter(guard),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_adds_to_the_defaults() {
        let f = filter_directives(Some("gatehouse=debug"));
        assert!(f.starts_with(DEFAULT_FILTER));
        assert!(f.ends_with(",gatehouse=debug"));
        assert_eq!(filter_directives(Some("  ")), DEFAULT_FILTER);
        assert_eq!(filter_directives(None), DEFAULT_FILTER);
    }

    #[test]
    fn engine_debug_records_are_dropped_whatever_the_filter() {
        assert!(!allowed("hyper_util::client::legacy", &Level::DEBUG));
        assert!(!allowed("h2::codec", &Level::TRACE));
        assert!(!allowed("hyper::proto", &Level::DEBUG));
        assert!(allowed("hyper", &Level::WARN));
        assert!(allowed("gatehouse::reload", &Level::DEBUG));
    }
}
