//! The deployment files under deploy/ agree with the code:
//! - every PromQL expression of the Grafana dashboard, the alerting rules and the
//!   Kubernetes PrometheusRule names only metrics gatehouse exports (src/admin/metrics.rs;
//!   a histogram's `_bucket`, `_sum` and `_count` series included), and every exported
//!   metric appears on the dashboard;
//! - the PrometheusRule carries the same alerts as deploy/prometheus/alerts.yml;
//! - the Kubernetes gatehouse.toml loads with certificates and keys where the Deployment
//!   mounts them, and the Deployment's ports, probes and shutdown timing match it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The metric families registered in src/admin/metrics.rs: name -> is a histogram.
fn exported_families() -> BTreeMap<String, bool> {
    let src = read("src/admin/metrics.rs");
    let mut out = BTreeMap::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find("register_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let macro_name = &rest[..end];
        rest = &rest[end..];
        if !rest.starts_with('!') {
            continue; // the `use` list, not a registration
        }
        let open = rest.find('"').expect("a registration names its metric");
        let close = open + 1 + rest[open + 1..].find('"').expect("closing quote");
        let name = &rest[open + 1..close];
        out.insert(name.to_string(), macro_name.contains("histogram"));
        rest = &rest[close..];
    }
    out
}

/// Every series name a query may use: the families, plus `_bucket`/`_sum`/`_count` of the
/// histograms.
fn exported_series() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, histogram) in exported_families() {
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        } else {
            out.insert(name);
        }
    }
    out
}

const FUNCTIONS: &[&str] = &[
    // aggregation operators
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    // functions
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
];
/// Keywords followed by a parenthesised list of label names (not metrics).
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// Index just past the string literal that starts at `i` (quote char at `i`).
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    panic!("unterminated string in query")
}

/// Index just past the bracket group that opens at `i`; strings inside are skipped whole.
fn skip_group(b: &[u8], i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => {
                j = skip_string(b, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    panic!("unbalanced {} in query", open as char)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The metric names a PromQL expression selects. Label matchers `{...}`, ranges `[...]`,
/// strings, numbers and durations, Grafana variables (`$name`), function names and the
/// label lists of `by (...)` and friends are not metric names. An unknown function is an
/// error, so a typo cannot hide a series.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(b, i);
        } else if c == b'{' {
            i = skip_group(b, i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(b, i, b'[', b']');
        } else if c == b'$' {
            i += 1;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // numbers, 1e3, 0x1f, durations such as 5m or 1h30m
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut k = i;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let called = b.get(k) == Some(&b'(');
            // `sum by (le) (...)`: an aggregation whose grouping comes first.
            let next_word: String = expr[k..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let grouped = next_word == "by" || next_word == "without";
            if LABEL_LIST_KEYWORDS.contains(&word) {
                if called {
                    i = skip_group(b, k, b'(', b')');
                }
            } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                // operator or modifier
            } else if called || grouped {
                if !FUNCTIONS.contains(&word) {
                    return Err(format!("unknown function {word}() in: {expr}"));
                }
            } else {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// The `expr` values of a rules file, with their alert names, in file order. Handles the
/// two forms the files use: `expr: <one line>` and `expr: |` followed by a block.
fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        } else if let Some(name) = trimmed.strip_prefix("- record:") {
            alert = name.trim().to_string();
        }
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                out.push((alert.clone(), block.join("\n").trim().to_string()));
            } else {
                let unquoted = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(value);
                out.push((alert.clone(), unquoted.to_string()));
            }
        }
        i += 1;
    }
    out
}

/// Every `expr` in the dashboard's panels, and the series selectors of its template
/// variables (`label_values(SELECTOR, label)`).
fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/gatehouse.json")).expect("dashboard is JSON");
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"]
        .as_array()
        .expect("templating list")
    {
        let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str()) else {
            continue;
        };
        if let Some(inner) = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
        {
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
            out.push(selector.trim().to_string());
        }
    }
    out
}

