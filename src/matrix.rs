//! The access matrix ("security plan", README "Seeing the policy"): every role × route × access
//! (read, update) with its decision, conditions and row filters, and the policy findings
//! an auditor should look at.
//!
//! The matrix is not a second policy engine. Each cell builds a synthetic, already
//! verified [`Identity`] that holds exactly one role (none for `(authenticated)`), carries
//! the route's required scopes, an MFA `amr` when the route needs one and a value for every
//! claim the route's row filters read, and hands it to [`rbac::decide`], the function the
//! proxy calls for every request. Allow or deny, and which row-filter headers the role
//! gets, are read off its answer, so the plan cannot drift from what the gateway enforces.
//!
//! Routing facts (which methods a route serves, which earlier route shadows it) come from
//! [`Route::serves`] and [`Route::shadowed_by`], the functions routing and config
//! validation use.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::auth::{DenyReason, Identity};
use crate::config::Runtime;
use crate::names;
use crate::policy::rbac;
use crate::policy::route::{AuthMode, Route};
use crate::policy::row_filter::Placeholder;

/// The pseudo-role of a caller with a valid token and none of the known roles.
pub const AUTHENTICATED: &str = "(authenticated)";

/// The CSV header line (a fixed format: tools read it).
pub const CSV_HEADER: &str = "role,route,access,decision,conditions,row_filters";

/// Client ID of the synthetic caller: not a valid OAuth client ID in any IdP we know, so
/// it cannot collide with a `clients` entry and smuggle in a second role.
const SYNTHETIC_CLIENT: &str = "(gatehouse-matrix)";

/// Read or update, each a fixed set of methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Update,
}

impl Access {
    pub const ALL: [Access; 2] = [Access::Read, Access::Update];

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Update => "update",
        }
    }

    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Access::Read => &["GET", "HEAD", "OPTIONS"],
            Access::Update => &["POST", "PUT", "PATCH", "DELETE"],
        }
    }

    /// The access a method belongs to (`None` for methods outside both sets).
    pub fn of_method(method: &str) -> Option<Access> {
        Access::ALL
            .into_iter()
            .find(|a| a.methods().contains(&method))
    }
}

/// The decision of one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `auth = "none"`: no token needed.
    Public,
    Allow,
    Deny,
    /// The route serves none of the access's methods.
    NotApplicable,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Public => names::Decision::Public.as_str(),
            Decision::Allow => names::Decision::Allow.as_str(),
            Decision::Deny => names::Decision::Deny.as_str(),
            Decision::NotApplicable => "n/a",
        }
    }
}

/// One role × route × access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub role: String,
    pub route: String,
    pub access: Access,
    pub decision: Decision,
    /// `scopes=A+B`, `mfa`, `issuers=a+b` (allowed cells only).
    pub conditions: Vec<String>,
    /// `HEADER=TEMPLATE` for each row filter this role gets (allowed cells only).
    pub row_filters: Vec<String>,
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    /// A public route that accepts update methods.
    PublicUpdate,
    UpdateWithoutMfa,
    UpdateOpenToAnyAuthenticated,
    RoleGrantsNothing,
    RoleClaimOnly,
    RouteShadowed,
}

impl FindingKind {
    /// A stable short label (text and CSV-adjacent output, tests).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::PublicUpdate => "public-update",
            FindingKind::UpdateWithoutMfa => "update-without-mfa",
            FindingKind::UpdateOpenToAnyAuthenticated => "update-open-to-any-authenticated",
            FindingKind::RoleGrantsNothing => "role-grants-nothing",
            FindingKind::RoleClaimOnly => "role-claim-only",
            FindingKind::RouteShadowed => "route-shadowed",
        }
    }

    fn title(self) -> &'static str {
        match self {
            FindingKind::PublicUpdate => "update on a public route",
            FindingKind::UpdateWithoutMfa => "update without MFA",
            FindingKind::UpdateOpenToAnyAuthenticated => "update open to any authenticated caller",
            FindingKind::RoleGrantsNothing => "role grants nothing",
            FindingKind::RoleClaimOnly => "role only a token claim can grant",
            FindingKind::RouteShadowed => "route shadowed",
        }
    }
}

/// One policy finding, located in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// `route NAME` or `role NAME`.
    pub subject: String,
    /// Line in the config file.
    pub line: usize,
    pub message: String,
}

