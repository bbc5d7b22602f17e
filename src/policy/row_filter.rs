//! Row-filter templates: parsed once at config load, rendered per decision.
//!
//! A template is literal text with placeholders `{claims.PATH}`, `{sub}`, `{client_id}`,
//! `{roles}` and `{issuer}`. Every substituted value is percent-encoded (RFC 3986
//! unreserved characters pass unchanged) and array elements are encoded one by one and
//! joined with `,`, so a claim value can never carry a CR/LF, a second header or an
//! unencoded delimiter to the backend. A placeholder with no value is an error that the
//! caller turns into a 403 `missing_claim`: a filter is never silently dropped.

use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one value for a header (RFC 3986 unreserved pass unchanged).
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, ENCODE).to_string()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placeholder {
    Claim(String),
    Sub,
    ClientId,
    Roles,
    Issuer,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Claim(p) => write!(f, "{{claims.{p}}}"),
            Placeholder::Sub => f.write_str("{sub}"),
            Placeholder::ClientId => f.write_str("{client_id}"),
            Placeholder::Roles => f.write_str("{roles}"),
            Placeholder::Issuer => f.write_str("{issuer}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Placeholder),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// The values a template can draw on, supplied by the caller's identity.
pub trait Values {
    /// The claim at a dotted path, if present and not null.
    fn claim(&self, path: &str) -> Option<&serde_json::Value>;
    fn sub(&self) -> Option<&str>;
    fn client_id(&self) -> Option<&str>;
    /// The caller's roles, sorted.
    fn roles(&self) -> &[String];
    fn issuer(&self) -> &str;
}

impl Template {
    /// Parses a template; the error says what is wrong and which forms are allowed.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = src;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            if rest.as_bytes()[i] == b'}' {
                return Err(format!(
                    "unmatched '}}' in {src:?}; placeholders are {}",
                    Self::FORMS
                ));
            }
            let after = &rest[i + 1..];
            let end = after.find('}').ok_or_else(|| {
                format!("unclosed '{{' in {src:?}; placeholders are {}", Self::FORMS)
            })?;
            let name = &after[..end];
            let ph = match name {
                "sub" => Placeholder::Sub,
                "client_id" => Placeholder::ClientId,
                "roles" => Placeholder::Roles,
                "issuer" => Placeholder::Issuer,
                _ => match name.strip_prefix("claims.") {
                    Some(path) if valid_path(path) => Placeholder::Claim(path.to_string()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}}; use one of {}",
                            Self::FORMS
                        ))
                    }
                },
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(ph));
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if let Some(c) = lit.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(format!(
                "literal text may hold only visible ASCII and spaces, found {c:?}"
            ));
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            source: src.to_string(),
            parts,
        })
    }

    pub const FORMS: &'static str = "{claims.PATH}, {sub}, {client_id}, {roles}, {issuer}";

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
    }

    /// Renders the template; `Err` names the placeholder that had no value.
    pub fn render(&self, v: &dyn Values) -> Result<String, Placeholder> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(ph) => {
                    let ok = match ph {
                        Placeholder::Claim(path) => match v.claim(path) {
                            Some(val) => push_json(&mut out, val),
                            None => false,
                        },
                        Placeholder::Sub => push_opt(&mut out, v.sub()),
                        Placeholder::ClientId => push_opt(&mut out, v.client_id()),
                        Placeholder::Issuer => push_opt(&mut out, Some(v.issuer())),
                        Placeholder::Roles => {
                            push_list(&mut out, v.roles().iter().map(String::as_str));
                            true
                        }
                    };
                    if !ok {
                        return Err(ph.clone());
                    }
                }
            }
        }
        Ok(out)
    }
}

fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '/'))
        })
}

fn push_opt(out: &mut String, v: Option<&str>) -> bool {
    match v {
        Some(s) if !s.is_empty() => {
            out.push_str(&encode(s));
            true
        }
        _ => false,
    }
}

fn push_list<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&encode(item));
    }
}

