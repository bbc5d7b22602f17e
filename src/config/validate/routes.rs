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

/// What every route is checked against: the names the rest of the config declares.
struct Known<'r> {
    raw: &'r RawConfig,
    role_names: Vec<&'r String>,
    /// Every row-filter header of the config, dashed: another filter's underscore
    /// spelling of one of these would reach a CGI-style backend as the same variable.
    filter_headers: HashSet<String>,
    /// No issuer is configured (or none validated), so no route can check a token.
    no_issuers: bool,
}

impl<'r> Known<'r> {
    fn new(raw: &'r RawConfig, issuers: &[IssuerSettings]) -> Self {
        Known {
            raw,
            role_names: raw.roles.keys().collect(),
            filter_headers: raw
                .routes
                .iter()
                .flat_map(|r| r.get_ref().row_filters.iter())
                .map(|f| f.get_ref().header.get_ref().to_ascii_lowercase())
                .filter(|h| !h.contains('_'))
                .collect(),
            no_issuers: issuers.is_empty() && raw.issuers.is_empty(),
        }
    }
}

/// "a, b" or "none configured".
fn known_list<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let keys: Vec<&str> = keys.map(|s| s.as_str()).collect();
    if keys.is_empty() {
        "none configured".to_string()
    } else {
        keys.join(", ")
    }
}

/// The documented key of field `f` of route `i`: `routes[2].upstream`.
fn key(i: usize, f: &str) -> String {
    format!("routes[{i}].{f}")
}

