//! Row-filter templates with hostile claim values. Invariants: a template that parses
//! renders to a value that is never empty and only visible ASCII, or is refused for a
//! missing value, or (only when `{roles}` renders an empty list) for being empty or
//! ending in a space.
#![no_main]

use gatehouse::policy::row_filter::{
    valid_header_value, Placeholder, RenderError, Template, Values,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// The input, NUL-separated: template, claims (a JSON object as text; anything else
/// becomes `{"x": <the text>}`), sub, client_id, roles ('|'-separated), issuer. An empty
/// sub or client_id is absent.
struct Input<'a> {
    template: &'a str,
    claims: &'a str,
    sub: Option<&'a str>,
    client_id: Option<&'a str>,
    roles: Vec<&'a str>,
    issuer: &'a str,
}

impl<'a> Input<'a> {
    fn split(data: &'a [u8]) -> Option<Input<'a>> {
        let text = std::str::from_utf8(data).ok()?;
        let mut f = text.split('\0');
        let mut next = || f.next().unwrap_or("");
        let template = next();
        let claims = next();
        let sub = Some(next()).filter(|s| !s.is_empty());
        let client_id = Some(next()).filter(|s| !s.is_empty());
        let roles_text = next();
        let roles = if roles_text.is_empty() {
            vec![]
        } else {
            roles_text.split('|').collect()
        };
        let issuer = next();
        Some(Input {
            template,
            claims,
            sub,
            client_id,
            roles,
            issuer,
        })
    }
}

struct V<'a> {
    claims: Value,
    input: &'a Input<'a>,
    roles: Vec<String>,
}

impl Values for V<'_> {
    fn claim(&self, path: &str) -> Option<&Value> {
        gatehouse::auth::claim_path(&self.claims, path).filter(|v| !v.is_null())
    }
    fn sub(&self) -> Option<&str> {
        self.input.sub
    }
    fn client_id(&self) -> Option<&str> {
        self.input.client_id
    }
    fn roles(&self) -> &[String] {
        &self.roles
    }
    fn issuer(&self) -> &str {
        self.input.issuer
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::split(data) else {
        return;
    };
    let Ok(t) = Template::parse(input.template) else {
        return;
    };
    assert_eq!(t.source(), input.template);
    let claims = match serde_json::from_str::<Value>(input.claims) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "x": input.claims, "n": input.claims.len() }),
    };
    let mut roles: Vec<String> = input.roles.iter().map(|r| r.to_string()).collect();
    roles.sort();
    let v = V {
        claims,
        input: &input,
        roles,
    };
    match t.render(&v) {
        Ok(out) => {
            assert!(valid_header_value(&out), "{out:?}");
            assert!(!out.is_empty());
            assert!(out.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{out:?}");
            assert!(http::HeaderValue::from_str(&out).is_ok(), "{out:?}");
        }
        Err(RenderError::Missing(_)) => {}
        // Literal text is valid and non-empty and placeholder values are percent-encoded
        // and non-empty, except `{roles}`: an empty list renders nothing, which can leave
        // the value empty or ending in a literal space (`( {roles}`). Only then.
        Err(RenderError::Invalid) => {
            let empty_roles = match v.roles.as_slice() {
                [] => true,
                [one] => one.is_empty(),
                _ => false,
            };
            assert!(
                empty_roles && t.placeholders().any(|p| *p == Placeholder::Roles),
                "parsed template {:?} rendered an invalid value",
                input.template
            )
        }
    }
});