/// Scalars render as text; arrays of scalars join with `,`; null, objects, empty
/// strings and empty arrays count as missing (deny rather than filter on nothing).
fn push_json(out: &mut String, v: &serde_json::Value) -> bool {
    use serde_json::Value;
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match v {
        Value::Array(items) => {
            let vals: Option<Vec<String>> = items.iter().map(scalar).collect();
            match vals {
                Some(vals) if !vals.is_empty() => {
                    push_list(out, vals.iter().map(String::as_str));
                    true
                }
                _ => false,
            }
        }
        other => match scalar(other) {
            Some(s) => {
                out.push_str(&encode(&s));
                true
            }
            None => false,
        },
    }
}

/// Looks up a dotted path in a JSON object.
pub fn lookup<'a>(root: &'a serde_json::Value, dotted: &str) -> Option<&'a serde_json::Value> {
    let mut cur = root;
    for seg in dotted.split('.') {
        cur = cur.as_object()?.get(seg)?;
    }
    if cur.is_null() {
        None
    } else {
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct V {
        claims: serde_json::Value,
        roles: Vec<String>,
    }
    impl Values for V {
        fn claim(&self, path: &str) -> Option<&serde_json::Value> {
            lookup(&self.claims, path)
        }
        fn sub(&self) -> Option<&str> {
            self.claims.get("sub").and_then(|v| v.as_str())
        }
        fn client_id(&self) -> Option<&str> {
            None
        }
        fn roles(&self) -> &[String] {
            &self.roles
        }
        fn issuer(&self) -> &str {
            "https://idp.example/t"
        }
    }

    fn v(claims: serde_json::Value) -> V {
        V {
            claims,
            roles: vec!["admin".into(), "data steward".into()],
        }
    }

    #[test]
    fn parses_every_form() {
        let t = Template::parse(
            "region={claims.org.region};u={sub};c={client_id};r={roles};i={issuer}",
        )
        .unwrap();
        assert_eq!(t.placeholders().count(), 5);
    }

    #[test]
    fn rejects_bad_placeholders() {
        for bad in [
            "{claim.x}",
            "{claims.}",
            "{claims.a..b}",
            "{user}",
            "{sub",
            "a}b",
            "{}",
            "x\ny",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn hostile_values_are_encoded() {
        let t = Template::parse("region={claims.region}").unwrap();
        let out = t
            .render(&v(json!({"region": "eu west\r\nX-Evil: 1,\"%ü"})))
            .unwrap();
        assert_eq!(out, "region=eu%20west%0D%0AX-Evil%3A%201%2C%22%25%C3%BC");
    }

    #[test]
    fn unreserved_pass_unchanged() {
        let t = Template::parse("{claims.x}").unwrap();
        assert_eq!(t.render(&v(json!({"x": "aZ09-._~"}))).unwrap(), "aZ09-._~");
    }

    #[test]
    fn arrays_join_with_comma_elements_encoded() {
        let t = Template::parse("t={claims.tenants}").unwrap();
        let out = t.render(&v(json!({"tenants": ["a,b", "c", 7]}))).unwrap();
        assert_eq!(out, "t=a%2Cb,c,7");
    }

    #[test]
    fn roles_sorted_list() {
        let t = Template::parse("{roles}").unwrap();
        assert_eq!(t.render(&v(json!({}))).unwrap(), "admin,data%20steward");
    }

    #[test]
    fn missing_null_empty_and_object_claims_deny() {
        let t = Template::parse("r={claims.region}").unwrap();
        for claims in [
            json!({}),
            json!({"region": null}),
            json!({"region": ""}),
            json!({"region": []}),
            json!({"region": {"a": 1}}),
        ] {
            assert_eq!(
                t.render(&v(claims)),
                Err(Placeholder::Claim("region".into()))
            );
        }
        let t = Template::parse("{client_id}").unwrap();
        assert_eq!(t.render(&v(json!({}))), Err(Placeholder::ClientId));
    }

    #[test]
    fn nested_path() {
        let t = Template::parse("{claims.org.unit}").unwrap();
        assert_eq!(
            t.render(&v(json!({"org": {"unit": "u/1"}}))).unwrap(),
            "u%2F1"
        );
    }
}