fn assert_only_exported(source: &str, exprs: &[String]) -> BTreeSet<String> {
    let exported = exported_series();
    let mut used = BTreeSet::new();
    let mut bad = Vec::new();
    for e in exprs {
        let names = metric_names(e).unwrap_or_else(|err| panic!("{source}: {err}"));
        assert!(!names.is_empty(), "{source}: query names no metric: {e}");
        for n in names {
            if !exported.contains(&n) {
                bad.push(format!("{n} (in {e})"));
            }
            used.insert(n);
        }
    }
    assert!(
        bad.is_empty(),
        "{source} names metrics gatehouse does not export:\n  {}\nexported: {exported:?}",
        bad.join("\n  ")
    );
    used
}

#[test]
fn the_metric_name_parser_finds_metrics_and_nothing_else() {
    let e = r#"histogram_quantile(0.99, sum by (le, route) (rate(gatehouse_request_duration_seconds_bucket{job=~"$job",route!="a{b}"}[$__rate_interval])))
        / on (route) group_left sum without (instance) (x_total offset 5m) > bool 1e3 or vector(0) unless absent(y)"#;
    assert_eq!(
        metric_names(e).unwrap(),
        ["gatehouse_request_duration_seconds_bucket", "x_total", "y"]
    );
    assert!(metric_names("rat(gatehouse_requests_total[5m])").is_err());
    assert_eq!(
        metric_names("gatehouse_certificate_expiry_timestamp_seconds - time() < 14 * 86400")
            .unwrap(),
        ["gatehouse_certificate_expiry_timestamp_seconds"]
    );
    let rules = rule_exprs(
        "rules:\n  - alert: A\n    expr: up == 0\n    for: 1m\n  - alert: B\n    expr: |\n      sum(x)\n      > 1\n    labels: {}\n",
    );
    assert_eq!(
        rules,
        [
            ("A".into(), "up == 0".into()),
            ("B".into(), "sum(x)\n> 1".into())
        ]
    );
}

#[test]
fn metrics_rs_parse_matches_what_the_registry_renders() {
    let families = exported_families();
    // SPEC section 4 lists 13 families (hits and misses on one line).
    assert_eq!(families.len(), 13, "{families:?}");
    assert!(families["gatehouse_request_duration_seconds"]);
    assert!(!families["gatehouse_requests_total"]);
    gatehouse::admin::metrics::init();
    let text = gatehouse::admin::metrics::render();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                families.contains_key(name),
                "{name} is exported but the parse of metrics.rs missed it"
            );
            assert_eq!(families[name], kind == "histogram", "{name} is a {kind}");
        }
    }
}

