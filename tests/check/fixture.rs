//! The valid base config and the helpers the `check` tests share (tests/check.rs,
//! tests/config_files.rs).
#![allow(dead_code)]

pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output};
#[allow(unused_imports)]
pub use std::time::{Duration, SystemTime};

pub use gatehouse::config::{self, ConfigError, Runtime};
pub use gatehouse::devkit::{jwks, DevPki, KeyAlg, SigningKey};

/// A valid config; paths are relative to `conf/` (the config file's folder).
pub const BASE: &str = r#"# gatehouse test config
[server]
listen = "127.0.0.1:8443"
redirect_http = "127.0.0.1:8080"
cert = "../certs/server.crt"
key = "../certs/server.key"
tls_min_version = "1.2"
hsts_max_age_s = 31536000
threads = 2
drain_timeout_s = 20

[admin]
listen = "127.0.0.1:9900"

[audit]
path = "-"
retention_days = 90
pseudonym_key = { file = "pseudonym.key" }

[cache]
max_entries = 1000
ttl_s = 300

[issuers.corp]
issuer = "https://login.example.com/tenant"
jwks_file = "keys/corp.jwks.json"
audiences = ["api://orders"]
algorithms = ["ES256", "RS256"]
leeway_s = 30

[roles.data-steward]
groups = ["sg-data-stewards"]
[roles.integration]
clients = ["billing-sync"]
[roles.admin]
groups = ["sg-mdm-admins"]

[upstreams.orders]
addrs = ["127.0.0.1:9443"]
sni = "localhost"
ca = "../certs/ca.crt"
client_cert = "../certs/client.crt"
client_key = "../certs/client.key"
connect_timeout_ms = 2000

[upstreams.billing]
addrs = ["127.0.0.1:9444"]
sni = "backend"
ca = "../certs/ca.crt"
client_cert = "../certs/client.crt"
client_key = "../certs/client.key"

[[routes]]
name = "status"
path_prefix = "/public"
upstream = "orders"
auth = "none"

[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstream = "orders"
issuers = ["corp"]
allow_roles = ["data-steward", "integration"]
require_scopes = ["orders.read"]

[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={claims.region}"
except_roles = ["admin"]

[[routes]]
name = "billing"
path_prefix = "/billing"
methods = ["GET", "POST"]
upstream = "billing"
allow_roles = ["admin", "integration"]
require_mfa = true

[[routes.row_filters]]
header = "X-Tenant"
value = "tenant={claims.org.tenant};by={sub}"
"#;

/// A temp folder holding `certs/` (the dev PKI plus a few deliberately broken files) and
/// `conf/` (the JWKS, the pseudonym key file and the config).
pub struct Fixture {
    dir: tempfile::TempDir,
    pub pki: DevPki,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = DevPki::generate().expect("dev PKI");
        let certs = dir.path().join("certs");
        pki.write_to(&certs).expect("write PKI");
        std::fs::write(certs.join("not-pem.crt"), "this is not a certificate\n").unwrap();
        std::fs::write(certs.join("not-pem.key"), "this is not a key\n").unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(conf.join("keys")).unwrap();
        let key = SigningKey::generate(KeyAlg::ES256).expect("signing key");
        std::fs::write(
            conf.join("keys/corp.jwks.json"),
            serde_json::to_vec_pretty(&jwks(&[&key])).unwrap(),
        )
        .unwrap();
        std::fs::write(
            conf.join("pseudonym.key"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        Fixture { dir, pki }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` as `conf/gatehouse.toml` and returns its path.
    pub fn write(&self, text: &str) -> PathBuf {
        let p = self.root().join("conf/gatehouse.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes and loads `text`, expecting it to be rejected.
    pub fn errors(&self, text: &str) -> (PathBuf, Vec<ConfigError>) {
        let p = self.write(text);
        match config::load(&p) {
            Ok(_) => panic!("config was accepted, expected an error:\n{text}"),
            Err(e) => (p, e.0),
        }
    }

    pub fn load_ok(&self, text: &str) -> Runtime {
        let p = self.write(text);
        match config::load(&p) {
            Ok(rt) => rt,
            Err(e) => panic!("config rejected:\n{e}\n---\n{text}"),
        }
    }
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur exactly once in the config"
    );
    text.replacen(from, to, 1)
}

/// 1-based line and column (in characters) of the only occurrence of `needle`.
pub fn position(text: &str, needle: &str) -> (usize, usize) {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must occur exactly once in:\n{text}"
    );
    let off = text.find(needle).unwrap();
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, text[line_start..off].chars().count() + 1)
}

/// One defect: the edits to BASE that make it, the key path of the error, unique text in
/// the edited config where it must point, and words the message must contain (what is
/// wrong and what to do). The defect must cause exactly this one error.
pub fn assert_defect(edits: &[(&str, &str)], key: &str, at: &str, says: &[&str]) {
    let fx = Fixture::new();
    let mut text = BASE.to_string();
    for (from, to) in edits {
        text = edit(&text, from, to);
    }
    let (path, errors) = fx.errors(&text);
    let listing: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let e = errors
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for key {key:?}; got:\n{}", listing.join("\n")));
    assert_eq!(
        errors.len(),
        1,
        "one defect, one error; got:\n{}",
        listing.join("\n")
    );
    let (line, col) = position(&text, at);
    assert_eq!(
        (e.line, e.col),
        (line, col),
        "{e} should point at {at:?} ({line}:{col})"
    );
    assert_eq!(e.file, path);
    for word in says {
        assert!(
            e.message.contains(word),
            "message of {e} should mention {word:?}"
        );
    }
    // The Display form operators see: FILE:LINE:COL: KEY: MESSAGE.
    assert_eq!(
        e.to_string(),
        format!("{}:{line}:{col}: {key}: {}", path.display(), e.message)
    );
}

pub fn gatehouse(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run gatehouse")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------
// The valid base config.

pub const JWKS_FILE: &str = "jwks_file = \"keys/corp.jwks.json\"\n";
pub const ALGS: &str = "algorithms = [\"ES256\", \"RS256\"]";
pub const ORDERS_CA: &str = "sni = \"localhost\"\nca = \"../certs/ca.crt\"";