/// The whole plan.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Row order: configured roles (file order), roles only named in routes, then
    /// [`AUTHENTICATED`].
    pub roles: Vec<String>,
    /// Role-major, then route (file order), then read before update.
    pub entries: Vec<Entry>,
    pub findings: Vec<Finding>,
}

impl Matrix {
    /// The cell for `role` × `route` × `access`.
    pub fn get(&self, role: &str, route: &str, access: Access) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.role == role && e.route == route && e.access == access)
    }
}

/// Output format of `gatehouse matrix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Csv,
    Md,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "csv" => Ok(Format::Csv),
            "md" | "markdown" => Ok(Format::Md),
            other => Err(format!("unknown format {other:?}; use text, csv or md")),
        }
    }
}

/// The roles of the matrix, in row order.
pub fn roles(rt: &Runtime) -> Vec<String> {
    let mut out: Vec<String> = rt.roles.keys().cloned().collect();
    for r in &rt.routes {
        for role in &r.allow_roles {
            if !out.contains(role) {
                out.push(role.clone());
            }
        }
    }
    out.push(AUTHENTICATED.to_string());
    out
}

/// Builds the matrix and the findings of a loaded config.
pub fn build(rt: &Runtime) -> Matrix {
    let roles = roles(rt);
    let mut entries = Vec::with_capacity(roles.len() * rt.routes.len() * 2);
    for role in &roles {
        let held = (role != AUTHENTICATED).then_some(role.as_str());
        for route in &rt.routes {
            for access in Access::ALL {
                entries.push(cell(rt, route, held, access));
            }
        }
    }
    let findings = findings(rt, &roles);
    Matrix {
        roles,
        entries,
        findings,
    }
}

/// The synthetic verified caller of one cell, built from claims through the issuer's
/// claim mapping ([`Identity::from_claims`], as the verifier does): exactly `role` in the
/// roles claim (none for `(authenticated)`), the route's scopes, an MFA `amr` when the
/// route needs one, and a value for every claim its row filters read. `None` when no
/// issuer is configured (then no route can need a token).
fn synthetic_identity(rt: &Runtime, route: &Route, role: Option<&str>) -> Option<Identity> {
    let settings = route
        .issuers
        .as_ref()
        .and_then(|l| l.first())
        .and_then(|n| rt.issuers.iter().find(|i| &i.name == n))
        .or_else(|| rt.issuers.first())?;
    let mut claims = Map::new();
    for f in &route.row_filters {
        for ph in f.template.placeholders() {
            if let Placeholder::Claim(path) = ph {
                // `claim_path` matches a whole dotted key first, so one flat key serves
                // nested paths too.
                claims.insert(path.clone(), json!("x"));
            }
        }
    }
    claims.insert("iss".into(), json!(settings.issuer));
    claims.insert("sub".into(), json!("matrix"));
    claims.insert(settings.client_id_claim.clone(), json!(SYNTHETIC_CLIENT));
    claims.insert(settings.groups_claim.clone(), json!([]));
    claims.insert(
        settings.roles_claim.clone(),
        json!(role.map(|r| vec![r]).unwrap_or_default()),
    );
    claims.insert(settings.scopes_claim.clone(), json!(route.require_scopes));
    claims.insert(
        "amr".into(),
        json!(if route.require_mfa {
            vec!["mfa"]
        } else {
            vec![]
        }),
    );
    Some(Identity::from_claims(
        settings,
        settings.issuer.clone(),
        u64::MAX,
        Value::Object(claims),
    ))
}