impl Validator<'_> {
    /// Every route on its own (its fields and what they name), then the checks across
    /// routes (unique names, routes an earlier one hides).
    pub(super) fn routes(&mut self, raw: &RawConfig, issuers: &[IssuerSettings]) -> Vec<Route> {
        let known = Known::new(raw, issuers);
        let checked: Vec<Option<Route>> = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, rs)| self.route(&known, i, rs))
            .collect();
        self.across_routes(raw, checked)
    }

    /// One route; `None` when any of its fields is in error.
    fn route(&mut self, known: &Known, i: usize, rs: &S<RawRoute>) -> Option<Route> {
        let r = rs.get_ref();
        let mut ok = true;
        let name = r.name.get_ref().clone();
        if name.is_empty() {
            self.err(r.name.span(), key(i, "name"), "must not be empty");
            ok = false;
        }
        let host = self.route_host(r, i, &mut ok);
        self.route_path_prefix(r, i, &mut ok);
        let methods = self.route_methods(r, i, &mut ok);
        self.route_upstream(known, r, i, &mut ok);
        let route_issuers = self.route_issuers(known, r, i, &mut ok);
        let allow_roles = self.route_allow_roles(known, r, i, &mut ok);
        let auth = self.route_auth(r, i, &mut ok);
        match auth {
            AuthMode::None => self.public_route_keys(r, i, &mut ok),
            _ if known.no_issuers => {
                self.err(rs.span(), format!("routes[{i}]"), "needs a token but no [issuers.NAME] is configured; add one or set auth = \"none\"");
                ok = false;
            }
            _ => {}
        }
        let row_filters = self.row_filters(known, r, i, &mut ok);
        if auth == AuthMode::Required {
            self.introspection_fan_out(known, rs, i, route_issuers.as_deref(), &mut ok);
        }
        let (line, _) = self.line_col(rs.span().start);
        ok.then(|| Route {
            index: i,
            name: name.into(),
            host,
            path_prefix: normalize_prefix(r.path_prefix.get_ref()),
            methods,
            upstream: r.upstream.get_ref().as_str().into(),
            issuers: route_issuers,
            allow_roles,
            require_scopes: r
                .require_scopes
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            require_mfa: r
                .require_mfa
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(false),
            forward_token: r.forward_token.unwrap_or(false),
            auth,
            row_filters,
            line,
        })
    }

    /// Across routes, in file order: a name used twice, and a route that an earlier one
    /// matches every request of. Returns the routes that pass.
    fn across_routes(&mut self, raw: &RawConfig, checked: Vec<Option<Route>>) -> Vec<Route> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<Route> = Vec::new();
        for ((i, rs), route) in raw.routes.iter().enumerate().zip(checked) {
            let r = rs.get_ref();
            let name = r.name.get_ref();
            if !name.is_empty() {
                if let Some(prev) = names.insert(name, i) {
                    self.err(r.name.span(), key(i, "name"), format!("duplicate route name {name:?} (also routes[{prev}]); route names must be unique"));
                    continue;
                }
            }
            let Some(route) = route else { continue };
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
        out
    }

    /// `host`, normalised exactly as request hosts are, so matching is plain equality.
    fn route_host(&mut self, r: &RawRoute, i: usize, ok: &mut bool) -> Option<String> {
        let h = r.host.as_ref()?;
        let raw = h.get_ref();
        if raw.is_empty() {
            self.err(
                h.span(),
                key(i, "host"),
                "must not be empty; remove it to match any host",
            );
            *ok = false;
            return Some(String::new());
        }
        match crate::policy::route::normalize_host(raw) {
            Ok(v) => Some(v),
            Err(why) => {
                self.err(
                    h.span(),
                    key(i, "host"),
                    format!("{raw:?} is not a valid host ({why}); write a host name such as \"api.example.com\" (a port is ignored)"),
                );
                *ok = false;
                Some(String::new())
            }
        }
    }

    /// `path_prefix`: absolute, and a path requests can match.
    fn route_path_prefix(&mut self, r: &RawRoute, i: usize, ok: &mut bool) {
        let prefix = r.path_prefix.get_ref();
        if !prefix.starts_with('/') {
            self.err(
                r.path_prefix.span(),
                key(i, "path_prefix"),
                format!("{prefix:?} must start with '/'"),
            );
            *ok = false;
        } else if crate::policy::route::check_path(prefix).is_err() && prefix != "/" {
            self.err(r.path_prefix.span(), key(i, "path_prefix"), format!("{prefix:?} holds '//', dot segments or encoded separators, which requests can never match"));
            *ok = false;
        }
    }

    /// `methods`: known, upper case, each once; absent means every method.
    fn route_methods(&mut self, r: &RawRoute, i: usize, ok: &mut bool) -> Option<Vec<String>> {
        let ms = r.methods.as_ref()?;
        if ms.get_ref().is_empty() {
            self.err(
                ms.span(),
                key(i, "methods"),
                "is empty, so the route matches nothing; remove it to allow every method",
            );
            *ok = false;
        }
        let mut v = Vec::new();
        for m in ms.get_ref() {
            let up = m.get_ref().to_ascii_uppercase();
            // A typo must not silently drop a method from a route (a DELETE would then
            // fall through to another route or a 404).
            if !KNOWN_METHODS.contains(&up.as_str()) {
                let known: Vec<String> = KNOWN_METHODS.iter().map(|s| s.to_string()).collect();
                let hint = super::super::raw::closest(&up, &known)
                    .map(|c| format!("did you mean \"{c}\"? "))
                    .unwrap_or_default();
                self.err(
                    m.span(),
                    key(i, "methods"),
                    format!(
                        "unknown method {:?}; {hint}use {}",
                        m.get_ref(),
                        KNOWN_METHODS.join(", ")
                    ),
                );
                *ok = false;
            } else if !v.contains(&up) {
                v.push(up);
            }
        }
        Some(v)
    }

    /// `upstream` names a declared `[upstreams.NAME]`.
    fn route_upstream(&mut self, known: &Known, r: &RawRoute, i: usize, ok: &mut bool) {
        if !known.raw.upstreams.contains_key(r.upstream.get_ref()) {
            self.err(
                r.upstream.span(),
                key(i, "upstream"),
                format!(
                    "unknown upstream {:?} (known: {})",
                    r.upstream.get_ref(),
                    known_list(known.raw.upstreams.keys())
                ),
            );
            *ok = false;
        }
    }

    /// `issuers` name declared `[issuers.NAME]`; absent means every issuer.
    fn route_issuers(
        &mut self,
        known: &Known,
        r: &RawRoute,
        i: usize,
        ok: &mut bool,
    ) -> Option<Vec<String>> {
        let list = r.issuers.as_ref()?;
        let mut v = Vec::new();
        for is in list {
            if !known.raw.issuers.contains_key(is.get_ref()) {
                self.err(
                    is.span(),
                    key(i, "issuers"),
                    format!(
                        "unknown issuer {:?} (known: {})",
                        is.get_ref(),
                        known_list(known.raw.issuers.keys())
                    ),
                );
                *ok = false;
            }
            v.push(is.get_ref().clone());
        }
        Some(v)
    }

    /// `allow_roles` name declared `[roles.NAME]`.
    fn route_allow_roles(
        &mut self,
        known: &Known,
        r: &RawRoute,
        i: usize,
        ok: &mut bool,
    ) -> Vec<String> {
        let mut allow_roles = Vec::new();
        for role in r.allow_roles.iter().flat_map(|ar| ar.get_ref()) {
            if !known.raw.roles.contains_key(role.get_ref()) {
                self.err(
                    role.span(),
                    key(i, "allow_roles"),
                    unknown_role(role.get_ref(), &known.role_names),
                );
                *ok = false;
            }
            allow_roles.push(role.get_ref().clone());
        }
        allow_roles
    }

    /// `auth`: `required` (the default) or `none`.
    fn route_auth(&mut self, r: &RawRoute, i: usize, ok: &mut bool) -> AuthMode {
        match r.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
            None | Some(("required", _)) => AuthMode::Required,
            Some(("none", _)) => AuthMode::None,
            Some((other, span)) => {
                self.err(
                    span,
                    key(i, "auth"),
                    format!("{other:?} is not a mode; use \"required\" or \"none\""),
                );
                *ok = false;
                AuthMode::Required
            }
        }
    }

    /// A public route (`auth = "none"`) has no caller: keys about callers are errors.
    fn public_route_keys(&mut self, r: &RawRoute, i: usize, ok: &mut bool) {
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
                self.err(span, key(i, f), "a public route (auth = \"none\") checks no token; remove this key or set auth = \"required\"");
                *ok = false;
            }
        }
        if let Some(f) = r.row_filters.first() {
            self.err(f.span(), key(i, "row_filters"), "a public route (auth = \"none\") has no caller to filter for; remove the filters or set auth = \"required\"");
            *ok = false;
        }
        if let Some(is) = r.issuers.as_ref().and_then(|l| l.first()) {
            self.err(is.span(), key(i, "issuers"), "a public route (auth = \"none\") checks no token; remove issuers or set auth = \"required\"");
            *ok = false;
        }
    }

    /// `row_filters`: each header a name gatehouse does not own, once per route; each
    /// value a template; each exempt role declared.
    fn row_filters(
        &mut self,
        known: &Known,
        r: &RawRoute,
        i: usize,
        ok: &mut bool,
    ) -> Vec<RowFilter> {
        let mut row_filters = Vec::new();
        let mut seen_headers = HashSet::new();
        for (j, f) in r.row_filters.iter().enumerate() {
            let fr = f.get_ref();
            let fk = |x: &str| format!("routes[{i}].row_filters[{j}].{x}");
            let header = self.row_filter_header(known, fr, &fk("header"), ok);
            let hname = fr.header.get_ref().to_ascii_lowercase();
            if !seen_headers.insert(hname) {
                self.err(
                    fr.header.span(),
                    fk("header"),
                    format!(
                        "{:?} is set twice on this route; one header, one filter",
                        fr.header.get_ref()
                    ),
                );
                *ok = false;
            }
            let template = self.row_filter_template(fr, &fk("value"), ok);
            let mut except = Vec::new();
            for role in &fr.except_roles {
                if !known.raw.roles.contains_key(role.get_ref()) {
                    self.err(
                        role.span(),
                        fk("except_roles"),
                        unknown_role(role.get_ref(), &known.role_names),
                    );
                    *ok = false;
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
        row_filters
    }

    /// A row filter's `header`: an HTTP token that gatehouse does not set, strip or rely
    /// on, in any spelling a CGI-style backend reads as the same variable.
    fn row_filter_header(
        &mut self,
        known: &Known,
        fr: &RawRowFilter,
        fk: &str,
        ok: &mut bool,
    ) -> Option<HeaderName> {
        let hname = fr.header.get_ref().to_ascii_lowercase();
        let dashed = hname.replace('_', "-");
        let owned_elsewhere = hname.contains('_')
            && (reserved_header(&dashed)
                || ALWAYS_STRIPPED.contains(&dashed.as_str())
                || known.filter_headers.contains(&dashed));
        match HeaderName::from_bytes(hname.as_bytes()) {
            Ok(h) if owned_elsewhere => {
                self.err(
                    fr.header.span(),
                    fk,
                    format!(
                        "{:?} is an underscore spelling of {dashed}, a header gatehouse owns: CGI-style backends (WSGI, PHP, Rack) read both as one variable; pick another name",
                        fr.header.get_ref()
                    ),
                );
                *ok = false;
                Some(h)
            }
            Ok(h) if reserved_header(&hname) || ALWAYS_STRIPPED.contains(&hname.as_str()) => {
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
                    fk,
                    format!(
                        "{:?} is {kind}; pick another name (e.g. X-Row-Filter)",
                        fr.header.get_ref()
                    ),
                );
                *ok = false;
                Some(h)
            }
            Ok(h) => Some(h),
            Err(_) => {
                self.err(
                    fr.header.span(),
                    fk,
                    format!(
                        "{:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only: no spaces, ':' or other punctuation); pick a name such as X-Row-Filter",
                        fr.header.get_ref()
                    ),
                );
                *ok = false;
                None
            }
        }
    }

    /// A row filter's `value`: a template; one without placeholders is a warning.
    fn row_filter_template(
        &mut self,
        fr: &RawRowFilter,
        fk: &str,
        ok: &mut bool,
    ) -> Option<Template> {
        match Template::parse(fr.value.get_ref()) {
            Ok(t) if t.placeholders().next().is_none() => {
                self.warn(
                    fr.value.span(),
                    fk,
                    "has no placeholder, so every caller gets the same filter; use {claims.PATH}, {sub}, {client_id}, {roles} or {issuer}".to_string(),
                );
                Some(t)
            }
            Ok(t) => Some(t),
            Err(e) => {
                self.err(fr.value.span(), fk, e.to_string());
                *ok = false;
                None
            }
        }
    }

    /// An opaque token says nothing about its issuer: a route open to several
    /// introspecting issuers would POST every caller's token to each of them.
    fn introspection_fan_out(
        &mut self,
        known: &Known,
        rs: &S<RawRoute>,
        i: usize,
        route_issuers: Option<&[String]>,
        ok: &mut bool,
    ) {
        let introspecting: Vec<&str> = known
            .raw
            .issuers
            .iter()
            .filter(|(n, is)| {
                is.get_ref().introspection.is_some() && route_issuers.is_none_or(|l| l.contains(n))
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
            *ok = false;
        }
    }
}
