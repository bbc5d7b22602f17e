//! `[issuers.NAME]`: key source, audiences, algorithm allowlist, claim mapping, introspection.

use super::*;

/// The documented key of field `f` of issuer `name`: `issuers.corp.audiences`.
fn key(name: &str, f: &str) -> String {
    format!("issuers.{name}.{f}")
}

/// The key sources an issuer may name, for messages.
const KEY_SOURCES: &str = "discovery = true, jwks_uri = \"https://...\" or jwks_file = \"path\"";

impl Validator<'_> {
    /// One issuer: each field on its own, in file-documented order; `None` when any is in
    /// error.
    pub(super) fn issuer(&mut self, name: &str, s: &S<RawIssuer>) -> Option<IssuerSettings> {
        let r = s.get_ref();
        let mut ok = true;
        let iss = r.issuer.get_ref().clone();
        if !iss.starts_with("https://") {
            self.err(
                r.issuer.span(),
                key(name, "issuer"),
                format!("{iss:?} must be an https:// URL (the exact `iss` of the tokens)"),
            );
            ok = false;
        }
        let keys = self.key_source(name, s);
        let audiences = self.audiences(name, s, &mut ok);
        let algorithms = self.algorithms(name, s, &mut ok);
        let ca_pem = r.ca.as_ref().and_then(|c| {
            self.ca(c, &key(name, "ca"), format!("issuer.{name}.ca"))
                .map(|(pem, _)| pem)
        });
        if r.ca.is_some() && ca_pem.is_none() {
            ok = false;
        }
        let jwks_refresh_s = self.jwks_refresh_s(name, r, &mut ok);
        let leeway_s = self.leeway_s(name, r, &mut ok);
        let introspection = self.introspection(name, r, &mut ok);
        let claim = |c: &Option<S<String>>, d: &str| {
            c.as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| d.to_string())
        };
        let settings = IssuerSettings {
            name: name.to_string(),
            issuer: iss,
            keys: keys?,
            audiences,
            algorithms,
            leeway_s,
            ca_pem,
            jwks_refresh_s,
            roles_claim: claim(&r.roles_claim, "roles"),
            groups_claim: claim(&r.groups_claim, "groups"),
            scopes_claim: claim(&r.scopes_claim, "scope"),
            client_id_claim: claim(&r.client_id_claim, "client_id"),
            introspection,
        };
        ok.then_some(settings)
    }

    /// Exactly one of `discovery = true`, `jwks_uri`, `jwks_file`.
    fn key_source(&mut self, name: &str, s: &S<RawIssuer>) -> Option<KeySource> {
        let r = s.get_ref();
        let discovery = r.discovery.as_ref().map(|d| *d.get_ref()).unwrap_or(false);
        match (discovery, &r.jwks_uri, &r.jwks_file) {
            (true, None, None) => Some(KeySource::Discovery),
            (false, Some(u), None) => {
                if u.get_ref().starts_with("https://") {
                    Some(KeySource::JwksUri(u.get_ref().clone()))
                } else {
                    self.err(u.span(), key(name, "jwks_uri"), "must be an https:// URL");
                    None
                }
            }
            (false, None, Some(f)) => self.jwks_file(name, f),
            _ => {
                self.conflicting_key_sources(name, s);
                None
            }
        }
    }

    /// `jwks_file`, parsed exactly as the verifier will: a file whose keys are all
    /// unusable (wrong type, `use = "enc"`, short RSA) is refused here rather than
    /// locking every caller out at run time.
    fn jwks_file(&mut self, name: &str, f: &S<String>) -> Option<KeySource> {
        let p = self.file(f.get_ref());
        let message = match crate::files::read_bounded(&p) {
            Ok(b) => match crate::auth::jwks::parse_jwks(name, &b) {
                Ok(set) if !set.keys.is_empty() => return Some(KeySource::JwksFile(p)),
                Ok(_) => format!(
                    "{} holds no usable signature key; it must be a JWKS {{\"keys\": [...]}} with RSA (2048+ bits), EC P-256/P-384 or Ed25519 keys",
                    p.display()
                ),
                Err(e) => format!("{} is not a JWKS: {e}", p.display()),
            },
            Err(e) => format!("cannot read {}: {e}; point it at a JWKS file", p.display()),
        };
        self.err(f.span(), key(name, "jwks_file"), message);
        None
    }

    /// None or several key sources: point at the second source written, or at the table
    /// when none is.
    fn conflicting_key_sources(&mut self, name: &str, s: &S<RawIssuer>) {
        let r = s.get_ref();
        let mut given: Vec<(&str, Range<usize>)> = [
            (
                "discovery",
                r.discovery
                    .as_ref()
                    .filter(|d| *d.get_ref())
                    .map(|d| d.span()),
            ),
            ("jwks_uri", r.jwks_uri.as_ref().map(|u| u.span())),
            ("jwks_file", r.jwks_file.as_ref().map(|f| f.span())),
        ]
        .into_iter()
        .filter_map(|(k, span)| span.map(|s| (k, s)))
        .collect();
        given.sort_by_key(|(_, span)| span.start);
        match given.as_slice() {
            [first, second, ..] => self.err(
                second.1.clone(),
                key(name, second.0),
                format!(
                    "conflicts with {}: set exactly one key source ({KEY_SOURCES}); remove the other",
                    first.0
                ),
            ),
            _ => self.err(
                s.span(),
                format!("issuers.{name}"),
                format!("has no key source: set exactly one of {KEY_SOURCES}"),
            ),
        }
    }

    /// `audiences`: required, not empty.
    fn audiences(&mut self, name: &str, s: &S<RawIssuer>, ok: &mut bool) -> Vec<String> {
        match s.get_ref().audiences.as_ref() {
            Some(a) if !a.get_ref().is_empty() => a.get_ref().clone(),
            Some(a) => {
                self.err(
                    a.span(),
                    key(name, "audiences"),
                    "must list at least one audience; tokens for any audience would pass otherwise",
                );
                *ok = false;
                vec![]
            }
            None => {
                self.err(
                    s.span(),
                    key(name, "audiences"),
                    "missing; add audiences = [\"api://your-api\"] (the `aud` your tokens carry)",
                );
                *ok = false;
                vec![]
            }
        }
    }

    /// `algorithms`: asymmetric JWS algorithms only; absent means the defaults.
    fn algorithms(
        &mut self,
        name: &str,
        s: &S<RawIssuer>,
        ok: &mut bool,
    ) -> Vec<jsonwebtoken::Algorithm> {
        let Some(list) = s.get_ref().algorithms.as_ref() else {
            return DEFAULT_ALGS
                .iter()
                .map(|a| {
                    a.parse::<jsonwebtoken::Algorithm>()
                        .expect("default algorithms parse")
                })
                .collect();
        };
        if list.is_empty() {
            self.err(
                s.span(),
                key(name, "algorithms"),
                "is empty; remove it for the default (RS256, PS256, ES256, EdDSA) or list some",
            );
            *ok = false;
        }
        let mut algorithms = Vec::new();
        for a in list {
            match a.get_ref().as_str() {
                n if n.starts_with("HS") || n.eq_ignore_ascii_case("none") => {
                    self.err(a.span(), key(name, "algorithms"), format!("{n:?} is not allowed: only asymmetric JWS algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"));
                    *ok = false;
                }
                n => match n.parse::<jsonwebtoken::Algorithm>() {
                    Ok(alg) => algorithms.push(alg),
                    Err(_) => {
                        self.err(a.span(), key(name, "algorithms"), format!("unknown algorithm {n:?}; use RS256/384/512, PS256/384/512, ES256/384 or EdDSA"));
                        *ok = false;
                    }
                },
            }
        }
        algorithms
    }

    /// `jwks_refresh_s`: at least 30; default 600.
    fn jwks_refresh_s(&mut self, name: &str, r: &RawIssuer, ok: &mut bool) -> u64 {
        match r.jwks_refresh_s.as_ref() {
            None => 600,
            Some(v) if *v.get_ref() < 30 => {
                self.err(
                    v.span(),
                    key(name, "jwks_refresh_s"),
                    "must be at least 30 seconds",
                );
                *ok = false;
                600
            }
            Some(v) => *v.get_ref(),
        }
    }

    /// `leeway_s`: at most [`crate::config::MAX_LEEWAY_S`]; default 30.
    fn leeway_s(&mut self, name: &str, r: &RawIssuer, ok: &mut bool) -> u64 {
        match r.leeway_s.as_ref() {
            None => 30,
            Some(v) if *v.get_ref() > crate::config::MAX_LEEWAY_S => {
                self.err(
                    v.span(),
                    key(name, "leeway_s"),
                    format!(
                        "{} is more than the maximum of {} seconds: that accepts expired tokens for minutes; fix the clocks (NTP) and lower it",
                        v.get_ref(),
                        crate::config::MAX_LEEWAY_S
                    ),
                );
                *ok = false;
                30
            }
            Some(v) => *v.get_ref(),
        }
    }

    /// `introspection`: an https URL and a client secret from the environment or a file.
    fn introspection(&mut self, name: &str, r: &RawIssuer, ok: &mut bool) -> Option<Introspection> {
        let ir = r.introspection.as_ref()?.get_ref();
        if !ir.url.get_ref().starts_with("https://") {
            self.err(
                ir.url.span(),
                key(name, "introspection.url"),
                "must be an https:// URL",
            );
            *ok = false;
        }
        match self.secret(&ir.client_secret, &key(name, "introspection.client_secret")) {
            Some(sec) => Some(Introspection {
                url: ir.url.get_ref().clone(),
                client_id: ir.client_id.clone(),
                client_secret: String::from_utf8_lossy(&sec).into_owned(),
            }),
            None => {
                *ok = false;
                None
            }
        }
    }
}