/// One cell, decided by [`rbac::decide`]. `role` is `None` for `(authenticated)`.
pub fn cell(rt: &Runtime, route: &Route, role: Option<&str>, access: Access) -> Entry {
    let mut e = Entry {
        role: role.unwrap_or(AUTHENTICATED).to_string(),
        route: route.name.to_string(),
        access,
        decision: Decision::NotApplicable,
        conditions: Vec::new(),
        row_filters: Vec::new(),
    };
    if !access.methods().iter().any(|m| route.serves(m)) {
        return e;
    }
    if route.auth == AuthMode::None {
        e.decision = Decision::Public;
        return e;
    }
    let Some(id) = synthetic_identity(rt, route, role) else {
        e.decision = Decision::Deny;
        return e;
    };
    match rbac::decide(route, &id, &rt.roles) {
        Ok(grant) => {
            e.decision = Decision::Allow;
            e.conditions = conditions(rt, route);
            e.row_filters = route
                .row_filters
                .iter()
                .filter(|f| grant.headers(route).any(|(h, _)| *h == f.header))
                .map(|f| {
                    format!(
                        "{}={}",
                        display_header(f.header.as_str()),
                        f.template.source()
                    )
                })
                .collect();
        }
        Err(err) => {
            // With scopes, MFA and claims supplied, only the role can be missing, or a
            // row filter made of `{roles}` alone renders empty for a caller without roles.
            debug_assert!(
                matches!(
                    err.reason,
                    DenyReason::InsufficientRole | DenyReason::MissingClaim
                ),
                "{err}"
            );
            e.decision = Decision::Deny;
        }
    }
    e
}

/// What an allowed token must also carry on `route`. `issuers=` only when the route
/// accepts fewer issuers than are configured (otherwise it restricts nothing).
pub fn conditions(rt: &Runtime, route: &Route) -> Vec<String> {
    let mut out = Vec::new();
    if !route.require_scopes.is_empty() {
        out.push(format!("scopes={}", route.require_scopes.join("+")));
    }
    if route.require_mfa {
        out.push("mfa".into());
    }
    if let Some(list) = &route.issuers {
        if rt.issuers.iter().any(|i| !list.contains(&i.name)) {
            out.push(format!("issuers={}", list.join("+")));
        }
    }
    out
}

/// `x-row-filter` → `X-Row-Filter` (header names are case-insensitive; this is how
/// configs usually spell them).
pub fn display_header(h: &str) -> String {
    h.split('-')
        .map(|seg| {
            let mut c = seg.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Update methods `route` serves.
fn update_methods(route: &Route) -> Vec<&'static str> {
    Access::Update
        .methods()
        .iter()
        .copied()
        .filter(|m| route.serves(m))
        .collect()
}

/// For each method `route` serves, the earlier route that takes every such request first.
fn shadowing<'a>(rt: &'a Runtime, route: &Route) -> Vec<(&'static str, &'a Route)> {
    let all = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];
    let mut out = Vec::new();
    for m in all.into_iter().filter(|m| route.serves(m)) {
        let mut one = route.clone();
        one.methods = Some(vec![m.to_string()]);
        if let Some(e) = rt.routes[..route.index.min(rt.routes.len())]
            .iter()
            .find(|e| one.shadowed_by(e))
        {
            out.push((m, &**e));
        }
    }
    out
}

fn findings(rt: &Runtime, roles: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |kind, subject: String, line, message: String| {
        out.push(Finding {
            kind,
            subject,
            line,
            message,
        })
    };
    for r in &rt.routes {
        let upd = update_methods(r);
        let subject = format!("route {}", r.name);
        if !upd.is_empty() {
            let ms = upd.join(", ");
            if r.auth == AuthMode::None {
                add(
                    FindingKind::PublicUpdate,
                    subject.clone(),
                    r.line,
                    format!(
                        "route {:?} accepts {ms} without any token (auth = \"none\")",
                        r.name
                    ),
                );
            } else {
                if !r.require_mfa {
                    add(
                        FindingKind::UpdateWithoutMfa,
                        subject.clone(),
                        r.line,
                        format!("route {:?} accepts {ms} without require_mfa", r.name),
                    );
                }
                if r.allow_roles.is_empty() {
                    add(
                        FindingKind::UpdateOpenToAnyAuthenticated,
                        subject.clone(),
                        r.line,
                        format!(
                            "route {:?} accepts {ms} from any authenticated caller (allow_roles = [])",
                            r.name
                        ),
                    );
                }
            }
        }
        let shadowed = shadowing(rt, r);
        if !shadowed.is_empty() {
            let served = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
                .iter()
                .filter(|m| r.serves(m))
                .count();
            let mut by: Vec<String> = Vec::new();
            for (_, e) in &shadowed {
                if !by.iter().any(|b| **b == *e.name) {
                    by.push(e.name.to_string());
                }
            }
            let ms: Vec<&str> = shadowed.iter().map(|(m, _)| *m).collect();
            let what = if shadowed.len() == served && r.methods.is_some() {
                "is never reached".to_string()
            } else {
                format!("never receives {}", ms.join(", "))
            };
            add(
                FindingKind::RouteShadowed,
                subject,
                r.line,
                format!(
                    "route {:?} {what}: {} {} {} those requests first",
                    r.name,
                    if by.len() == 1 {
                        "earlier route"
                    } else {
                        "earlier routes"
                    },
                    by.iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    if by.len() == 1 { "matches" } else { "match" },
                ),
            );
        }
    }
    for role in roles.iter().filter(|r| *r != AUTHENTICATED) {
        let cfg = rt.roles.get(role);
        let line = cfg.map(|c| c.line).unwrap_or_else(|| {
            rt.routes
                .iter()
                .find(|r| r.allow_roles.contains(role))
                .map_or(0, |r| r.line)
        });
        let subject = format!("role {role}");
        let allowed_on = rt
            .routes
            .iter()
            .any(|r| r.auth == AuthMode::Required && r.allow_roles.contains(role));
        let excepted_on = rt
            .routes
            .iter()
            .any(|r| r.row_filters.iter().any(|f| f.except_roles.contains(role)));
        if !allowed_on && !excepted_on {
            add(
                FindingKind::RoleGrantsNothing,
                subject.clone(),
                line,
                format!(
                    "role {role:?} grants nothing: no route lists it in allow_roles or except_roles"
                ),
            );
        }
        if cfg.is_none_or(|c| c.groups.is_empty() && c.clients.is_empty()) {
            add(
                FindingKind::RoleClaimOnly,
                subject,
                line,
                format!(
                    "role {role:?} has no groups and no clients: only a token's roles claim grants it, so whoever controls that claim at the IdP controls this role"
                ),
            );
        }
    }
    out.sort_by_key(|f| (f.kind, f.line));
    out
}

