//! The user docs stay true to the code: `docs/configuration.md` lists exactly the keys the
//! config schema accepts, with the right reload/restart column; `docs/reference.md` lists
//! every metric, deny reason, problem type, audit field and command; the README points
//! only at files a user of this repository has.
//!
//! Every list compared here is derived from the code, not copied into this file: the
//! config keys from serde's own field lists (each table is probed with an unknown key and
//! `deny_unknown_fields` names the accepted ones), the metrics from `src/admin/metrics.rs`,
//! the commands from the binary's `--help`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gatehouse::audit::AuditRecord;
use gatehouse::auth::DenyReason;
use gatehouse::config::raw::RawConfig;
use gatehouse::devkit::DevPki;
use gatehouse::proxy::problem::Problem;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Markdown tables

/// The table rows (cells trimmed, header and separator rows dropped) under the heading
/// `heading` (any level), up to the next heading. Empty when the heading is absent.
fn rows(md: &str, heading: &str) -> Vec<Vec<String>> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in md.lines() {
        if line.starts_with('#') {
            inside = line.trim_start_matches('#').trim() == heading;
            continue;
        }
        if !inside || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<String> = split_row(line);
        // A separator row follows the header row: drop both.
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            out.pop();
            continue;
        }
        out.push(cells);
    }
    out
}

/// Cells of one table row; `\|` is a literal bar inside a cell.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// `` `x` `` → `x`.
fn code(cell: &str) -> String {
    cell.trim().trim_matches('`').to_string()
}

