//! The TOML file exactly as written (SPEC section 2), before any meaning is checked.
//!
//! Every table denies unknown keys. Values that a later check must point at are kept as
//! `toml::Spanned` so that `validate.rs` can name their line and column.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: S<RawServer>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub audit: Option<S<RawAudit>>,
    #[serde(default)]
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub issuers: IndexMap<String, S<RawIssuer>>,
    #[serde(default)]
    pub roles: IndexMap<String, S<RawRole>>,
    #[serde(default)]
    pub upstreams: IndexMap<String, S<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<S<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: S<String>,
    #[serde(default)]
    pub redirect_http: Option<S<String>>,
    pub cert: S<String>,
    pub key: S<String>,
    #[serde(default)]
    pub tls_min_version: Option<S<String>>,
    #[serde(default)]
    pub hsts_max_age_s: Option<u64>,
    #[serde(default)]
    pub threads: Option<S<i64>>,
    #[serde(default)]
    pub drain_timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default)]
    pub path: Option<S<String>>,
    #[serde(default)]
    pub retention_days: Option<S<u64>>,
    #[serde(default)]
    pub pseudonym_key: Option<S<RawSecret>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default)]
    pub max_entries: Option<u64>,
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A secret: `{ env = "NAME" }` or `{ file = "path" }`. An inline string parses (so that
/// `check` can say exactly why it is refused) but never validates.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Inline(String),
    Ref(RawSecretRef),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: S<String>,
    #[serde(default)]
    pub discovery: Option<S<bool>>,
    #[serde(default)]
    pub jwks_uri: Option<S<String>>,
    #[serde(default)]
    pub jwks_file: Option<S<String>>,
    #[serde(default)]
    pub audiences: Option<S<Vec<String>>>,
    #[serde(default)]
    pub algorithms: Option<Vec<S<String>>>,
    #[serde(default)]
    pub leeway_s: Option<u64>,
    #[serde(default)]
    pub ca: Option<S<String>>,
    #[serde(default)]
    pub jwks_refresh_s: Option<S<u64>>,
    #[serde(default)]
    pub roles_claim: Option<S<String>>,
    #[serde(default)]
    pub groups_claim: Option<S<String>>,
    #[serde(default)]
    pub scopes_claim: Option<S<String>>,
    #[serde(default)]
    pub client_id_claim: Option<S<String>>,
    #[serde(default)]
    pub introspection: Option<S<RawIntrospection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub url: S<String>,
    pub client_id: String,
    pub client_secret: S<RawSecret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub addrs: S<Vec<S<String>>>,
    pub sni: S<String>,
    pub ca: S<String>,
    pub client_cert: S<String>,
    pub client_key: S<String>,
    #[serde(default)]
    pub connect_timeout_ms: Option<S<u64>>,
    #[serde(default)]
    pub read_timeout_ms: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: S<String>,
    #[serde(default)]
    pub host: Option<S<String>>,
    pub path_prefix: S<String>,
    #[serde(default)]
    pub methods: Option<S<Vec<S<String>>>>,
    pub upstream: S<String>,
    #[serde(default)]
    pub issuers: Option<Vec<S<String>>>,
    #[serde(default)]
    pub allow_roles: Option<S<Vec<S<String>>>>,
    #[serde(default)]
    pub require_scopes: Option<S<Vec<String>>>,
    #[serde(default)]
    pub require_mfa: Option<S<bool>>,
    #[serde(default)]
    pub forward_token: Option<bool>,
    #[serde(default)]
    pub auth: Option<S<String>>,
    #[serde(default)]
    pub row_filters: Vec<S<RawRowFilter>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRowFilter {
    pub header: S<String>,
    pub value: S<String>,
    #[serde(default)]
    pub except_roles: Vec<S<String>>,
}
