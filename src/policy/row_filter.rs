//! Row-filter templates: parsed once at config load, rendered per decision.
//!
//! A template is literal text with placeholders `{claims.PATH}`, `{sub}`, `{client_id}`,
//! `{roles}` and `{issuer}`. Every substituted value is percent-encoded (RFC 3986
//! unreserved characters pass unchanged) and array elements are encoded one by one and
//! joined with `,`, so a claim value can never carry a CR/LF, a second header or an
//! unencoded delimiter to the backend. A placeholder with no value is an error that the
//! caller turns into a 403 `missing_claim`: a filter is never silently dropped.
//!
//! Literal text is checked when the template is parsed (visible ASCII and spaces only,
//! anywhere in the value, no leading or trailing space), and the renderer checks its
//! output again whatever the template holds: a value that is empty or not visible ASCII
//! is refused ([`RenderError::Invalid`]) rather than sent, so a filter header can never
//! carry a line break or arrive empty.

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

/// Why a template did not render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError {
    /// A placeholder had no value (claim missing, null, an object, empty).
    Missing(Placeholder),
    /// The rendered value is not one gatehouse sends: empty, a byte outside visible
    /// ASCII (0x20-0x7E), or a leading or trailing space (HTTP drops those). From a
    /// parsed template only an empty `{roles}` list can lead here (`{roles}` alone, or
    /// `x {roles}`, for a caller without roles); anything else is a template built
    /// around [`Template::parse`].
    Invalid,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Missing(Placeholder::Claim(p)) => write!(f, "claim {p}"),
            RenderError::Missing(other) => write!(f, "{other}"),
            RenderError::Invalid => f.write_str("a valid header value"),
        }
    }
}

/// Whether `v` may be sent as a row-filter header value: not empty, visible ASCII and
/// spaces only (0x20-0x7E), no leading or trailing space.
pub fn valid_header_value(v: &str) -> bool {
    !v.is_empty()
        && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !v.starts_with(' ')
        && !v.ends_with(' ')
}

/// Why a row-filter template does not parse: what is wrong and which forms are allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("is empty, so the header would be sent empty; write a filter such as \"region={{claims.region}}\" (placeholders are {forms})", forms = Template::FORMS)]
    Empty,
    #[error(
        "{0:?} starts or ends with white space, which HTTP drops from header values; remove it"
    )]
    EdgeSpace(String),
    #[error("unmatched '}}' in {0:?}; placeholders are {forms}", forms = Template::FORMS)]
    UnmatchedClose(String),
    #[error("unclosed '{{' in {0:?}; placeholders are {forms}", forms = Template::FORMS)]
    Unclosed(String),
    #[error("unknown placeholder {{{0}}}; use one of {forms}", forms = Template::FORMS)]
    UnknownPlaceholder(String),
    #[error("literal text may hold only visible ASCII and spaces (0x20-0x7E), found {found:?} in {src:?}; remove it (claim values are percent-encoded, literal text is sent as written)")]
    BadLiteral { found: char, src: String },
}

