//! `gatehouse demo`: a self-contained tour on loopback. A throwaway CA and certificates,
//! the embedded OIDC issuer, the mTLS echo backend and the gateway with an example
//! config; prints curl commands that work as pasted. Ctrl-C stops everything.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::devkit::{DevPki, EchoBackend, EchoOptions, IssuerOptions, KeyAlg, MockIssuer};
use crate::server::{Gatehouse, Options};

/// For each preferred port: that port if it is free on 127.0.0.1, else any free port.
/// All are held while choosing, so the answers are distinct.
pub fn ports_or_free<const N: usize>(preferred: [u16; N]) -> [u16; N] {
    let mut held: Vec<TcpListener> = Vec::with_capacity(N);
    for p in preferred {
        let l = (p != 0)
            .then(|| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok())
            .flatten()
            .or_else(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok());
        if let Some(l) = l {
            held.push(l);
        }
    }
    std::array::from_fn(|i| {
        held.get(i)
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or(18443 + i as u16)
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18443)
}

/// The demo's config file text.
pub fn demo_config(
    issuer_url: &str,
    echo: SocketAddr,
    https: u16,
    redirect: u16,
    admin: u16,
) -> String {
    format!(
        r#"# Written by `gatehouse demo`. The annotated reference is config/gatehouse.toml.
[server]
listen = "127.0.0.1:{https}"
redirect_http = "127.0.0.1:{redirect}"
cert = "certs/server.crt"
key = "certs/server.key"

[admin]
listen = "127.0.0.1:{admin}"

[audit]
path = "audit"
pseudonym_key = {{ file = "pseudonym.key" }}

[issuers.demo]
issuer = "{issuer_url}"
discovery = true
ca = "certs/ca.crt"
audiences = ["api://orders"]
algorithms = ["RS256", "ES256"]

[roles.data-steward]
groups = ["sg-data-stewards"]
[roles.integration]
clients = ["billing-sync"]
[roles.admin]
groups = ["sg-mdm-admins"]

[upstreams.orders]
addrs = ["{echo}"]
sni = "localhost"
ca = "certs/ca.crt"
client_cert = "certs/client.crt"
client_key = "certs/client.key"

[[routes]]
name = "health"
path_prefix = "/health"
upstream = "orders"
auth = "none"

[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstream = "orders"
allow_roles = ["data-steward", "integration", "admin"]
require_scopes = ["orders.read"]
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={{claims.region}}"
except_roles = ["admin"]

[[routes]]
name = "orders-update"
path_prefix = "/orders"
methods = ["POST", "PUT", "PATCH", "DELETE"]
upstream = "orders"
allow_roles = ["data-steward", "admin"]
require_scopes = ["orders.write"]
require_mfa = true
[[routes.row_filters]]
header = "X-Row-Filter"
value = "region={{claims.region}};owner={{sub}}"
except_roles = ["admin"]
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

/// Runs the demo until Ctrl-C.
pub fn run(port: u16) -> anyhow::Result<()> {
    crate::server::hold_early_signals();
    let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pki = DevPki::generate()?;
    pki.write_to(&dir.join("certs"))?;
    let key = write(
        &dir,
        "pseudonym.key",
        &crate::proxy::headers::new_request_id(),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }

    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let issuer = io.block_on(MockIssuer::start(
        &pki.server,
        IssuerOptions {
            audience: "api://orders".into(),
            algs: vec![KeyAlg::RS256, KeyAlg::ES256],
            ..IssuerOptions::default()
        },
    ))?;
    issuer.register_client(
        "billing-sync",
        "demo-secret",
        KeyAlg::ES256,
        json!({"region": "eu-west", "scope": "orders.read"}),
    );
    let echo = io.block_on(EchoBackend::start(
        &pki.backend,
        &pki.ca.cert_pem,
        EchoOptions::default(),
    ))?;

    let [https, redirect, admin] = if port == 0 {
        ports_or_free([0, 0, 0])
    } else {
        ports_or_free([port, 8080, 9900])
    };
    let config = write(
        &dir,
        "gatehouse.toml",
        &demo_config(&issuer.issuer_url(), echo.addr(), https, redirect, admin),
    )?;
    let mut opts = Options::new(&config);
    opts.signals = true;
    opts.wait_ready = Duration::from_secs(10);
    let cleanup_dir = dir.clone();
    crate::server::on_exit(Box::new(move || {
        let _ = std::fs::remove_dir_all(&cleanup_dir);
    }));
    let gh = Gatehouse::start(opts)?;

    let alice = issuer.mint(
        KeyAlg::RS256,
        json!({"sub": "alice", "email": "alice@example.com", "groups": ["sg-data-stewards"],
               "region": "eu-west", "scope": "orders.read orders.write", "amr": ["pwd", "mfa"]}),
    );
    let bob = issuer.mint(
        KeyAlg::ES256,
        json!({"sub": "bob", "email": "bob@example.com", "groups": ["sg-sales"], "scope": "orders.read"}),
    );
    let ca = dir.join("certs/ca.crt");
    let ca = ca.display();
    let base = format!("https://localhost:{https}");
    println!(
        r#"
gatehouse demo is running (Ctrl-C stops everything)
  gateway   {base}   (config: {config})
  issuer    {iss}  (discovery, JWKS, client-credentials token endpoint)
  backend   https://{echo} (mTLS echo: answers with the headers it received)
  admin     http://127.0.0.1:{admin}/metrics  /healthz  /readyz
  redirect  http://127.0.0.1:{redirect}/  -> 308 to HTTPS
  audit     {audit}/audit-YYYY-MM-DD.jsonl  (one JSON line per request; subjects pseudonymised)

# 0. a public route (auth = "none"): no token, no identity headers
curl --cacert {ca} {base}/health

# 1. allowed: alice is a data steward (via group sg-data-stewards); the backend sees
#    X-Auth-Subject, X-Auth-Roles and her row filter X-Row-Filter: region=eu-west
curl --cacert {ca} -H "Authorization: Bearer {alice}" {base}/orders/42

# 2. denied 401: no token (problem+json, WWW-Authenticate: Bearer)
curl -i --cacert {ca} {base}/orders/42

# 3. denied 403: bob holds no role that may read orders
curl -i --cacert {ca} -H "Authorization: Bearer {bob}" {base}/orders/42

# 4. spoofing is useless: a client-sent X-Auth-Roles / X-Row-Filter never reaches the backend
curl --cacert {ca} -H "Authorization: Bearer {alice}" -H "X-Auth-Roles: admin" -H "X-Row-Filter: 1=1" {base}/orders/42

# 5. update with MFA: a different row filter (region and owner) for writes
curl --cacert {ca} -X POST -H "Authorization: Bearer {alice}" -d '{{"qty":1}}' {base}/orders

# 6. a client-credentials token from the issuer, then a read as the integration role
TOKEN=$(curl -s --cacert {ca} -u billing-sync:demo-secret -d grant_type=client_credentials -d scope=orders.read {iss}/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
curl --cacert {ca} -H "Authorization: Bearer $TOKEN" {base}/orders

# 7. metrics
curl -s http://127.0.0.1:{admin}/metrics | grep ^gatehouse_requests_total
"#,
        iss = issuer.issuer_url(),
        echo = echo.addr(),
        audit = dir.join("audit").display(),
        config = config.display(),
    );
    gh.wait();
    io.block_on(async {
        issuer.shutdown().await;
        echo.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
