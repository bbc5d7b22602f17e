//! Every metric gatehouse exports, named once (listed in docs/reference.md, which a test
//! keeps in step with this file).
//!
//! Label values come from configuration (route, upstream, issuer and certificate names)
//! or from fixed lists (`DenyReason`, method buckets, status codes): never from request
//! data, so a token, path or query string cannot reach a label.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Buckets for request and upstream latency, in seconds (0.5 ms to 30 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub static REQUESTS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gatehouse_requests_total",
        "Requests answered, by route, method bucket and status",
        &["route", "method", "status"]
    )
    .expect("metric registers once")
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gatehouse_request_duration_seconds",
        "Time from request headers to the end of the response, by route",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static AUTH_DECISIONS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gatehouse_auth_decisions_total",
        "Authorization decisions, by route, result (allow, deny) and reason",
        &["route", "result", "reason"]
    )
    .expect("metric registers once")
});

pub static DECISION_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gatehouse_decision_cache_hits_total",
        "Decisions answered from the decision cache"
    )
    .expect("metric registers once")
});

pub static DECISION_CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gatehouse_decision_cache_misses_total",
        "Decisions computed because the cache had none"
    )
    .expect("metric registers once")
});

pub static DECISION_CACHE_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "gatehouse_decision_cache_entries",
        "Decisions currently held in the cache"
    )
    .expect("metric registers once")
});

pub static JWKS_REFRESH_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gatehouse_jwks_refresh_total",
        "JWKS fetches, by issuer and result (ok, error)",
        &["issuer", "result"]
    )
    .expect("metric registers once")
});

pub static JWKS_KEYS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gatehouse_jwks_keys",
        "Usable signing keys held, by issuer",
        &["issuer"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_REQUESTS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gatehouse_upstream_requests_total",
        "Requests sent to upstreams, by upstream and status (502/504 when none came back)",
        &["upstream", "status"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "gatehouse_upstream_duration_seconds",
        "Time spent on the upstream, by upstream",
        &["upstream"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static CONFIG_RELOADS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "gatehouse_config_reloads_total",
        "Configuration reloads, by result (ok, error)",
        &["result"]
    )
    .expect("metric registers once")
});

pub static CERT_EXPIRY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "gatehouse_certificate_expiry_timestamp_seconds",
        "notAfter of every certificate loaded, as a Unix timestamp, by certificate name",
        &["name"]
    )
    .expect("metric registers once")
});

pub static AUDIT_WRITE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "gatehouse_audit_write_errors_total",
        "Audit log writes that failed"
    )
    .expect("metric registers once")
});

/// The method label: one of a fixed list, `OTHER` for anything else.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Touch every metric so that `/metrics` lists each family from the start.
pub fn init() {
    // Both results exist from the start, so `increase(...{result="error"}[5m]) > 0` alerts
    // work before the first failure.
    for result in ["ok", "error"] {
        CONFIG_RELOADS_TOTAL.with_label_values(&[result]).inc_by(0);
    }
    LazyLock::force(&REQUESTS_TOTAL);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&AUTH_DECISIONS_TOTAL);
    LazyLock::force(&DECISION_CACHE_HITS);
    LazyLock::force(&DECISION_CACHE_MISSES);
    LazyLock::force(&DECISION_CACHE_ENTRIES);
    LazyLock::force(&JWKS_REFRESH_TOTAL);
    LazyLock::force(&JWKS_KEYS);
    LazyLock::force(&UPSTREAM_REQUESTS_TOTAL);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&CONFIG_RELOADS_TOTAL);
    LazyLock::force(&CERT_EXPIRY);
    LazyLock::force(&AUDIT_WRITE_ERRORS);
}

/// The text exposition of the default registry.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    let _ = encoder.encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_outside_the_list_is_other() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PROPFIND"), "OTHER");
        assert_eq!(method_label("get"), "OTHER");
    }

    #[test]
    fn every_spec_family_is_rendered() {
        init();
        CONFIG_RELOADS_TOTAL.with_label_values(&["ok"]).inc_by(0);
        let text = render();
        for name in [
            "gatehouse_decision_cache_hits_total",
            "gatehouse_decision_cache_misses_total",
            "gatehouse_decision_cache_entries",
            "gatehouse_audit_write_errors_total",
            "gatehouse_config_reloads_total",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
    }
}