#[test]
fn dashboard_queries_name_only_exported_metrics_and_show_every_one() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 13, "dashboard has {} queries", exprs.len());
    let used = assert_only_exported("deploy/grafana/gatehouse.json", &exprs);
    let missing: Vec<_> = exported_families()
        .into_iter()
        .filter(|(name, histogram)| {
            if *histogram {
                !["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| used.contains(&format!("{name}{s}")))
            } else {
                !used.contains(name)
            }
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows no panel for {missing:?}"
    );
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let alerts = rule_exprs(&read("deploy/prometheus/alerts.yml"));
    assert!(alerts.len() >= 8, "{alerts:?}");
    let names: BTreeSet<_> = alerts.iter().map(|(a, _)| a.as_str()).collect();
    for wanted in [
        "GatehouseCertificateExpiringSoon",
        "GatehouseJwksRefreshFailing",
        "GatehouseNoSigningKeys",
        "GatehouseDenyRateSpike",
        "GatehouseUpstream5xxRatio",
        "GatehouseAuditWriteErrors",
        "GatehouseReloadFailed",
        "GatehouseNotReady",
    ] {
        assert!(names.contains(wanted), "alerts.yml has no {wanted}");
    }
    let exprs: Vec<String> = alerts.into_iter().map(|(_, e)| e).collect();
    assert_only_exported("deploy/prometheus/alerts.yml", &exprs);
}

#[test]
fn prometheus_rule_carries_the_alerts_of_alerts_yml() {
    let alerts = rule_exprs(&read("deploy/prometheus/alerts.yml"));
    let crd = rule_exprs(&read("deploy/kubernetes/base/prometheusrule.yaml"));
    assert_eq!(
        crd, alerts,
        "prometheusrule.yaml differs from alerts.yml: copy alerts.yml's groups under spec"
    );
    let exprs: Vec<String> = crd.into_iter().map(|(_, e)| e).collect();
    assert_only_exported("deploy/kubernetes/base/prometheusrule.yaml", &exprs);
}

/// The first `key: value` after `after` (a line containing it) in a YAML text.
fn yaml_value_after(yaml: &str, after: &str, key: &str) -> String {
    let start = yaml
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in the manifest"));
    yaml[start..]
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} after {after:?}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

#[test]
fn kubernetes_config_loads_where_the_deployment_mounts_it() {
    let deployment = read("deploy/kubernetes/base/deployment.yaml");
    // The mounts the config's relative paths assume.
    for (volume, path) in [
        ("config", "/etc/gatehouse/config"),
        ("tls", "/etc/gatehouse/tls"),
        ("upstream-mtls", "/etc/gatehouse/upstream"),
        ("pseudonym-key", "/etc/gatehouse/secrets"),
    ] {
        assert_eq!(
            yaml_value_after(&deployment, &format!("- name: {volume}\n"), "mountPath"),
            path,
            "volume {volume}"
        );
    }
    assert!(deployment.contains("\"/etc/gatehouse/config/gatehouse.toml\""));

    // Lay the files out as the pod sees them, with a throwaway PKI in the Secrets' places.
    let root = tempfile::tempdir().unwrap();
    let pki = gatehouse::devkit::DevPki::generate().unwrap();
    let put = |rel: &str, text: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put(
        "config/gatehouse.toml",
        &read("deploy/kubernetes/base/gatehouse.toml"),
    );
    put("tls/tls.crt", &pki.server.cert_pem);
    put("tls/tls.key", &pki.server.key_pem);
    put("upstream/ca.crt", &pki.ca.cert_pem);
    put("upstream/tls.crt", &pki.client.cert_pem);
    put("upstream/tls.key", &pki.client.key_pem);
    put(
        "secrets/pseudonym.key",
        "0123456789abcdef0123456789abcdef\n",
    );
    let rt = gatehouse::config::load(&root.path().join("config/gatehouse.toml"))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/base/gatehouse.toml does not load:\n{e}"));

    // Ports: the container ports and probes are the config's listeners.
    let https: u16 = yaml_value_after(&deployment, "- name: https", "containerPort")
        .parse()
        .unwrap();
    let admin: u16 = yaml_value_after(&deployment, "- name: admin", "containerPort")
        .parse()
        .unwrap();
    assert_eq!(rt.server.listen.port(), https);
    let admin_listen = rt
        .admin_listen
        .expect("the Kubernetes config has an admin listener");
    assert_eq!(admin_listen.port(), admin);
    assert!(
        !admin_listen.ip().is_loopback(),
        "probes and scrapes reach the admin listener on the pod address"
    );
    assert_eq!(
        yaml_value_after(&deployment, "readinessProbe:", "path"),
        "/readyz"
    );
    assert_eq!(
        yaml_value_after(&deployment, "livenessProbe:", "path"),
        "/healthz"
    );

    // Shutdown: preStop sleep, then drain_timeout_s, then at least 5 s spare before SIGKILL.
    let grace: u64 = yaml_value_after(&deployment, "spec:", "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let sleep: u64 = yaml_value_after(&deployment, "preStop:", "seconds")
        .parse()
        .unwrap();
    let drain = rt.server.drain_timeout_s;
    assert!(
        grace >= sleep + drain + 5,
        "terminationGracePeriodSeconds {grace} < preStop sleep {sleep} + drain_timeout_s {drain} + 5"
    );
}