/// Literal template text: visible ASCII and spaces only.
fn check_literal(src: &str, lit: &str) -> Result<(), TemplateError> {
    match lit.chars().find(|c| !(' '..='~').contains(c)) {
        Some(found) => Err(TemplateError::BadLiteral {
            found,
            src: src.to_string(),
        }),
        None => Ok(()),
    }
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
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        if src.is_empty() {
            return Err(TemplateError::Empty);
        }
        if src.starts_with(|c: char| c.is_whitespace())
            || src.ends_with(|c: char| c.is_whitespace())
        {
            return Err(TemplateError::EdgeSpace(src.to_string()));
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = src;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            if rest.as_bytes()[i] == b'}' {
                return Err(TemplateError::UnmatchedClose(src.to_string()));
            }
            let after = &rest[i + 1..];
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(src.to_string()))?;
            let name = &after[..end];
            let ph = match name {
                "sub" => Placeholder::Sub,
                "client_id" => Placeholder::ClientId,
                "roles" => Placeholder::Roles,
                "issuer" => Placeholder::Issuer,
                _ => match name.strip_prefix("claims.") {
                    Some(path) if valid_path(path) => Placeholder::Claim(path.to_string()),
                    _ => return Err(TemplateError::UnknownPlaceholder(name.to_string())),
                },
            };
            if !lit.is_empty() {
                check_literal(src, &lit)?;
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(ph));
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        check_literal(src, &lit)?;
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

    /// Renders the template. `Err` names the placeholder that had no value, or says the
    /// result is not a header value to send (checked whatever the template holds).
    pub fn render(&self, v: &dyn Values) -> Result<String, RenderError> {
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
                        // No roles is an empty list (`roles=`), a value a backend can
                        // filter on; a value that is nothing but an empty list is refused
                        // below with the other empty values.
                        Placeholder::Roles => {
                            push_list(&mut out, v.roles().iter().map(String::as_str));
                            true
                        }
                    };
                    if !ok {
                        return Err(RenderError::Missing(ph.clone()));
                    }
                }
            }
        }
        if !valid_header_value(&out) {
            return Err(RenderError::Invalid);
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

    /// The messages `check` shows, word for word.
    #[test]
    fn parse_errors_say_what_is_wrong_and_the_forms() {
        let forms = Template::FORMS;
        let msg = |src: &str| Template::parse(src).unwrap_err().to_string();
        assert_eq!(msg(""), format!("is empty, so the header would be sent empty; write a filter such as \"region={{claims.region}}\" (placeholders are {forms})"));
        assert_eq!(msg(" a"), "\" a\" starts or ends with white space, which HTTP drops from header values; remove it");
        assert_eq!(
            msg("a}"),
            format!("unmatched '}}' in \"a}}\"; placeholders are {forms}")
        );
        assert_eq!(
            msg("a{sub"),
            format!("unclosed '{{' in \"a{{sub\"; placeholders are {forms}")
        );
        assert_eq!(
            msg("{user}"),
            format!("unknown placeholder {{user}}; use one of {forms}")
        );
        assert_eq!(msg("r=\u{e9}{sub}"), "literal text may hold only visible ASCII and spaces (0x20-0x7E), found '\u{e9}' in \"r=\u{e9}{sub}\"; remove it (claim values are percent-encoded, literal text is sent as written)");
    }
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
                Err(RenderError::Missing(Placeholder::Claim("region".into())))
            );
        }
        let t = Template::parse("{client_id}").unwrap();
        assert_eq!(
            t.render(&v(json!({}))),
            Err(RenderError::Missing(Placeholder::ClientId))
        );
    }

    #[test]
    fn literal_text_is_checked_before_the_first_placeholder_too() {
        // The red-team value: CR/LF before the first placeholder used to pass.
        for bad in [
            "owner=\r\nX-Auth-Roles: admin\r\nY: {sub}",
            "a\tb={sub}",
            "a\0b={sub}",
            "r\u{e9}gion={claims.region}",
            "{sub}\n{roles}",
            "a={sub}\x7f",
        ] {
            let e = Template::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("visible ASCII"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn empty_or_space_padded_values_do_not_parse() {
        assert!(Template::parse("")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        for bad in [" {sub}", "{sub} ", " x", "\t{sub}"] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Template::parse("a b={sub}").is_ok());
    }

    /// A template that never went through `parse` (defence in depth): the renderer itself
    /// refuses to produce a value that is empty or not visible ASCII.
    #[test]
    fn renderer_refuses_invalid_output_whatever_the_template() {
        let hand_built = |parts: Vec<Part>| Template {
            source: String::new(),
            parts,
        };
        let claims = json!({"sub": "alice"});
        let t = hand_built(vec![
            Part::Lit("owner=\r\nX-Auth-Roles: admin\r\nY: ".into()),
            Part::Var(Placeholder::Sub),
        ]);
        assert_eq!(t.render(&v(claims.clone())), Err(RenderError::Invalid));
        for lit in ["", " ", "x ", "\u{e9}", "a\0"] {
            let t = hand_built(vec![Part::Lit(lit.into())]);
            assert_eq!(
                t.render(&v(claims.clone())),
                Err(RenderError::Invalid),
                "{lit:?}"
            );
        }
        assert_eq!(
            hand_built(vec![]).render(&v(claims.clone())),
            Err(RenderError::Invalid)
        );
        let ok = hand_built(vec![Part::Lit("u=".into()), Part::Var(Placeholder::Sub)]);
        assert_eq!(ok.render(&v(claims)).unwrap(), "u=alice");
    }

    #[test]
    fn no_roles_is_an_empty_list_but_never_an_empty_header() {
        let none = V {
            claims: json!({}),
            roles: vec![],
        };
        let t = Template::parse("r={roles}").unwrap();
        assert_eq!(t.render(&none).unwrap(), "r=");
        let t = Template::parse("{roles}").unwrap();
        assert_eq!(t.render(&none), Err(RenderError::Invalid));
        let empty_name = V {
            claims: json!({}),
            roles: vec!["".into()],
        };
        assert_eq!(t.render(&empty_name), Err(RenderError::Invalid));
        // Found by the row_filter fuzz target: a literal space next to an empty list
        // would end the value in a space that HTTP drops. Refused, not sent changed.
        let t = Template::parse("( {roles}").unwrap();
        assert_eq!(t.render(&none), Err(RenderError::Invalid));
    }

    #[test]
    fn numbers_render_exactly_as_written() {
        let t = Template::parse("t={claims.n}").unwrap();
        let render = |json_text: &str| {
            let claims: serde_json::Value =
                serde_json::from_str(&format!("{{\"n\": {json_text}}}")).unwrap();
            t.render(&v(claims)).unwrap()
        };
        // Past 2^53 a float would make these two one tenant.
        assert_eq!(render("1180591620717411303424"), "t=1180591620717411303424");
        assert_eq!(render("1180591620717411303425"), "t=1180591620717411303425");
        for (written, want) in [
            ("0", "t=0"),
            ("42", "t=42"),
            ("-7", "t=-7"),
            ("18446744073709551616", "t=18446744073709551616"),
            ("-9223372036854775809", "t=-9223372036854775809"),
            ("0.1", "t=0.1"),
            ("2.50", "t=2.50"),
            // serde_json writes an exponent as `e+N` / `e-N` (its one normalisation).
            ("1e3", "t=1e%2B3"),
            ("-1.5E+2", "t=-1.5e%2B2"),
            ("5E-1", "t=5e-1"),
            (
                "[1, 2.0, 12345678901234567890123]",
                "t=1,2.0,12345678901234567890123",
            ),
        ] {
            assert_eq!(render(written), want, "{written}");
        }
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
