//! Output of `gatehouse explain` (text walk-through and `--json`) and the CLI entry
//! points [`run`] and [`explain_cli`].

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{
    explain, Check, CheckResult, Credential, Explanation, Options, EXIT_BAD_INPUT, EXIT_FORWARDED,
    EXIT_REFUSED,
};
use crate::config::Runtime;
use crate::names;
use crate::policy::rbac::RoleSource;
use crate::policy::route::{AuthMode, Route};

fn source_json(s: &RoleSource) -> Value {
    match s {
        RoleSource::Claim => json!({"source": "claim"}),
        RoleSource::Group(g) => json!({"source": "group", "group": g}),
        RoleSource::Client(c) => json!({"source": "client", "client_id": c}),
    }
}

fn source_text(s: &RoleSource) -> String {
    match s {
        RoleSource::Claim => "token roles claim".into(),
        RoleSource::Group(g) => format!("group {g}"),
        RoleSource::Client(c) => format!("client ID {c}"),
    }
}

impl Explanation {
    /// Exit code: 0 forwarded, 3 refused.
    pub fn exit_code(&self) -> i32 {
        if self.forwarded {
            EXIT_FORWARDED
        } else {
            EXIT_REFUSED
        }
    }

    /// Sorted role names.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|g| g.role.clone()).collect()
    }

    /// Header value the backend would get, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `--json` object.
    pub fn to_json(&self, rt: &Runtime) -> Value {
        let checks = |cs: &[Check]| -> Value {
            cs.iter()
                .map(|c| json!({"check": c.name, "result": c.result.as_str(), "detail": c.detail}))
                .collect()
        };
        let mut headers = Map::new();
        for (n, v) in &self.headers {
            headers.insert(n.clone(), json!(v));
        }
        if self.forwarded {
            headers.insert(names::X_FORWARDED_PROTO.into(), json!("https"));
        }
        let route = self.route.as_ref();
        json!({
            "request": {"method": self.method, "host": self.host, "path": self.path},
            "route": route.map(|r| r.name.clone()),
            "route_line": route.map(|r| r.line),
            "upstream": route.filter(|_| self.forwarded).map(|r| r.upstream.clone()),
            "path_refused": self.path_refused,
            "near_misses": self.near_misses,
            "credential": self.credential,
            "token_checks": checks(&self.token_checks),
            "roles": self.role_names(),
            "role_sources": self.roles.iter().map(|g| {
                let mut v = source_json(&g.source);
                v["role"] = json!(g.role);
                v
            }).collect::<Vec<_>>(),
            "authorization": checks(&self.authz_checks),
            "decision": self.decision,
            "reason": self.reason,
            "detail": self.detail,
            "headers": headers,
            "removed_headers": if route.is_some() { removed(rt, route.map(|r| &**r)) } else { vec![] },
            "status": self.status,
            "forwarded": self.forwarded,
        })
    }

    /// The human-readable walk-through.
    pub fn to_text(&self, rt: &Runtime, shown: &str) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let url = format!(
            "{}{}",
            self.host
                .as_deref()
                .map(|h| format!("https://{h}"))
                .unwrap_or_default(),
            self.path
        );
        let _ = writeln!(s, "explain {} {url}  (config {shown})", self.method);
        let _ = writeln!(s);
        let _ = writeln!(s, "1. route");
        if let Some(why) = &self.path_refused {
            let _ = writeln!(s, "   path refused before routing: {why}");
        } else if let Some(r) = &self.route {
            let _ = writeln!(
                s,
                "   matched {} ({shown}:{}): {}{} [{}] -> upstream {}{}",
                r.name,
                r.line,
                r.host.as_deref().unwrap_or(""),
                r.path_prefix,
                r.methods
                    .as_ref()
                    .map(|m| m.join(", "))
                    .unwrap_or_else(|| "all methods".into()),
                r.upstream,
                if r.auth == AuthMode::None {
                    ", public (auth = \"none\")"
                } else {
                    ""
                }
            );
        } else {
            let _ = writeln!(s, "   no route matches (routes are tried in file order):");
            for m in &self.near_misses {
                let _ = writeln!(s, "     {m}");
            }
        }
        let public = self
            .route
            .as_ref()
            .is_some_and(|r| r.auth == AuthMode::None);
        if self.route.is_some() {
            let _ = writeln!(s);
            let _ = writeln!(s, "2. authentication: {}", self.credential);
            if public {
                let _ = writeln!(
                    s,
                    "   public route: no token is checked and no identity is sent"
                );
            }
            for c in &self.token_checks {
                let _ = writeln!(s, "{}", check_line(c));
            }
        }
        if !self.token_checks.is_empty()
            && self
                .token_checks
                .iter()
                .all(|c| c.result != CheckResult::Fail)
        {
            let _ = writeln!(s);
            let _ = writeln!(s, "3. roles");
            if self.roles.is_empty() {
                let _ = writeln!(
                    s,
                    "   none (only routes with allow_roles = [] admit this caller)"
                );
            }
            for g in &self.roles {
                let _ = writeln!(s, "   {:<20} from {}", g.role, source_text(&g.source));
            }
            let _ = writeln!(s);
            let _ = writeln!(s, "4. authorization");
            for c in &self.authz_checks {
                let _ = writeln!(s, "{}", check_line(c));
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "decision: {}{}",
            self.decision,
            self.reason
                .as_ref()
                .map(|r| format!(" ({r}: {})", self.detail.as_deref().unwrap_or("")))
                .unwrap_or_default()
        );
        if self.forwarded {
            let _ = writeln!(s);
            let _ = writeln!(s, "headers sent to the backend:");
            for (n, v) in &self.headers {
                let _ = writeln!(s, "   {n}: {v}");
            }
            let _ = writeln!(s, "   {}: <client address>", names::X_FORWARDED_FOR);
            let _ = writeln!(s, "   {}: https", names::X_FORWARDED_PROTO);
            let _ = writeln!(
                s,
                "   {}: <the client's, if 1-128 of A-Za-z0-9._-, else generated>",
                names::X_REQUEST_ID
            );
            let _ = writeln!(
                s,
                "removed from the client's request: {}",
                removed(rt, self.route.as_deref()).join(", ")
            );
        }
        let _ = writeln!(s);
        let _ = match (self.forwarded, &self.route) {
            (true, Some(r)) => writeln!(
                s,
                "status: {} forwarded to upstream {} (the client gets the backend's response)",
                self.status, r.upstream
            ),
            _ => writeln!(s, "status: {} refused by the gateway", self.status),
        };
        s
    }
}

