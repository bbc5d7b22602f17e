//! `gatehouse matrix`: golden outputs (csv, md, text) for a config with every cell kind
//! and finding, the committed security plan of the example config, exit codes, and the
//! agreement of every matrix cell with a real request through the running gateway.
//!
//! Regenerate golden files and `docs/security-plan.md`: `GATEHOUSE_BLESS=1 cargo test
//! --test matrix`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use gatehouse::devkit::{jwks, DevPki, KeyAlg, SigningKey};
use gatehouse::matrix::{self, Access, Decision, FindingKind, Format, AUTHENTICATED};
use serde_json::{json, Value};

const GOLDEN_CONFIG: &str = "tests/golden/matrix.toml";
const POLICY_MARKER: &str = "# --- policy";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var_os("GATEHOUSE_BLESS").is_some_and(|v| v != "0")
}

/// Compares `actual` with the committed file, or rewrites it when blessing.
fn golden(rel: &str, actual: &str) {
    let path = repo().join(rel);
    if bless() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if want != actual {
        let first = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "{rel} is stale (first difference at line {}).\n\
             If the change is intended, regenerate it with:\n\
             \n    GATEHOUSE_BLESS=1 cargo test --test matrix\n\n\
             --- expected (committed)\n{}\n--- actual\n{}",
            first + 1,
            want.lines().nth(first).unwrap_or("<end of file>"),
            actual.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

/// A folder laid out like the repository (`config/`, `certs/`) or the golden config's
/// folder (config with `certs/` and `partner.jwks.json` next to it).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn certs(&self, rel_dir: &str) {
        DevPki::generate()
            .unwrap()
            .write_to(&self.path(rel_dir))
            .unwrap();
    }
}

fn partner_key() -> SigningKey {
    SigningKey::generate(KeyAlg::ES256).unwrap()
}

/// Loads the golden config from a scratch copy (certs and partner JWKS beside it).
fn golden_runtime() -> (Scratch, gatehouse::config::Runtime) {
    let s = Scratch::new();
    s.certs("certs");
    std::fs::write(
        s.path("partner.jwks.json"),
        jwks(&[&partner_key()]).to_string(),
    )
    .unwrap();
    let cfg = s.path("matrix.toml");
    std::fs::copy(repo().join(GOLDEN_CONFIG), &cfg).unwrap();
    let rt = gatehouse::config::load(&cfg).unwrap_or_else(|e| panic!("golden config: {e}"));
    (s, rt)
}

#[test]
fn golden_matrix_files() {
    let (_s, rt) = golden_runtime();
    let m = matrix::build(&rt);
    for (format, file) in [
        (Format::Csv, "tests/golden/matrix.csv"),
        (Format::Md, "tests/golden/matrix.md"),
        (Format::Text, "tests/golden/matrix.txt"),
    ] {
        let out = matrix::render(&m, format, GOLDEN_CONFIG);
        assert!(
            !out.contains(&_s.dir.path().display().to_string()),
            "no temp path in output"
        );
        golden(file, &out);
    }
}

