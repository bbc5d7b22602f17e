//! `[[routes]]`: matching, references to upstreams/issuers/roles, row filters, shadowing.

use super::*;

/// The message for a role name no `[roles.NAME]` declares: a likely typo first, then
/// the known names, then how to declare a new one.
fn unknown_role(name: &str, known: &[&String]) -> String {
    let owned: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    let hint = super::super::raw::closest(name, &owned)
        .map(|c| format!("did you mean {c:?}? "))
        .unwrap_or_default();
    let list = if owned.is_empty() {
        "none configured".to_string()
    } else {
        owned.join(", ")
    };
    format!("unknown role {name:?} (known: {list}); {hint}or declare it as [roles.{name}]")
}

/// Methods a route may name.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

impl Validator<'_> {
    pub(super) fn routes(&mut self, raw: &RawConfig, issuers: &[IssuerSettings]) -> Vec<Route> {
        let mut out: Vec<Route> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let role_names: Vec<&String> = raw.roles.keys().collect();
        let known = |keys: Vec<&String>| {
            if keys.is_empty() {
                "none configured".to_string()
            } else {
                keys.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        // Every row-filter header of the config, dashed: another filter's underscore
        // spelling of one of these would reach a CGI-style backend as the same variable.
        let filter_headers: HashSet<String> = raw
            .routes
            .iter()
            .flat_map(|r| r.get_ref().row_filters.iter())
            .map(|f| f.get_ref().header.get_ref().to_ascii_lowercase())
            .filter(|h| !h.contains('_'))
            .collect();
        for (i, rs) in raw.routes.iter().enumerate() {
            let r = rs.get_ref();
            let k = |f: &str| format!("routes[{i}].{f}");
            let mut ok = true;
            let name = r.name.get_ref().clone();
            if name.is_empty() {
                self.err(r.name.span(), k("name"), "must not be empty");
                ok = false;
            } else if let Some(prev) = names.insert(name.clone(), i) {
                self.err(r.name.span(), k("name"), format!("duplicate route name {name:?} (also routes[{prev}]); route names must be unique"));
                ok = false;
            }
            // Normalised exactly as request hosts are, so matching is plain equality.
            let host = r.host.as_ref().map(|h| {
                let raw = h.get_ref();
                if raw.is_empty() {
                    self.err(
                        h.span(),
                        k("host"),
                        "must not be empty; remove it to match any host",
                    );
                    ok = false;
                    return String::new();
                }
                match crate::policy::route::normalize_host(raw) {
                    Ok(v) => v,
                    Err(why) => {
                        self.err(
                            h.span(),
                            k("host"),
                            format!("{raw:?} is not a valid host ({why}); write a host name such as \"api.example.com\" (a port is ignored)"),
                        );
                        ok = false;
                        String::new()
                    }
                }
            });
            let prefix = r.path_prefix.get_ref();
            if !prefix.starts_with('/') {
                self.err(
                    r.path_prefix.span(),
                    k("path_prefix"),
                    format!("{prefix:?} must start with '/'"),
                );
                ok = false;
            } else if crate::policy::route::check_path(prefix).is_err() && prefix != "/" {
                self.err(r.path_prefix.span(), k("path_prefix"), format!("{prefix:?} holds '//', dot segments or encoded separators, which requests can never match"));
                ok = false;
            }
            let methods = r.methods.as_ref().map(|ms| {
                if ms.get_ref().is_empty() {
                    self.err(
                        ms.span(),
                        k("methods"),
                        "is empty, so the route matches nothing; remove it to allow every method",
                    );
                    ok = false;
                }
                let mut v = Vec::new();
                for m in ms.get_ref() {
                    let up = m.get_ref().to_ascii_uppercase();
                    // A typo must not silently drop a method from a route (a DELETE would
                    // then fall through to another route or a 404).
                    if !KNOWN_METHODS.contains(&up.as_str()) {
                        let known: Vec<String> =
                            KNOWN_METHODS.iter().map(|s| s.to_string()).collect();
                        let hint = super::super::raw::closest(&up, &known)
                            .map(|c| format!("did you mean \"{c}\"? "))
                            .unwrap_or_default();
                        self.err(
                            m.span(),
                            k("methods"),
                            format!(
                                "unknown method {:?}; {hint}use {}",
                                m.get_ref(),
                                KNOWN_METHODS.join(", ")
                            ),
                        );
                        ok = false;
                    } else if !v.contains(&up) {
                        v.push(up);
                    }
                }
                v
            });
            if !raw.upstreams.contains_key(r.upstream.get_ref()) {
                self.err(
                    r.upstream.span(),
                    k("upstream"),
                    format!(
                        "unknown upstream {:?} (known: {})",
                        r.upstream.get_ref(),
                        known(raw.upstreams.keys().collect())
                    ),
                );
                ok = false;
            }
            let route_issuers = r.issuers.as_ref().map(|list| {
                let mut v = Vec::new();
                for is in list {
                    if !raw.issuers.contains_key(is.get_ref()) {
                        self.err(
                            is.span(),
                            k("issuers"),
                            format!(
                                "unknown issuer {:?} (known: {})",
                                is.get_ref(),
                                known(raw.issuers.keys().collect())
                            ),
                        );
                        ok = false;
                    }
                    v.push(is.get_ref().clone());
                }
                v
            });
            let mut allow_roles = Vec::new();
            if let Some(ar) = &r.allow_roles {
                for role in ar.get_ref() {
                    if !raw.roles.contains_key(role.get_ref()) {
                        self.err(
                            role.span(),
                            k("allow_roles"),
                            unknown_role(role.get_ref(), &role_names),
                        );
                        ok = false;
                    }
                    allow_roles.push(role.get_ref().clone());
                }
            }
            let auth = match r.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("required", _)) => AuthMode::Required,
                Some(("none", _)) => AuthMode::None,
                Some((other, span)) => {
                    self.err(
                        span,
                        k("auth"),
                        format!("{other:?} is not a mode; use \"required\" or \"none\""),
                    );
                    ok = false;
                    AuthMode::Required
                }
            };
            let require_scopes = r
                .require_scopes
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default();
            let require_mfa = r
                .require_mfa
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(false);
            if auth == AuthMode::None {
                let conflicting = [
                    ("allow_roles", r.allow_roles.as_ref().map(|a| a.span())),
                    (
                        "require_scopes",
                        r.require_scopes.as_ref().map(|a| a.span()),
                    ),
                    (
                        "require_mfa",
                        r.require_mfa
                            .as_ref()
                            .filter(|m| *m.get_ref())
                            .map(|a| a.span()),
                    ),
                ];
                for (f, span) in conflicting {
                    if let Some(span) = span {
                        self.err(span, k(f), "a public route (auth = \"none\") checks no token; remove this key or set auth = \"required\"");
                        ok = false;
                    }
                }
                if let Some(f) = r.row_filters.first() {
                    self.err(f.span(), k("row_filters"), "a public route (auth = \"none\") has no caller to filter for; remove the filters or set auth = \"required\"");
                    ok = false;
                }
                if let Some(is) = r.issuers.as_ref().and_then(|l| l.first()) {
                    self.err(is.span(), k("issuers"), "a public route (auth = \"none\") checks no token; remove issuers or set auth = \"required\"");
                    ok = false;
                }
            } else if issuers.is_empty() && raw.issuers.is_empty() {
                self.err(rs.span(), format!("routes[{i}]"), "needs a token but no [issuers.NAME] is configured; add one or set auth = \"none\"");
                ok = false;
            }
            let mut row_filters = Vec::new();
            let mut seen_headers = HashSet::new();
            for (j, f) in r.row_filters.iter().enumerate() {
                let fr = f.get_ref();
                let fk = |x: &str| format!("routes[{i}].row_filters[{j}].{x}");
                let hname = fr.header.get_ref().to_ascii_lowercase();
                let dashed = hname.replace('_', "-");
                let owned_elsewhere = hname.contains('_')
                    && (RESERVED_HEADERS.contains(&dashed.as_str())
                        || ALWAYS_STRIPPED.contains(&dashed.as_str())
                        || filter_headers.contains(&dashed));
                let header = match HeaderName::from_bytes(hname.as_bytes()) {
                    Ok(h) if owned_elsewhere => {
                        self.err(
                            fr.header.span(),
                            fk("header"),
                            format!(
                                "{:?} is an underscore spelling of {dashed}, a header gatehouse owns: CGI-style backends (WSGI, PHP, Rack) read both as one variable; pick another name",
                                fr.header.get_ref()
                            ),
                        );
                        ok = false;
                        Some(h)
                    }
                    Ok(h)
                        if RESERVED_HEADERS.contains(&hname.as_str())
                            || ALWAYS_STRIPPED.contains(&hname.as_str()) =>
                    {
                        let kind = if HOP_BY_HOP.contains(&hname.as_str()) {
                            "a hop-by-hop header (never forwarded)"
                        } else if IDENTITY_HEADERS.contains(&hname.as_str()) {
                            "an identity header (gatehouse sets it from the token)"
                        } else if ALWAYS_STRIPPED.contains(&hname.as_str()) {
                            "a header backends trust for the method, URL, client address or certificate (gatehouse strips it)"
                        } else {
                            "a header gatehouse sets or relies on"
                        };
                        self.err(
                            fr.header.span(),
                            fk("header"),
                            format!(
                                "{:?} is {kind}; pick another name (e.g. X-Row-Filter)",
                                fr.header.get_ref()
                            ),
                        );
                        ok = false;
                        Some(h)
                    }
                    Ok(h) => Some(h),
                    Err(_) => {
                        self.err(
                            fr.header.span(),
                            fk("header"),
                            format!(
                                "{:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only: no spaces, ':' or other punctuation); pick a name such as X-Row-Filter",
                                fr.header.get_ref()
                            ),
                        );
                        ok = false;
                        None
                    }
                };
                if !seen_headers.insert(hname.clone()) {
                    self.err(
                        fr.header.span(),
                        fk("header"),
                        format!(
                            "{:?} is set twice on this route; one header, one filter",
                            fr.header.get_ref()
                        ),
                    );
                    ok = false;
                }
                let template = match Template::parse(fr.value.get_ref()) {
                    Ok(t) if t.placeholders().next().is_none() => {
                        self.warn(
                            fr.value.span(),
                            &fk("value"),
                            "has no placeholder, so every caller gets the same filter; use {claims.PATH}, {sub}, {client_id}, {roles} or {issuer}".to_string(),
                        );
                        Some(t)
                    }
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.err(fr.value.span(), fk("value"), e);
                        ok = false;
                        None
                    }
                };
                let mut except = Vec::new();
                for role in &fr.except_roles {
                    if !raw.roles.contains_key(role.get_ref()) {
                        self.err(
                            role.span(),
                            fk("except_roles"),
                            unknown_role(role.get_ref(), &role_names),
                        );
                        ok = false;
                    }
                    except.push(role.get_ref().clone());
                }
                if let (Some(header), Some(template)) = (header, template) {
                    row_filters.push(RowFilter {
                        header,
                        template,
                        except_roles: except,
                    });
                }
            }
            if auth == AuthMode::Required {
                // An opaque token says nothing about its issuer: a route open to several
                // introspecting issuers would POST every caller's token to each of them.
                let introspecting: Vec<&str> = raw
                    .issuers
                    .iter()
                    .filter(|(n, i)| {
                        i.get_ref().introspection.is_some()
                            && route_issuers.as_ref().is_none_or(|l| l.contains(n))
                    })
                    .map(|(n, _)| n.as_str())
                    .collect();
                if introspecting.len() > 1 {
                    self.err(
                        rs.span(),
                        format!("routes[{i}]"),
                        format!(
                            "opaque tokens on this route would be sent to {} introspection endpoints ({}); restrict it with issuers = [\"{}\"] (at most one issuer with introspection per route)",
                            introspecting.len(),
                            introspecting.join(", "),
                            introspecting[0]
                        ),
                    );
                    ok = false;
                }
            }
            let (line, _) = self.line_col(rs.span().start);
            let route = Route {
                index: i,
                name,
                host,
                path_prefix: normalize_prefix(prefix),
                methods,
                upstream: r.upstream.get_ref().clone(),
                issuers: route_issuers,
                allow_roles,
                require_scopes,
                require_mfa,
                forward_token: r.forward_token.unwrap_or(false),
                auth,
                row_filters,
                line,
            };
            if ok {
                if let Some(earlier) = out.iter().find(|e| route.shadowed_by(e)) {
                    self.err(
                        rs.span(),
                        format!("routes[{i}]"),
                        format!(
                            "route {:?} is never reached: routes[{}] ({:?}) matches every request it would; move it above routes[{}] or narrow it",
                            route.name, earlier.index, earlier.name, earlier.index
                        ),
                    );
                }
                out.push(route);
            }
        }
        out
    }
}