fn check_line(c: &Check) -> String {
    let mark = format!("[{}]", c.result.as_str());
    format!("   {mark:<14}{:<13}{}", c.name, c.detail)
        .trim_end()
        .to_string()
}

/// Headers stripped from the client's request on `route`.
fn removed(rt: &Runtime, route: Option<&Route>) -> Vec<String> {
    let mut out: Vec<String> = rt
        .owned_headers
        .iter()
        .map(|h| h.as_str().to_string())
        .collect();
    if route.is_some_and(|r| !r.forward_token && r.auth == AuthMode::Required) {
        out.push("authorization".into());
    }
    out
}

/// `gatehouse explain` without printing: `(stdout, stderr, exit code)`.
///
/// `token`: the JWT, `-` to read it from stdin, or `@FILE` to read it from a file (keeps
/// it out of shell history). `claims`: a JSON file of already-verified claims. Exactly
/// one of the two.
pub fn run(
    config: &Path,
    token: Option<&str>,
    claims: Option<&Path>,
    method: &str,
    url: &str,
    as_json: bool,
    opts: &Options,
) -> (String, String, i32) {
    let bad = |msg: String| {
        (
            String::new(),
            format!("gatehouse explain: {msg}\n"),
            EXIT_BAD_INPUT,
        )
    };
    let rt = match crate::config::load(config) {
        Ok(rt) => std::sync::Arc::new(rt),
        Err(errs) => {
            return (
                String::new(),
                format!(
                    "{errs}\n{} error(s) in {}\n",
                    errs.0.len(),
                    config.display()
                ),
                EXIT_BAD_INPUT,
            )
        }
    };
    let cred = match (token, claims) {
        (Some(_), Some(_)) | (None, None) => {
            return bad("give exactly one of --token JWT and --claims FILE.json".into())
        }
        (Some(t), None) => {
            let t = if t == "-" {
                let mut buf = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf) {
                    return bad(format!("cannot read the token from stdin: {e}"));
                }
                buf
            } else if let Some(f) = t.strip_prefix('@') {
                match std::fs::read_to_string(f) {
                    Ok(b) => b,
                    Err(e) => return bad(format!("cannot read the token file {f}: {e}")),
                }
            } else {
                t.to_string()
            };
            let t = t.trim();
            let t = t.strip_prefix("Bearer ").unwrap_or(t).trim();
            if t.is_empty() {
                return bad("the token is empty".into());
            }
            Credential::Token(t.to_string())
        }
        (None, Some(f)) => {
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => return bad(format!("cannot read {}: {e}", f.display())),
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) => Credential::Claims(v),
                Ok(_) => return bad(format!("{}: the claims must be a JSON object", f.display())),
                Err(e) => return bad(format!("{}: not JSON: {e}", f.display())),
            }
        }
    };
    match explain(&rt, method, url, &cred, opts) {
        Ok(e) => {
            let out = if as_json {
                let mut s = serde_json::to_string_pretty(&e.to_json(&rt)).unwrap_or_default();
                s.push('\n');
                s
            } else {
                e.to_text(&rt, &config.display().to_string())
            };
            (out, String::new(), e.exit_code())
        }
        Err(msg) => bad(msg),
    }
}

/// The CLI entry point: prints the explanation (stdout) or the error (stderr) and returns
/// the exit code (0 forwarded, 3 refused, 1 bad input).
pub fn explain_cli(
    config: &Path,
    token: Option<&str>,
    claims: Option<&Path>,
    method: &str,
    url: &str,
    as_json: bool,
) -> i32 {
    let (out, err, code) = run(
        config,
        token,
        claims,
        method,
        url,
        as_json,
        &Options::default(),
    );
    print!("{out}");
    eprint!("{err}");
    code
}