// ---------------------------------------------------------------------------------------
// Rendering and the CLI entry point.

/// Renders `m` for a config shown as `shown_path` (the path as the user passed it, used in
/// finding locations and the Markdown heading).
pub fn render(m: &Matrix, format: Format, shown_path: &str) -> String {
    match format {
        Format::Csv => render_csv(m),
        Format::Text => render_text(m, shown_path),
        Format::Md => render_md(m, shown_path),
    }
}

fn row(e: &Entry) -> [String; 6] {
    [
        e.role.clone(),
        e.route.clone(),
        e.access.as_str().to_string(),
        e.decision.as_str().to_string(),
        e.conditions.join(";"),
        e.row_filters.join(";"),
    ]
}

/// RFC 4180: a field holding `,`, `"`, CR or LF is quoted, inner quotes doubled.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn render_csv(m: &Matrix) -> String {
    let mut s = String::new();
    s.push_str(CSV_HEADER);
    s.push('\n');
    for e in &m.entries {
        let fields: Vec<String> = row(e).iter().map(|f| csv_field(f)).collect();
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}

fn render_text(m: &Matrix, shown: &str) -> String {
    let head = [
        "ROLE",
        "ROUTE",
        "ACCESS",
        "DECISION",
        "CONDITIONS",
        "ROW FILTERS",
    ];
    let rows: Vec<[String; 6]> = m.entries.iter().map(row).collect();
    let mut w: [usize; 6] = head.map(str::len);
    for r in &rows {
        for (i, f) in r.iter().enumerate() {
            w[i] = w[i].max(f.chars().count());
        }
    }
    let line = |cells: [&str; 6]| -> String {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<width$}  ", width = w[i]);
            }
        }
        l.trim_end().to_string()
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Access matrix of {shown}: {} roles x {} routes x read/update",
        m.roles.len(),
        m.entries.len() / (2 * m.roles.len().max(1))
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", line(head));
    let rule: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    let _ = writeln!(s, "{}", rule.join("  "));
    let mut last_role: Option<&str> = None;
    for r in &rows {
        if last_role.is_some_and(|l| l != r[0]) {
            let _ = writeln!(s);
        }
        last_role = Some(&r[0]);
        let _ = writeln!(s, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    let _ = writeln!(s);
    if m.findings.is_empty() {
        let _ = writeln!(s, "Findings: none");
    } else {
        let _ = writeln!(s, "Findings ({}):", m.findings.len());
        for f in &m.findings {
            let _ = writeln!(
                s,
                "  {shown}:{}: [{}] {}",
                f.line,
                f.kind.as_str(),
                f.message
            );
        }
    }
    s
}

/// A Markdown code span that survives backticks and `|` inside a table cell.
fn md_code(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    let s = s.replace('|', "\\|");
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '|' | '*' | '_' | '`' | '[' | ']' | '<' | '>' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn render_md(m: &Matrix, shown: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Security plan: access matrix of `{shown}`");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Generated by `gatehouse matrix -c {shown} --format md`; do not edit by hand. \
         Each row is one role × route × access, decided by the same policy code the \
         gateway runs for every request."
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- **access**: `read` = GET, HEAD, OPTIONS; `update` = POST, PUT, PATCH, DELETE.\n\
         - **decision**: `public` needs no token; `allow` needs a valid token holding the \
         role plus the conditions; `deny` is refused (403) even with a valid token; `n/a`: \
         the route serves none of those methods.\n\
         - **role** `{AUTHENTICATED}`: a caller with a valid token and none of the roles above.\n\
         - **conditions**: what the token must also carry (`scopes=A+B` all of these \
         scopes, `mfa` a multi-factor login, `issuers=` only tokens of these issuers).\n\
         - **row filters**: headers the backend receives to restrict rows, as \
         `HEADER=TEMPLATE`; an `allow` row without one sees every row the route returns.\n\
         - Routes are listed on their own; at run time the first matching route in file \
         order wins (see findings)."
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| role | route | access | decision | conditions | row filters |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for e in &m.entries {
        let dec = match e.decision {
            Decision::Allow => "**allow**".to_string(),
            Decision::Public => "**public**".to_string(),
            d => d.as_str().to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            md_text(&e.role),
            md_text(&e.route),
            e.access.as_str(),
            dec,
            e.conditions
                .iter()
                .map(|c| md_code(c))
                .collect::<Vec<_>>()
                .join("<br>"),
            e.row_filters
                .iter()
                .map(|c| md_code(c))
                .collect::<Vec<_>>()
                .join("<br>"),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "## Findings");
    let _ = writeln!(s);
    if m.findings.is_empty() {
        let _ = writeln!(
            s,
            "None: every update route needs MFA and a role, every role grants something \
             and can be obtained through a group or client, and no route is shadowed."
        );
    } else {
        for f in &m.findings {
            let _ = writeln!(
                s,
                "- **{}** ({}), `{shown}:{}`: {}",
                f.kind.title(),
                md_text(&f.subject),
                f.line,
                md_text(&f.message)
            );
        }
    }
    s
}

/// `gatehouse matrix -c CONFIG --format FORMAT` without printing: `(stdout, stderr, exit
/// code)`. Exit 0, or 1 on a bad config or format.
pub fn run(config: &Path, format: &str) -> (String, String, i32) {
    let format: Format = match format.parse() {
        Ok(f) => f,
        Err(e) => return (String::new(), format!("gatehouse matrix: {e}\n"), 1),
    };
    match crate::config::load(config) {
        Ok(rt) => (
            render(&build(&rt), format, &config.display().to_string()),
            String::new(),
            0,
        ),
        Err(errs) => (
            String::new(),
            format!(
                "{errs}\n{} error(s) in {}\n",
                errs.0.len(),
                config.display()
            ),
            1,
        ),
    }
}

/// The CLI entry point: prints the matrix (stdout) or the errors (stderr), returns the
/// exit code.
pub fn matrix_cli(config: &Path, format: &str) -> i32 {
    let (out, err, code) = run(config, format);
    print!("{out}");
    eprint!("{err}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    }

    #[test]
    fn header_display_and_formats() {
        assert_eq!(display_header("x-row-filter"), "X-Row-Filter");
        assert_eq!(display_header("x-tenant"), "X-Tenant");
        assert_eq!("MD".parse::<Format>(), Ok(Format::Md));
        assert!("xml".parse::<Format>().is_err());
        assert_eq!(Access::of_method("OPTIONS"), Some(Access::Read));
        assert_eq!(Access::of_method("DELETE"), Some(Access::Update));
        assert_eq!(Access::of_method("TRACE"), None);
    }

    #[test]
    fn md_escapes() {
        assert_eq!(md_code("a|b"), "`a\\|b`");
        assert_eq!(md_code("a`b"), "`` a`b ``");
        assert_eq!(md_text("a_b*c"), "a\\_b\\*c");
    }
}
