//! `[issuers.NAME]`: key source, audiences, algorithm allowlist, claim mapping, introspection.

use super::*;

impl Validator<'_> {
    pub(super) fn issuer(&mut self, name: &str, s: &S<RawIssuer>) -> Option<IssuerSettings> {
        let r = s.get_ref();
        let k = |f: &str| format!("issuers.{name}.{f}");
        let mut ok = true;
        let iss = r.issuer.get_ref().clone();
        if !iss.starts_with("https://") {
            self.err(
                r.issuer.span(),
                k("issuer"),
                format!("{iss:?} must be an https:// URL (the exact `iss` of the tokens)"),
            );
            ok = false;
        }
        let discovery = r.discovery.as_ref().map(|d| *d.get_ref()).unwrap_or(false);
        let sources = [discovery, r.jwks_uri.is_some(), r.jwks_file.is_some()];
        let keys = match sources {
            [true, false, false] => Some(KeySource::Discovery),
            [false, true, false] => {
                let u = r.jwks_uri.as_ref().unwrap();
                if u.get_ref().starts_with("https://") {
                    Some(KeySource::JwksUri(u.get_ref().clone()))
                } else {
                    self.err(u.span(), k("jwks_uri"), "must be an https:// URL");
                    None
                }
            }
            [false, false, true] => {
                let f = r.jwks_file.as_ref().unwrap();
                let p = self.file(f.get_ref());
                match crate::config::files::read_bounded(&p) {
                    // Parsed exactly as the verifier will: a file whose keys are all
                    // unusable (wrong type, `use = "enc"`, short RSA) is refused here
                    // rather than locking every caller out at run time.
                    Ok(b) => match crate::auth::jwks::parse_jwks(name, &b) {
                        Ok(set) if !set.keys.is_empty() => Some(KeySource::JwksFile(p)),
                        Ok(_) => {
                            self.err(
                                f.span(),
                                k("jwks_file"),
                                format!(
                                    "{} holds no usable signature key; it must be a JWKS {{\"keys\": [...]}} with RSA (2048+ bits), EC P-256/P-384 or Ed25519 keys",
                                    p.display()
                                ),
                            );
                            None
                        }
                        Err(e) => {
                            self.err(
                                f.span(),
                                k("jwks_file"),
                                format!("{} is not a JWKS: {e}", p.display()),
                            );
                            None
                        }
                    },
                    Err(e) => {
                        self.err(
                            f.span(),
                            k("jwks_file"),
                            format!("cannot read {}: {e}; point it at a JWKS file", p.display()),
                        );
                        None
                    }
                }
            }
            _ => {
                // Point at the second source written, or at the table when none is.
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
                let sources =
                    "discovery = true, jwks_uri = \"https://...\" or jwks_file = \"path\"";
                match given.as_slice() {
                    [first, second, ..] => self.err(
                        second.1.clone(),
                        k(second.0),
                        format!("conflicts with {}: set exactly one key source ({sources}); remove the other", first.0),
                    ),
                    _ => self.err(
                        s.span(),
                        format!("issuers.{name}"),
                        format!("has no key source: set exactly one of {sources}"),
                    ),
                }
                None
            }
        };
        let audiences = match r.audiences.as_ref() {
            Some(a) if !a.get_ref().is_empty() => a.get_ref().clone(),
            Some(a) => {
                self.err(
                    a.span(),
                    k("audiences"),
                    "must list at least one audience; tokens for any audience would pass otherwise",
                );
                ok = false;
                vec![]
            }
            None => {
                self.err(
                    s.span(),
                    k("audiences"),
                    "missing; add audiences = [\"api://your-api\"] (the `aud` your tokens carry)",
                );
                ok = false;
                vec![]
            }
        };
        let mut algorithms = Vec::new();
        match r.algorithms.as_ref() {
            None => {
                for a in DEFAULT_ALGS {
                    algorithms.push(
                        a.parse::<jsonwebtoken::Algorithm>()
                            .expect("default algorithms parse"),
                    );
                }
            }
            Some(list) => {
                if list.is_empty() {
                    self.err(s.span(), k("algorithms"), "is empty; remove it for the default (RS256, PS256, ES256, EdDSA) or list some");
                    ok = false;
                }
                for a in list {
                    match a.get_ref().as_str() {
                        n if n.starts_with("HS") || n.eq_ignore_ascii_case("none") => {
                            self.err(a.span(), k("algorithms"), format!("{n:?} is not allowed: only asymmetric JWS algorithms (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"));
                            ok = false;
                        }
                        n => match n.parse::<jsonwebtoken::Algorithm>() {
                            Ok(alg) => algorithms.push(alg),
                            Err(_) => {
                                self.err(a.span(), k("algorithms"), format!("unknown algorithm {n:?}; use RS256/384/512, PS256/384/512, ES256/384 or EdDSA"));
                                ok = false;
                            }
                        },
                    }
                }
            }
        }
        let ca_pem = r.ca.as_ref().and_then(|c| {
            self.ca(c, &k("ca"), format!("issuer.{name}.ca"))
                .map(|(pem, _)| pem)
        });
        if r.ca.is_some() && ca_pem.is_none() {
            ok = false;
        }
        let jwks_refresh_s = match r.jwks_refresh_s.as_ref() {
            None => 600,
            Some(v) if *v.get_ref() < 30 => {
                self.err(v.span(), k("jwks_refresh_s"), "must be at least 30 seconds");
                ok = false;
                600
            }
            Some(v) => *v.get_ref(),
        };
        let leeway_s = match r.leeway_s.as_ref() {
            None => 30,
            Some(v) if *v.get_ref() > crate::config::MAX_LEEWAY_S => {
                self.err(
                    v.span(),
                    k("leeway_s"),
                    format!(
                        "{} is more than the maximum of {} seconds: that accepts expired tokens for minutes; fix the clocks (NTP) and lower it",
                        v.get_ref(),
                        crate::config::MAX_LEEWAY_S
                    ),
                );
                ok = false;
                30
            }
            Some(v) => *v.get_ref(),
        };
        let claim = |c: &Option<S<String>>, d: &str| {
            c.as_ref()
                .map(|c| c.get_ref().clone())
                .unwrap_or_else(|| d.to_string())
        };
        let introspection = match r.introspection.as_ref() {
            None => None,
            Some(i) => {
                let ir = i.get_ref();
                if !ir.url.get_ref().starts_with("https://") {
                    self.err(
                        ir.url.span(),
                        k("introspection.url"),
                        "must be an https:// URL",
                    );
                    ok = false;
                }
                match self.secret(&ir.client_secret, &k("introspection.client_secret")) {
                    Some(sec) => Some(Introspection {
                        url: ir.url.get_ref().clone(),
                        client_id: ir.client_id.clone(),
                        client_secret: String::from_utf8_lossy(&sec).into_owned(),
                    }),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
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
}