#[test]
fn golden_config_covers_every_cell_kind_and_finding() {
    let (_s, rt) = golden_runtime();
    let m = matrix::build(&rt);
    assert_eq!(
        m.roles,
        [
            "data-steward",
            "integration",
            "admin",
            "auditor",
            "legacy",
            AUTHENTICATED
        ]
    );
    for d in [
        Decision::Public,
        Decision::Allow,
        Decision::Deny,
        Decision::NotApplicable,
    ] {
        assert!(m.entries.iter().any(|e| e.decision == d), "{d:?}");
    }
    let cell = |role, route, access| m.get(role, route, access).unwrap();
    let e = cell("data-steward", "orders-read", Access::Read);
    assert_eq!(e.decision, Decision::Allow);
    assert_eq!(e.conditions, ["scopes=orders.read"]);
    assert_eq!(e.row_filters, ["X-Row-Filter=region={claims.region}"]);
    let e = cell("admin", "orders-read", Access::Read);
    assert_eq!(e.decision, Decision::Allow);
    assert!(e.row_filters.is_empty(), "except_roles honoured");
    let e = cell("data-steward", "orders-update", Access::Update);
    assert_eq!(e.conditions, ["scopes=orders.read+orders.write", "mfa"]);
    assert_eq!(
        e.row_filters,
        [
            "X-Row-Filter=region={claims.region};owner={sub}",
            "X-Tenant={claims.tenant}"
        ]
    );
    assert_eq!(
        cell("admin", "orders-update", Access::Update).row_filters,
        ["X-Tenant={claims.tenant}"]
    );
    assert_eq!(
        cell("integration", "partner-feed", Access::Update).conditions,
        ["scopes=feed", "issuers=partner"]
    );
    assert_eq!(
        cell("integration", "orders-update", Access::Update).decision,
        Decision::Deny
    );
    assert_eq!(
        cell(AUTHENTICATED, "profile", Access::Update).decision,
        Decision::Allow
    );
    assert_eq!(
        cell(AUTHENTICATED, "status", Access::Read).decision,
        Decision::Public
    );
    assert_eq!(
        cell(AUTHENTICATED, "status", Access::Update).decision,
        Decision::NotApplicable
    );
    let kinds: Vec<FindingKind> = m.findings.iter().map(|f| f.kind).collect();
    for k in [
        FindingKind::PublicUpdate,
        FindingKind::UpdateWithoutMfa,
        FindingKind::UpdateOpenToAnyAuthenticated,
        FindingKind::RoleGrantsNothing,
        FindingKind::RoleClaimOnly,
        FindingKind::RouteShadowed,
    ] {
        assert!(kinds.contains(&k), "{k:?} in {kinds:?}");
    }
    let f = |k| m.findings.iter().find(|f| f.kind == k).unwrap();
    assert_eq!(f(FindingKind::RoleGrantsNothing).subject, "role legacy");
    assert_eq!(f(FindingKind::RoleClaimOnly).subject, "role auditor");
    assert_eq!(f(FindingKind::RouteShadowed).subject, "route orders-admin");
    assert_eq!(f(FindingKind::PublicUpdate).subject, "route webhook");
    // Lines point at the definitions in the file.
    let text = std::fs::read_to_string(repo().join(GOLDEN_CONFIG)).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let legacy = f(FindingKind::RoleGrantsNothing).line;
    assert!(
        (line_of("[roles.legacy]")..=line_of("[roles.legacy]") + 1).contains(&legacy),
        "role line {legacy}"
    );
    let shadowed = f(FindingKind::RouteShadowed).line;
    let name = line_of("name = \"orders-admin\"");
    assert!(
        (name - 1..=name).contains(&shadowed),
        "route line {shadowed}"
    );
}

/// `docs/security-plan.md` is `gatehouse matrix -c config/gatehouse.toml --format md`.
#[test]
fn security_plan_is_current() {
    let s = Scratch::new();
    s.certs("certs");
    std::fs::create_dir_all(s.path("config")).unwrap();
    let cfg = s.path("config/gatehouse.toml");
    std::fs::copy(repo().join("config/gatehouse.toml"), &cfg).unwrap();
    let rt = gatehouse::config::load(&cfg).unwrap_or_else(|e| panic!("example config: {e}"));
    let out = matrix::render(&matrix::build(&rt), Format::Md, "config/gatehouse.toml");
    assert!(!out.contains(&s.dir.path().display().to_string()));
    golden("docs/security-plan.md", &out);
}

#[test]
fn exit_codes_and_csv_header() {
    let (s, _rt) = golden_runtime();
    let cfg = s.path("matrix.toml");
    let (out, err, code) = matrix::run(&cfg, "csv");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().next(), Some(matrix::CSV_HEADER));
    assert!(out.contains(&format!("{AUTHENTICATED},status,read,public,,\n")));
    let (_, err, code) = matrix::run(&cfg, "xml");
    assert_eq!(code, 1);
    assert!(err.contains("text, csv or md"), "{err}");
    let (out, err, code) = matrix::run(Path::new("/nonexistent/gatehouse.toml"), "text");
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("/nonexistent/gatehouse.toml"), "{err}");
    // A config with an error: exit 1 and the located error.
    let bad = s.path("bad.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "upstream = \"echo\"\nauth = \"none\"",
        "upstream = \"ech\"\nauth = \"none\"",
    );
    std::fs::write(&bad, text).unwrap();
    let (_, err, code) = matrix::run(&bad, "md");
    assert_eq!(code, 1);
    assert!(err.contains("unknown upstream"), "{err}");
}

