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

use crate::names::Decision;

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

/// Statuses whose request counters are resolved once per route and method (the rest
/// are looked up by label on each request).
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 429, 431, 500, 502, 503, 504,
];
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// One route's metric handles, resolved once (the request counter per method and
/// common status on first use, the duration histogram and the allow counter at load), so
/// that a request does not hash label values or format its status.
pub struct RouteMetrics {
    route: String,
    requests: Vec<std::sync::OnceLock<IntCounter>>,
    duration: prometheus::Histogram,
    allow: IntCounter,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: route.to_string(),
            requests: (0..METHODS.len() * COMMON_STATUSES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            duration: REQUEST_DURATION.with_label_values(&[route]),
            allow: AUTH_DECISIONS_TOTAL.with_label_values(&[route, Decision::Allow.as_str(), ""]),
        }
    }

    /// Counts one request with its method bucket and status, and its duration.
    pub fn request(&self, method: &'static str, status: u16, seconds: f64) {
        let m = METHODS.iter().position(|x| *x == method);
        let st = COMMON_STATUSES.iter().position(|x| *x == status);
        match (m, st) {
            (Some(m), Some(st)) => self.requests[m * COMMON_STATUSES.len() + st]
                .get_or_init(|| {
                    REQUESTS_TOTAL.with_label_values(&[&self.route, method, &status.to_string()])
                })
                .inc(),
            _ => REQUESTS_TOTAL
                .with_label_values(&[&self.route, method, &status.to_string()])
                .inc(),
        }
        self.duration.observe(seconds);
    }

    pub fn allowed(&self) {
        self.allow.inc();
    }
}

/// One upstream's metric handles (see [`RouteMetrics`]).
pub struct UpstreamMetrics {
    upstream: String,
    statuses: Vec<std::sync::OnceLock<IntCounter>>,
    duration: prometheus::Histogram,
}

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> Self {
        UpstreamMetrics {
            upstream: upstream.to_string(),
            statuses: (0..COMMON_STATUSES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            duration: UPSTREAM_DURATION.with_label_values(&[upstream]),
        }
    }

    pub fn request(&self, status: u16, seconds: f64) {
        match COMMON_STATUSES.iter().position(|x| *x == status) {
            Some(i) => self.statuses[i]
                .get_or_init(|| {
                    UPSTREAM_REQUESTS_TOTAL
                        .with_label_values(&[&self.upstream, &status.to_string()])
                })
                .inc(),
            None => UPSTREAM_REQUESTS_TOTAL
                .with_label_values(&[&self.upstream, &status.to_string()])
                .inc(),
        }
        self.duration.observe(seconds);
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