/// Every row of every table in `md` whose first cell is a code span, keyed by that span.
fn keyed_rows(md: &str, headings: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for h in headings {
        for r in rows(md, h) {
            let key = code(&r[0]);
            assert!(
                out.insert(key.clone(), r).is_none(),
                "{key} is documented twice"
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The config schema, from serde

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `key = { ... }` / `[key]`
    Table,
    /// `key = [{ ... }]` / `[[key]]`
    Array,
    /// `key = { NAME = { ... } }` / `[key.NAME]`
    Map,
}

/// The fields serde accepts in the table at `path`, or `None` when `path` is no table:
/// a document with an unknown key there is parsed, and `deny_unknown_fields` answers
/// "unknown field `zz_probe`, expected one of `a`, `b`".
fn fields_at(path: &[(String, Shape)]) -> Option<Vec<String>> {
    let mut doc = "{ zz_probe = 1 }".to_string();
    for (i, (name, shape)) in path.iter().enumerate().rev() {
        let value = match shape {
            Shape::Table => doc.clone(),
            Shape::Array => format!("[{doc}]"),
            Shape::Map => format!("{{ zz_name = {doc} }}"),
        };
        doc = if i == 0 {
            format!("{name} = {value}")
        } else {
            format!("{{ {name} = {value} }}")
        };
    }
    if path.is_empty() {
        doc = "zz_probe = 1".to_string();
    }
    let err = toml::from_str::<RawConfig>(&doc).expect_err("a probe never parses");
    let msg = err.message();
    let rest = msg.strip_prefix("unknown field `zz_probe`, ")?;
    if rest.starts_with("there are no fields") {
        return Some(Vec::new());
    }
    // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    assert!(
        rest.starts_with("expected "),
        "unexpected serde message {msg:?}"
    );
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every leaf key the config file accepts, spelt as in the docs: `server.listen`,
/// `issuers.<name>.issuer`, `routes[].row_filters[].header`.
fn schema_keys() -> BTreeSet<String> {
    fn walk(path: &mut Vec<(String, Shape)>, prefix: &str, out: &mut BTreeSet<String>) {
        let fields = fields_at(path).expect("path is a table");
        assert!(!fields.is_empty(), "{prefix}: a table without fields");
        for f in fields {
            let mut nested = false;
            for shape in [Shape::Table, Shape::Array, Shape::Map] {
                path.push((f.clone(), shape));
                if fields_at(path).is_some() {
                    let child = match shape {
                        Shape::Table => format!("{prefix}{f}."),
                        Shape::Array => format!("{prefix}{f}[]."),
                        Shape::Map => format!("{prefix}{f}.<name>."),
                    };
                    walk(path, &child, out);
                    nested = true;
                }
                path.pop();
                if nested {
                    break;
                }
            }
            if !nested {
                out.insert(format!("{prefix}{f}"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&mut Vec::new(), "", &mut out);
    out
}

#[test]
fn the_schema_probe_sees_nested_tables() {
    let keys = schema_keys();
    for k in [
        "server.listen",
        "admin.listen",
        "audit.pseudonym_key",
        "issuers.<name>.introspection.client_secret",
        "roles.<name>.groups",
        "upstreams.<name>.addrs",
        "routes[].name",
        "routes[].row_filters[].except_roles",
    ] {
        assert!(keys.contains(k), "{k} not found by the probe: {keys:?}");
    }
    assert!(!keys.contains("server"), "tables are not leaves");
}

const CONFIG_SECTIONS: &[&str] = &[
    "`[server]` (required)",
    "`[admin]` (optional)",
    "`[audit]` (optional)",
    "`[cache]` (optional)",
    "`[tracing]` (optional)",
    "`[issuers.<name>]` (one table per trusted token issuer)",
    "`[roles.<name>]` (optional, one table per role)",
    "`[upstreams.<name>]` (one table per backend)",
    "`[[routes]]` (in order; the first match wins)",
];

fn config_doc() -> BTreeMap<String, Vec<String>> {
    keyed_rows(&read("docs/configuration.md"), CONFIG_SECTIONS)
}

#[test]
fn configuration_doc_lists_exactly_the_schema_keys() {
    let doc = config_doc();
    let documented: BTreeSet<String> = doc.keys().cloned().collect();
    let schema = schema_keys();
    let undocumented: Vec<_> = schema.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&schema).collect();
    assert!(
        undocumented.is_empty(),
        "keys the config accepts but docs/configuration.md does not list: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys docs/configuration.md lists but the config refuses: {unknown:?}"
    );
    for (key, row) in &doc {
        assert_eq!(
            row.len(),
            5,
            "{key}: a row is | key | type | default | applied | meaning |"
        );
        assert!(
            row.iter().all(|c| !c.is_empty()),
            "{key}: every cell is filled: {row:?}"
        );
        assert!(
            row[3] == "reload" || row[3] == "restart",
            "{key}: applied is reload or restart, not {:?}",
            row[3]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reload or restart, as `reload::needs_restart` decides

/// A config with every key of the single tables set, and one changed value per key.
struct Base {
    dir: tempfile::TempDir,
    tables: Vec<(&'static str, Vec<(&'static str, &'static str)>)>,
}

impl Base {
    fn new() -> Base {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::generate().unwrap();
        pki.write_to(dir.path()).unwrap();
        pki.write_to(&dir.path().join("other")).unwrap();
        // `other/server.*` is the same pair under another path: a change that loads.
        std::fs::copy(
            dir.path().join("server.crt"),
            dir.path().join("other/server.crt"),
        )
        .unwrap();
        std::fs::copy(
            dir.path().join("server.key"),
            dir.path().join("other/server.key"),
        )
        .unwrap();
        std::fs::write(dir.path().join("pseudonym.key"), [b'a'; 32]).unwrap();
        std::fs::write(dir.path().join("pseudonym2.key"), [b'b'; 32]).unwrap();
        let tables = vec![
            (
                "server",
                vec![
                    ("listen", "\"127.0.0.1:18443\""),
                    ("redirect_http", "\"127.0.0.1:18080\""),
                    ("cert", "\"server.crt\""),
                    ("key", "\"server.key\""),
                    ("tls_min_version", "\"1.2\""),
                    ("hsts_max_age_s", "100"),
                    ("threads", "1"),
                    ("drain_timeout_s", "20"),
                    ("max_connections", "10000"),
                    ("header_read_timeout_ms", "10000"),
                    ("idle_timeout_s", "60"),
                    ("max_header_bytes", "32768"),
                    ("trusted_proxies", "[]"),
                    ("proxy_protocol", "false"),
                    ("watch_files", "true"),
                ],
            ),
            ("admin", vec![("listen", "\"127.0.0.1:19900\"")]),
            (
                "audit",
                vec![
                    ("path", "\"audit\""),
                    ("retention_days", "90"),
                    ("pseudonym_key", "{ file = \"pseudonym.key\" }"),
                ],
            ),
            ("cache", vec![("max_entries", "1000"), ("ttl_s", "300")]),
            (
                "tracing",
                vec![
                    ("otlp_endpoint", "\"http://127.0.0.1:4318\""),
                    ("service_name", "\"gatehouse\""),
                ],
            ),
        ];
        Base { dir, tables }
    }

    /// Another value for `key` (`table.field`) that still loads.
    fn variant(key: &str) -> Option<&'static str> {
        Some(match key {
            "server.listen" => "\"127.0.0.1:18444\"",
            "server.redirect_http" => "\"127.0.0.1:18081\"",
            "server.cert" => "\"other/server.crt\"",
            "server.key" => "\"other/server.key\"",
            "server.tls_min_version" => "\"1.3\"",
            "server.hsts_max_age_s" => "0",
            "server.threads" => "2",
            "server.drain_timeout_s" => "30",
            "server.max_connections" => "500",
            "server.header_read_timeout_ms" => "5000",
            "server.idle_timeout_s" => "30",
            "server.max_header_bytes" => "65536",
            "server.trusted_proxies" => "[\"10.0.0.0/8\"]",
            "server.proxy_protocol" => "true",
            "server.watch_files" => "false",
            "admin.listen" => "\"127.0.0.1:19901\"",
            "audit.path" => "\"audit2\"",
            "audit.retention_days" => "30",
            "audit.pseudonym_key" => "{ file = \"pseudonym2.key\" }",
            "cache.max_entries" => "10",
            "cache.ttl_s" => "0",
            "tracing.otlp_endpoint" => "\"https://collector.example:4318/otel\"",
            "tracing.service_name" => "\"edge-gateway\"",
            _ => return None,
        })
    }

    fn load(&self, changed: Option<(&str, &str)>) -> gatehouse::config::Runtime {
        let mut s = String::new();
        for (table, keys) in &self.tables {
            s.push_str(&format!("[{table}]\n"));
            for (k, v) in keys {
                let full = format!("{table}.{k}");
                let v = match changed {
                    Some((key, new)) if key == full => new,
                    _ => v,
                };
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        let path = self.dir.path().join("gatehouse.toml");
        std::fs::write(&path, s).unwrap();
        gatehouse::config::load(&path).unwrap_or_else(|e| panic!("{changed:?}: {e}"))
    }

    fn keys(&self) -> BTreeSet<String> {
        self.tables
            .iter()
            .flat_map(|(t, ks)| ks.iter().map(move |(k, _)| format!("{t}.{k}")))
            .collect()
    }
}

#[test]
fn reload_or_restart_is_what_the_reloader_does() {
    let doc = config_doc();
    let base = Base::new();
    let single: Vec<&String> = doc
        .keys()
        .filter(|k| {
            ["server.", "admin.", "audit.", "cache.", "tracing."]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    // Every key of the single tables takes part, so a new one needs a variant here.
    let covered = base.keys();
    for k in &single {
        assert!(
            covered.contains(*k) && Base::variant(k).is_some(),
            "{k}: add it to Base (a value and a variant) so its reload behaviour is tested"
        );
    }
    let running = base.load(None);
    for k in single {
        let file = base.load(Some((k, Base::variant(k).unwrap())));
        let restart = gatehouse::reload::needs_restart(&running, &file);
        let named: Vec<&String> = restart
            .iter()
            .filter(|l| l.starts_with(&format!("{k}:")))
            .collect();
        assert_eq!(
            restart.len(),
            named.len(),
            "{k}: changing it reports other keys: {restart:?}"
        );
        match doc[k][3].as_str() {
            "restart" => assert_eq!(
                named.len(),
                1,
                "{k} is documented restart, but a reload applies it"
            ),
            _ => assert!(
                named.is_empty(),
                "{k} is documented reload, but a reload reports it needs a restart: {restart:?}"
            ),
        }
    }
    // Keys in the per-name tables and routes are all applied by a reload.
    for (k, row) in &doc {
        if !["server.", "admin.", "audit.", "cache.", "tracing."]
            .iter()
            .any(|p| k.starts_with(p))
        {
            assert_eq!(row[3], "reload", "{k}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// docs/reference.md

fn reference() -> String {
    read("docs/reference.md")
}

/// (name, type, labels) of every metric registered in `src/admin/metrics.rs`.
fn metrics_in_source() -> Vec<(String, &'static str, Vec<String>)> {
    let src = read("src/admin/metrics.rs");
    let mut out = Vec::new();
    for chunk in src.split("register_").skip(1) {
        let Some((mac, rest)) = chunk.split_once("!(") else {
            continue;
        };
        if !mac.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let literals: Vec<&str> = rest.split('"').skip(1).step_by(2).collect();
        let name = literals[0].to_string();
        let kind = if mac.contains("histogram") {
            "histogram"
        } else if mac.contains("gauge") {
            "gauge"
        } else {
            "counter"
        };
        let labels = if mac.ends_with("_vec") {
            // After the name and the help text: `&["a", "b"]`.
            let after_help = rest.splitn(5, '"').nth(4).unwrap();
            let list = &after_help[after_help.find("&[").unwrap() + 2..];
            let list = &list[..list.find(']').unwrap()];
            list.split(',')
                .map(|l| l.trim().trim_matches('"').to_string())
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        out.push((name, kind, labels));
    }
    let statics = src.matches("LazyLock<").count();
    assert_eq!(out.len(), statics, "one register_*! per metric static");
    for lit in src.split('"').skip(1).step_by(2) {
        if lit.starts_with("gatehouse_") {
            assert!(
                out.iter().any(|(n, _, _)| n == lit),
                "{lit} is named in metrics.rs but not registered"
            );
        }
    }
    out
}

#[test]
fn every_metric_is_documented_with_type_and_labels() {
    let doc = keyed_rows(&reference(), &["Metrics"]);
    let source = metrics_in_source();
    assert!(source.len() >= 13, "{source:?}");
    for (name, kind, labels) in &source {
        let row = doc
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not documented in docs/reference.md"));
        assert_eq!(row[1], *kind, "{name}: type");
        let documented: Vec<String> = row[2]
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(&documented, labels, "{name}: labels");
        assert!(!row[3].is_empty(), "{name}: meaning");
    }
    for name in doc.keys() {
        assert!(
            source.iter().any(|(n, _, _)| n == name),
            "{name} is documented but not exported"
        );
    }
}

#[test]
fn every_deny_reason_is_documented_with_its_status() {
    let doc = keyed_rows(&reference(), &["Deny reasons"]);
    assert_eq!(doc.len(), DenyReason::ALL.len(), "{:?}", doc.keys());
    for r in DenyReason::ALL {
        let row = doc
            .get(r.as_str())
            .unwrap_or_else(|| panic!("{r} is not documented in docs/reference.md"));
        assert_eq!(row[1], r.status().to_string(), "{r}: status");
    }
}

/// `(kind, status)` of every `Problem::new(STATUS, "kind", ...)` in the sources; status
/// `None` when it is not a literal.
fn problem_kinds_in_source() -> Vec<(String, Option<u16>, PathBuf)> {
    fn visit(dir: &Path, out: &mut Vec<(String, Option<u16>, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                visit(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let src = std::fs::read_to_string(&p).unwrap();
                for call in src.split("Problem::new(").skip(1) {
                    let (status, rest) = call.split_once(',').unwrap();
                    let kind = rest.split('"').nth(1).unwrap().to_string();
                    out.push((kind, status.trim().parse().ok(), p.clone()));
                }
            }
        }
    }
    let mut out = Vec::new();
    visit(&repo().join("src"), &mut out);
    out
}

#[test]
fn every_problem_type_is_documented_with_its_status() {
    let doc = keyed_rows(&reference(), &["Responses gatehouse makes itself"]);
    let status_of = |uri: &str| -> String {
        doc.get(uri)
            .unwrap_or_else(|| panic!("{uri} is not documented in docs/reference.md"))[1]
            .clone()
    };
    for p in [
        Problem::not_found(),
        Problem::bad_path("x"),
        Problem::bad_gateway("x"),
        Problem::gateway_timeout("x"),
    ] {
        assert_eq!(status_of(&p.type_uri()), p.status.to_string());
    }
    let found = problem_kinds_in_source();
    assert!(found.len() >= 4, "{found:?}");
    for (kind, status, file) in found {
        let documented = status_of(&format!("urn:gatehouse:problem:{kind}"));
        if let Some(s) = status {
            assert_eq!(documented, s.to_string(), "{kind} ({})", file.display());
        }
    }
    // A denial's type is its reason.
    assert!(doc.contains_key("urn:gatehouse:problem:REASON"));
    let e = gatehouse::auth::AuthError::new(DenyReason::Expired, "x");
    assert_eq!(
        Problem::from_auth(&e).type_uri(),
        "urn:gatehouse:problem:expired"
    );
}

#[test]
fn every_audit_field_is_documented_in_order() {
    let rec = AuditRecord::new("r1", "route", "GET", "/p?q=1");
    let json = serde_json::to_string(&rec).unwrap();
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).unwrap();
    let mut fields: Vec<&String> = obj.keys().collect();
    fields.sort_by_key(|k| json.find(&format!("\"{k}\":")).unwrap());
    let documented: Vec<String> = rows(&reference(), "Audit log")
        .iter()
        .map(|r| code(&r[0]))
        .collect();
    let fields: Vec<String> = fields.into_iter().cloned().collect();
    assert_eq!(documented, fields);
}

#[test]
fn every_command_is_documented() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: BTreeSet<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(commands.len() >= 6, "{help}");
    let doc: BTreeSet<String> = keyed_rows(&reference(), &["Command line"])
        .into_keys()
        .collect();
    assert_eq!(doc, commands);
    let codes: BTreeSet<String> = rows(&reference(), "Exit codes")
        .iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(codes, ["0", "1", "2", "3"].map(String::from).into());
    let signals = rows(&reference(), "Signals (`serve`)");
    for sig in ["SIGHUP", "SIGTERM", "SIGINT", "SIGQUIT"] {
        assert!(
            signals.iter().any(|r| r[0].contains(sig)),
            "{sig} is not documented"
        );
    }
}

// ---------------------------------------------------------------------------------------
// README and docs are self-contained

#[test]
fn readme_and_docs_point_only_at_files_of_this_repository() {
    let readme = read("README.md");
    assert!(readme.contains("(docs/configuration.md)"));
    assert!(readme.contains("(docs/reference.md)"));
    let mut files = vec![("README.md".to_string(), readme)];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            let rel = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
            files.push((rel.clone(), read(&rel)));
        }
    }
    for (name, text) in &files {
        for banned in ["SPEC.md", "steering", "../shared"] {
            assert!(!text.contains(banned), "{name} mentions {banned:?}");
        }
        // Every relative Markdown link resolves inside the repository.
        let base = repo().join(name);
        let base = base.parent().unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap();
            let target = target.split('#').next().unwrap();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            assert!(
                base.join(target).exists(),
                "{name} links to {target}, which does not exist"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// CI

#[test]
fn ci_checks_style_after_the_build_and_before_the_tests() {
    let ci = read(".ci/run");
    let at = |cmd: &str| {
        ci.lines()
            .position(|l| l.trim() == cmd)
            .unwrap_or_else(|| panic!(".ci/run does not run `{cmd}`"))
    };
    let build = at("cargo build --locked --all-targets");
    let fmt = at("cargo fmt --check");
    let clippy = at("cargo clippy --all-targets --locked -- -D warnings");
    let test = ci
        .lines()
        .position(|l| l.trim_start().starts_with("cargo test"))
        .expect(".ci/run runs the tests");
    assert!(build < fmt && fmt < clippy && clippy < test, "{ci}");
}