/// For every cell of the test config that the gateway can reach, a real request with a
/// token holding that role (and the cell's conditions) gets what the matrix says: 200 for
/// allow and public, 403 for deny.
#[test]
fn matrix_agrees_with_the_running_gateway() {
    let text = std::fs::read_to_string(repo().join(GOLDEN_CONFIG)).unwrap();
    let policy = &text[text.find(POLICY_MARKER).expect("policy marker")..];
    let mut env = Env::with(EnvOptions {
        routes: policy.to_string(),
        start_gateway: false,
        ..EnvOptions::default()
    });
    let partner = partner_key();
    std::fs::write(
        env.dir.path().join("partner.jwks.json"),
        jwks(&[&partner]).to_string(),
    )
    .unwrap();
    let rt = gatehouse::config::load(&env.config).unwrap_or_else(|e| panic!("{e}"));
    env.start_gateway();
    let m = matrix::build(&rt);
    let mut checked = 0;
    let mut skipped = Vec::new();
    for e in &m.entries {
        if e.decision == Decision::NotApplicable {
            continue;
        }
        let route = rt.route(&e.route).unwrap();
        // Below the prefix: the echo backend answers `/status` itself.
        let path = format!("{}/probe", route.path_prefix.trim_end_matches('/'));
        // A method of this access that really reaches this route (first match wins).
        let Some(method) = e.access.methods().iter().find(|m| {
            gatehouse::policy::route::find(&rt.routes, None, &path, m)
                .is_some_and(|r| r.name == route.name)
        }) else {
            skipped.push(format!("{} {} {}", e.role, e.route, e.access.as_str()));
            continue;
        };
        let token = if e.decision == Decision::Public {
            None
        } else {
            Some(token_for(&env, &rt, &partner, &e.role, route))
        };
        let r = env.send(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            &path,
            token.as_deref(),
            &[],
            None,
            false,
        );
        let want = match e.decision {
            Decision::Allow | Decision::Public => 200,
            _ => 403,
        };
        assert_eq!(
            r.status,
            want,
            "{} {} {} ({method}): matrix says {}, gateway answered {}: {}",
            e.role,
            e.route,
            e.access.as_str(),
            e.decision.as_str(),
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if e.decision == Decision::Allow && *method != "HEAD" {
            // The row filters the matrix lists are exactly the ones the backend got.
            for f in &route.row_filters {
                let listed = e.row_filters.iter().any(|x| {
                    x.to_ascii_lowercase()
                        .starts_with(&format!("{}=", f.header))
                });
                assert_eq!(
                    !r.echoed(f.header.as_str()).is_empty(),
                    listed,
                    "{} {} {}: row filter {}",
                    e.role,
                    e.route,
                    e.access.as_str(),
                    f.header
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 40, "checked {checked} cells");
    // orders-admin's DELETE is taken by orders-update: the matrix finding says so.
    assert_eq!(
        skipped,
        [
            "data-steward orders-admin update",
            "integration orders-admin update",
            "admin orders-admin update",
            "auditor orders-admin update",
            "legacy orders-admin update",
            "(authenticated) orders-admin update",
        ]
    );
}

/// A token that holds exactly `role` the way the config grants it (group, client ID, or
/// the roles claim when nothing else can), with the route's scopes, MFA and every claim
/// its row filters read, from an issuer the route accepts.
fn token_for(
    env: &Env,
    rt: &gatehouse::config::Runtime,
    partner: &SigningKey,
    role: &str,
    route: &gatehouse::policy::route::Route,
) -> String {
    let mut claims = json!({
        "sub": "alice",
        "groups": [],
        "region": "eu-west",
        "tenant": "t 1",
        "scope": route.require_scopes.join(" "),
        "amr": if route.require_mfa { json!(["pwd", "mfa"]) } else { json!(["pwd"]) },
    });
    let c = claims.as_object_mut().unwrap();
    if role != AUTHENTICATED {
        match rt.roles.get(role) {
            Some(cfg) if !cfg.groups.is_empty() => {
                c.insert("groups".into(), json!([cfg.groups[0]]));
            }
            Some(cfg) if !cfg.clients.is_empty() => {
                c.insert("sub".into(), json!(cfg.clients[0]));
                c.insert("client_id".into(), json!(cfg.clients[0]));
                c.insert("email".into(), Value::Null);
            }
            _ => {
                c.insert("roles".into(), json!([role]));
            }
        }
    }
    let partner_only = route
        .issuers
        .as_ref()
        .is_some_and(|l| !l.iter().any(|n| n == "corp"));
    if partner_only {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        c.insert("iss".into(), json!("https://partner.example"));
        c.insert("aud".into(), json!(AUDIENCE));
        c.insert("iat".into(), json!(now));
        c.insert("exp".into(), json!(now + 300));
        c.retain(|_, v| !v.is_null());
        partner.sign(&claims)
    } else {
        env.token(claims)
    }
}
