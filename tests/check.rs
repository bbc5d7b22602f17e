//! `gatehouse check` and `config::load` against SPEC section 2: a valid base config, then
//! one defect at a time. Every rejection must name the file, the line and column of the
//! offending key, the SPEC-style key path (`routes[2].upstream`) and what to do about it.

#[path = "check/fixture.rs"]
mod fixture;

use fixture::*;

#[test]
fn base_config_is_valid() {
    let fx = Fixture::new();
    let rt = fx.load_ok(BASE);
    assert_eq!(rt.routes.len(), 3);
    assert_eq!(rt.issuers.len(), 1);
    assert_eq!(
        rt.upstreams.keys().collect::<Vec<_>>(),
        ["orders", "billing"]
    );
    assert_eq!(rt.server.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(
        rt.audit.pseudonym_key.as_deref(),
        Some(&b"0123456789abcdef0123456789abcdef"[..])
    );
    assert!(rt.warnings.is_empty(), "warnings: {:?}", rt.warnings);
}

#[test]
fn owned_headers_are_identity_plus_every_row_filter_header() {
    let fx = Fixture::new();
    let rt = fx.load_ok(BASE);
    let owned: Vec<&str> = rt.owned_headers.iter().map(|h| h.as_str()).collect();
    for h in gatehouse::names::IDENTITY_HEADERS {
        assert!(owned.contains(&h), "{h} missing from {owned:?}");
    }
    for h in [
        "x-auth-subject",
        "x-auth-client-id",
        "x-auth-roles",
        "x-auth-issuer",
        "x-row-filter",
        "x-tenant",
    ] {
        assert!(owned.contains(&h), "{h} missing from {owned:?}");
    }
    assert_eq!(owned.len(), 6, "{owned:?}");
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let fx = Fixture::new();
    let path = fx.write(BASE);
    let rt = config::load(&path).expect("valid");
    let conf = fx.root().join("conf");
    assert_eq!(rt.server.cert_path, conf.join("../certs/server.crt"));
    assert_eq!(rt.server.key_path, conf.join("../certs/server.key"));

    // From another working directory, with a relative -c and with an absolute one.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = gatehouse(&["check", "-c", "conf/gatehouse.toml"], fx.root());
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let out = gatehouse(&["check", "-c", path.to_str().unwrap()], elsewhere.path());
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    // Not resolved against the working directory: a cert next to the cwd is not used.
    let moved = edit(
        BASE,
        "cert = \"../certs/server.crt\"",
        "cert = \"server.crt\"",
    );
    let moved_path = fx.write(&moved);
    std::fs::copy(
        fx.root().join("certs/server.crt"),
        elsewhere.path().join("server.crt"),
    )
    .unwrap();
    let out = gatehouse(
        &["check", "-c", moved_path.to_str().unwrap()],
        elsewhere.path(),
    );
    assert_eq!(out.status.code(), Some(1), "stdout:\n{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("server.cert"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The binary.

#[test]
fn check_binary_good_config_prints_summary_and_exits_0() {
    let fx = Fixture::new();
    let path = fx.write(BASE);
    let out = gatehouse(&["check", "-c", path.to_str().unwrap()], fx.root());
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    for want in [
        "127.0.0.1:8443", // listener
        "127.0.0.1:8080", // redirect listener
        "127.0.0.1:9900", // admin listener
        "corp",           // issuer
        "https://login.example.com/tenant",
        "orders",         // upstream
        "billing",        // upstream
        "127.0.0.1:9443", // upstream address
        "status",         // routes
        "orders-read",
        "/billing",
    ] {
        assert!(stdout.contains(want), "summary lacks {want:?}:\n{stdout}");
    }
    for section in [
        "listen",
        "admin",
        "issuers     1",
        "upstreams   2",
        "routes      3",
    ] {
        assert!(
            stdout.contains(section),
            "summary lacks {section:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn check_binary_bad_config_prints_file_line_col_key_message_and_exits_1() {
    let fx = Fixture::new();
    let bad = edit(BASE, "upstream = \"billing\"", "upstream = \"ordrs\"");
    let path = fx.write(&bad);
    let out = gatehouse(&["check", "-c", path.to_str().unwrap()], fx.root());
    assert_eq!(out.status.code(), Some(1));
    let (line, col) = position(&bad, "\"ordrs\"");
    let stderr = text(&out.stderr);
    let want = format!(
        "{}:{line}:{col}: routes[2].upstream: unknown upstream \"ordrs\" (known: orders, billing)",
        path.display()
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
}

#[test]
fn check_binary_reports_every_error_in_one_run() {
    let fx = Fixture::new();
    let mut bad = edit(BASE, "listen = \"127.0.0.1:8443\"", "listen = \"local\"");
    bad = edit(&bad, "upstream = \"billing\"", "upstream = \"ordrs\"");
    bad = edit(
        &bad,
        "algorithms = [\"ES256\", \"RS256\"]",
        "algorithms = [\"HS256\"]",
    );
    let path = fx.write(&bad);
    let out = gatehouse(&["check", "-c", path.to_str().unwrap()], fx.root());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for (key, needle) in [
        ("server.listen", "\"local\""),
        ("routes[2].upstream", "\"ordrs\""),
        ("issuers.corp.algorithms", "\"HS256\""),
    ] {
        let (line, col) = position(&bad, needle);
        let want = format!("{}:{line}:{col}: {key}: ", path.display());
        assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// Warnings: exit code stays 0.

#[test]
fn missing_pseudonym_key_is_a_warning() {
    let fx = Fixture::new();
    let cfg = edit(BASE, "pseudonym_key = { file = \"pseudonym.key\" }\n", "");
    let rt = fx.load_ok(&cfg);
    assert!(rt.audit.pseudonym_key.is_none());
    assert!(
        rt.warnings
            .iter()
            .any(|w| w.contains("audit.pseudonym_key")),
        "{:?}",
        rt.warnings
    );
    let path = fx.write(&cfg);
    let out = gatehouse(&["check", "-c", path.to_str().unwrap()], fx.root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("warning") && stdout.contains("pseudonym_key"),
        "{stdout}"
    );
}

#[test]
fn certificate_expiring_within_30_days_is_a_warning() {
    let fx = Fixture::new();
    let now = SystemTime::now();
    let soon = fx
        .pki
        .issue_with_validity(
            "localhost",
            &["localhost", "127.0.0.1"],
            false,
            now - Duration::from_secs(86400),
            now + Duration::from_secs(10 * 86400),
        )
        .unwrap();
    let certs = fx.root().join("certs");
    std::fs::write(certs.join("soon.crt"), &soon.cert_pem).unwrap();
    std::fs::write(certs.join("soon.key"), &soon.key_pem).unwrap();
    let mut cfg = edit(
        BASE,
        "cert = \"../certs/server.crt\"",
        "cert = \"../certs/soon.crt\"",
    );
    cfg = edit(
        &cfg,
        "key = \"../certs/server.key\"",
        "key = \"../certs/soon.key\"",
    );
    let rt = fx.load_ok(&cfg);
    let path = fx.root().join("conf/gatehouse.toml");
    let (line, col) = position(&cfg, "\"../certs/soon.crt\"");
    let prefix = format!("{}:{line}:{col}: server.cert: ", path.display());
    let w = rt
        .warnings
        .iter()
        .find(|w| w.contains("soon.crt"))
        .unwrap_or_else(|| panic!("no expiry warning in {:?}", rt.warnings));
    assert!(w.starts_with(&prefix), "{w:?} should start with {prefix:?}");
    assert!(w.contains("30 days"), "{w}");
    assert_eq!(rt.warnings.len(), 1, "{:?}", rt.warnings);
    assert!(rt.certificates.iter().any(|c| c.path.ends_with("soon.crt")));

    let out = gatehouse(&["check", "-c", path.to_str().unwrap()], fx.root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("warning") && stdout.contains("soon.crt"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------
// One defect at a time: `name: [FROM => TO, ...] key KEY at TEXT says [WORDS];` makes a test
// that applies the edits to BASE and expects one error at TEXT naming KEY.

macro_rules! defects {
    ($($name:ident: [$($from:expr => $to:expr),*] key $key:literal at $at:expr,
        says [$($w:expr),*];)*) => {$(
        #[test]
        fn $name() {
            assert_defect(&[$(($from, $to)),*], $key, $at, &[$($w),*]);
        }
    )*};
}

const TOP: &str = "# gatehouse test config\n";
const LAST: &str = "value = \"tenant={claims.org.tenant};by={sub}\"\n";
const ROW_VALUE: &str = "value = \"region={claims.region}\"";
const ROW_HEADER: &str = "header = \"X-Row-Filter\"";
const PSEUDONYM: &str = "pseudonym_key = { file = \"pseudonym.key\" }";
const ORDERS_KEY: &str = "client_key = \"../certs/client.key\"\nconnect_timeout_ms";

defects! {
    // Unknown keys (serde stops at the first one; its path is rebuilt from the headers).
    unknown_top_level_key: [TOP => "# gatehouse test config\nlisten = \"0.0.0.0:443\"\n"]
        key "listen" at "listen = \"0.0.0.0:443\"",
        says ["unknown field `listen`", "rename or remove"];
    unknown_top_level_table: ["[cache]\n" => "[caches]\n"]
        key "caches" at "caches]", says ["unknown field `caches`", "did you mean `cache`?"];
    unknown_key_in_server: ["drain_timeout_s = 20\n" => "drain_timeout = 20\n"]
        key "server.drain_timeout" at "drain_timeout = 20",
        says ["unknown field `drain_timeout`", "did you mean `drain_timeout_s`?", "rename or remove"];
    unknown_key_in_issuer: ["leeway_s = 30\n" => "leeway_s = 30\naudience = \"x\"\n"]
        key "issuers.corp.audience" at "audience = \"x\"", says ["did you mean `audiences`?"];
    unknown_key_in_route: ["require_mfa = true\n" => "require_mfa = true\nallow_groups = [\"x\"]\n"]
        key "routes[2].allow_groups" at "allow_groups",
        says ["unknown field `allow_groups`", "allow_roles", "rename or remove"];
    unknown_key_in_row_filter: ["except_roles = [\"admin\"]\n" => "except_roles = [\"admin\"]\nexcept = 1\n"]
        key "routes[1].row_filters[0].except" at "except = 1", says ["unknown field `except`"];
    unknown_key_in_inline_table: [PSEUDONYM => "pseudonym_key = { env = \"X\", fil = \"y\" }"]
        key "audit.pseudonym_key" at "{ env", says ["{ env = \"NAME\" } or { file = \"path\" }"];
    wrong_value_type_names_the_key: ["threads = 2" => "threads = \"two\""]
        key "server.threads" at "\"two\"", says ["invalid type", "expected i64"];
    proxy_protocol_is_a_boolean: ["threads = 2" => "threads = 2\nproxy_protocol = \"v2\""]
        key "server.proxy_protocol" at "\"v2\"", says ["invalid type", "expected a boolean"];
    watch_files_not_a_boolean: ["threads = 2" => "threads = 2\nwatch_files = \"yes\""]
        key "server.watch_files" at "\"yes\"", says ["invalid type", "expected a boolean"];
    missing_required_key_names_the_key: ["upstream = \"billing\"\n" => ""]
        key "routes[2].upstream" at "[[routes]]\nname = \"billing\"",
        says ["missing field `upstream`", "add it"];

    // References by name.
    unknown_upstream: ["upstream = \"billing\"" => "upstream = \"ordrs\""]
        key "routes[2].upstream" at "\"ordrs\"",
        says ["unknown upstream \"ordrs\" (known: orders, billing)"];
    unknown_issuer: ["issuers = [\"corp\"]" => "issuers = [\"crop\"]"]
        key "routes[1].issuers" at "\"crop\"", says ["unknown issuer \"crop\" (known: corp)"];
    unknown_role_in_allow_roles:
        ["allow_roles = [\"admin\", \"integration\"]" => "allow_roles = [\"admin\", \"integrator\"]"]
        key "routes[2].allow_roles" at "\"integrator\"",
        says ["unknown role \"integrator\" (known: data-steward, integration, admin)",
              "declare it as [roles.integrator]"];
    unknown_role_in_except_roles: ["except_roles = [\"admin\"]" => "except_roles = [\"admins\"]"]
        key "routes[1].row_filters[0].except_roles" at "\"admins\"",
        says ["unknown role \"admins\" (known: data-steward, integration, admin)",
              "declare it as [roles.admins]"];

    // Routes.
    duplicate_route_name: ["name = \"billing\"" => "name = \"orders-read\"\n# dup"]
        key "routes[2].name" at "\"orders-read\"\n# dup",
        says ["duplicate route name \"orders-read\" (also routes[1])", "must be unique"];
    route_shadowed_by_same_prefix_and_methods: [LAST => concat!(
        "value = \"tenant={claims.org.tenant};by={sub}\"\n\n[[routes]]\nname = \"billing-get\"\n",
        "path_prefix = \"/billing\"\nmethods = [\"GET\"]\nupstream = \"billing\"\n")]
        key "routes[3]" at "[[routes]]\nname = \"billing-get\"",
        says ["never reached", "routes[2] (\"billing\")", "move it above routes[2] or narrow it"];
    route_shadowed_by_earlier_prefix_with_covering_methods: [LAST => concat!(
        "value = \"tenant={claims.org.tenant};by={sub}\"\n\n[[routes]]\nname = \"order-items\"\n",
        "path_prefix = \"/orders/items\"\nmethods = [\"HEAD\"]\nupstream = \"orders\"\n")]
        key "routes[3]" at "[[routes]]\nname = \"order-items\"",
        says ["never reached", "routes[1] (\"orders-read\")", "narrow it"];
    unknown_method: ["methods = [\"GET\", \"POST\"]" => "methods = [\"GET\", \"DELET\"]"]
        key "routes[2].methods" at "\"DELET\"", says ["unknown method \"DELET\"", "did you mean \"DELETE\"?"];
    bad_auth_mode: ["auth = \"none\"" => "auth = \"maybe\""]
        key "routes[0].auth" at "\"maybe\"", says ["\"maybe\"", "use \"required\" or \"none\""];

    // Row filters: placeholders and headers.
    placeholder_claim_singular: [ROW_VALUE => "value = \"region={claim.region}\""]
        key "routes[1].row_filters[0].value" at "\"region={claim.region}\"",
        says ["unknown placeholder {claim.region}",
              "use one of {claims.PATH}, {sub}, {client_id}, {roles}, {issuer}"];
    placeholder_user: [ROW_VALUE => "value = \"u={user}\""]
        key "routes[1].row_filters[0].value" at "\"u={user}\"",
        says ["unknown placeholder {user}", "use one of {claims.PATH}"];
    placeholder_unclosed: [ROW_VALUE => "value = \"region={claims.region\""]
        key "routes[1].row_filters[0].value" at "\"region={claims.region\"",
        says ["unclosed '{'", "{claims.PATH}"];
    placeholder_empty_claim_path: [ROW_VALUE => "value = \"r={claims.}\""]
        key "routes[1].row_filters[0].value" at "\"r={claims.}\"",
        says ["unknown placeholder {claims.}"];
    row_filter_header_connection: [ROW_HEADER => "header = \"Connection\""]
        key "routes[1].row_filters[0].header" at "\"Connection\"",
        says ["\"Connection\" is a hop-by-hop header", "pick another name"];
    row_filter_header_http2_settings: [ROW_HEADER => "header = \"HTTP2-Settings\""]
        key "routes[1].row_filters[0].header" at "\"HTTP2-Settings\"",
        says ["\"HTTP2-Settings\" is a hop-by-hop header", "pick another name"];
    row_filter_header_transfer_encoding: [ROW_HEADER => "header = \"Transfer-Encoding\""]
        key "routes[1].row_filters[0].header" at "\"Transfer-Encoding\"",
        says ["\"Transfer-Encoding\" is a hop-by-hop header", "pick another name"];
    row_filter_header_identity: [ROW_HEADER => "header = \"X-Auth-Roles\""]
        key "routes[1].row_filters[0].header" at "\"X-Auth-Roles\"",
        says ["\"X-Auth-Roles\" is an identity header", "pick another name"];
    row_filter_header_x_forwarded_for: [ROW_HEADER => "header = \"X-Forwarded-For\""]
        key "routes[1].row_filters[0].header" at "\"X-Forwarded-For\"",
        says ["\"X-Forwarded-For\" is a header gatehouse sets", "pick another name"];
    row_filter_header_twice_on_a_route: [LAST => concat!(
        "value = \"tenant={claims.org.tenant};by={sub}\"\n\n",
        "[[routes.row_filters]]\nheader = \"x-tenant\"\nvalue = \"{sub}\"\n")]
        key "routes[2].row_filters[1].header" at "\"x-tenant\"", says ["twice"];

    // Certificate and key files.
    cert_file_unreadable: ["cert = \"../certs/server.crt\"" => "cert = \"../certs/missing.crt\""]
        key "server.cert" at "\"../certs/missing.crt\"",
        says ["cannot read", "missing.crt", "point it at a PEM certificate chain"];
    key_file_unreadable: ["key = \"../certs/server.key\"" => "key = \"../certs/missing.key\""]
        key "server.key" at "\"../certs/missing.key\"",
        says ["cannot read", "missing.key", "point it at the PEM private key"];
    key_does_not_match_cert: ["key = \"../certs/server.key\"" => "key = \"../certs/backend.key\""]
        key "server.key" at "\"../certs/backend.key\"",
        says ["does not match", "use the key that was issued with this certificate"];
    upstream_client_key_does_not_match_cert:
        [ORDERS_KEY => "client_key = \"../certs/server.key\"\nconnect_timeout_ms"]
        key "upstreams.orders.client_key" at "\"../certs/server.key\"\nconnect",
        says ["does not match", "use the key that was issued"];
    cert_not_pem: ["cert = \"../certs/server.crt\"" => "cert = \"../certs/not-pem.crt\""]
        key "server.cert" at "\"../certs/not-pem.crt\"",
        says ["not-pem.crt", "no CERTIFICATE block", "PEM"];
    key_not_pem: ["key = \"../certs/server.key\"" => "key = \"../certs/not-pem.key\""]
        key "server.key" at "\"../certs/not-pem.key\"", says ["not-pem.key", "no PRIVATE KEY block"];
    upstream_ca_not_pem: [ORDERS_CA => "sni = \"localhost\"\nca = \"../certs/not-pem.crt\""]
        key "upstreams.orders.ca" at "\"../certs/not-pem.crt\"",
        says ["not-pem.crt", "point it at a PEM CA certificate"];

    // Secrets.
    inline_secret: [PSEUDONYM => "pseudonym_key = \"abc\""]
        key "audit.pseudonym_key" at "\"abc\"",
        says ["inline secrets are not allowed", "{ env = \"NAME\" } or { file = \"path\" }"];
    inline_introspection_secret: ["leeway_s = 30\n" => concat!("leeway_s = 30\nintrospection = ",
        "{ url = \"https://login.example.com/i\", client_id = \"gh\", client_secret = \"s3\" }\n")]
        key "issuers.corp.introspection.client_secret" at "\"s3\"", says ["inline secrets"];
    env_secret_unset: [PSEUDONYM => "pseudonym_key = { env = \"GATEHOUSE_CHECK_TEST_UNSET\" }"]
        key "audit.pseudonym_key" at "{ env",
        says ["GATEHOUSE_CHECK_TEST_UNSET is not set", "export it"];
    secret_with_env_and_file: [PSEUDONYM => "pseudonym_key = { env = \"HOME\", file = \"p.key\" }"]
        key "audit.pseudonym_key" at "{ env", says ["exactly one of"];
    secret_file_unreadable: [PSEUDONYM => "pseudonym_key = { file = \"nope.key\" }"]
        key "audit.pseudonym_key" at "{ file", says ["cannot read secret file", "nope.key"];

    // Issuers.
    issuer_without_key_source: [JWKS_FILE => ""]
        key "issuers.corp" at "[issuers.corp]",
        says ["no key source", "exactly one of discovery = true, jwks_uri", "jwks_file"];
    issuer_with_jwks_file_and_jwks_uri:
        [JWKS_FILE => "jwks_file = \"keys/corp.jwks.json\"\njwks_uri = \"https://idp/keys\"\n"]
        key "issuers.corp.jwks_uri" at "\"https://idp/keys\"",
        says ["conflicts with jwks_file", "exactly one key source", "remove the other"];
    issuer_with_discovery_and_jwks_file:
        [JWKS_FILE => "discovery = true\njwks_file = \"keys/corp.jwks.json\"\n"]
        key "issuers.corp.jwks_file" at "\"keys/corp.jwks.json\"",
        says ["conflicts with discovery", "exactly one key source"];
    issuer_jwks_file_missing: [JWKS_FILE => "jwks_file = \"keys/gone.json\"\n"]
        key "issuers.corp.jwks_file" at "\"keys/gone.json\"", says ["cannot read", "gone.json"];
    issuer_jwks_uri_plain_http: [JWKS_FILE => "jwks_uri = \"http://idp/keys\"\n"]
        key "issuers.corp.jwks_uri" at "\"http://idp/keys\"", says ["must be an https:// URL"];
    issuer_algorithm_hs256: [ALGS => "algorithms = [\"ES256\", \"HS256\"]"]
        key "issuers.corp.algorithms" at "\"HS256\"",
        says ["\"HS256\" is not allowed", "only asymmetric JWS algorithms"];
    issuer_algorithm_none: [ALGS => "algorithms = [\"none\"]"]
        key "issuers.corp.algorithms" at "\"none\"]", says ["\"none\" is not allowed"];
    issuer_empty_audiences: ["audiences = [\"api://orders\"]" => "audiences = []"]
        key "issuers.corp.audiences" at "[]", says ["must list at least one audience"];
    issuer_not_https: ["issuer = \"https://login.example.com/tenant\"" => "issuer = \"idp.example\""]
        key "issuers.corp.issuer" at "\"idp.example\"", says ["must be an https:// URL"];

    // Row-filter values: literal text anywhere, empty values.
    row_filter_crlf_before_the_first_placeholder:
        [ROW_VALUE => "value = \"owner=\\r\\nX-Auth-Roles: admin\\r\\nY: {sub}\""]
        key "routes[1].row_filters[0].value" at "\"owner=",
        says ["visible ASCII", "'\\r'", "remove it"];
    row_filter_tab_before_the_first_placeholder: [ROW_VALUE => "value = \"a\\tb={sub}\""]
        key "routes[1].row_filters[0].value" at "\"a\\tb", says ["visible ASCII", "'\\t'"];
    row_filter_non_ascii_literal: [ROW_VALUE => "value = \"r\u{e9}gion={claims.region}\""]
        key "routes[1].row_filters[0].value" at "\"r\u{e9}gion", says ["visible ASCII", "'\u{e9}'"];
    row_filter_nul_between_placeholders: [ROW_VALUE => "value = \"{sub}\\u0000{roles}\""]
        key "routes[1].row_filters[0].value" at "\"{sub}", says ["visible ASCII"];
    row_filter_empty_value: [ROW_VALUE => "value = \"\""]
        key "routes[1].row_filters[0].value" at "\"\"", says ["is empty", "{claims.region}"];
    row_filter_space_padded_value: [ROW_VALUE => "value = \" region={claims.region}\""]
        key "routes[1].row_filters[0].value" at "\" region", says ["white space", "remove it"];

    // Row-filter header names.
    row_filter_header_underscore_identity: [ROW_HEADER => "header = \"X_Auth_Roles\""]
        key "routes[1].row_filters[0].header" at "\"X_Auth_Roles\"",
        says ["underscore spelling of x-auth-roles", "read both as one", "pick another name"];
    row_filter_header_underscore_of_another_filter: [ROW_HEADER => "header = \"X_Tenant\""]
        key "routes[1].row_filters[0].header" at "\"X_Tenant\"",
        says ["underscore spelling of x-tenant", "pick another name"];
    row_filter_header_underscore_forwarded: [ROW_HEADER => "header = \"X_Forwarded_For\""]
        key "routes[1].row_filters[0].header" at "\"X_Forwarded_For\"",
        says ["underscore spelling of x-forwarded-for"];
    row_filter_header_with_space: [ROW_HEADER => "header = \"X Row Filter\""]
        key "routes[1].row_filters[0].header" at "\"X Row Filter\"",
        says ["not an HTTP token", "pick a name such as X-Row-Filter"];
    row_filter_header_with_colon: [ROW_HEADER => "header = \"X-Row:Filter\""]
        key "routes[1].row_filters[0].header" at "\"X-Row:Filter\"", says ["not an HTTP token"];
    row_filter_header_empty: [ROW_HEADER => "header = \"\""]
        key "routes[1].row_filters[0].header" at "\"\"", says ["not an HTTP token"];
    row_filter_header_url_override: [ROW_HEADER => "header = \"X-Original-URL\""]
        key "routes[1].row_filters[0].header" at "\"X-Original-URL\"",
        says ["gatehouse strips it", "pick another name"];

    // Bounds.
    trusted_proxy_not_a_cidr: ["threads = 2" => "threads = 2\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]"]
        key "server.trusted_proxies[1]" at "\"10.0.0.0/33\"", says ["not a CIDR", "10.0.0.0/8"];
    leeway_over_300_seconds: ["leeway_s = 30\n" => "leeway_s = 301\n"]
        key "issuers.corp.leeway_s" at "301", says ["maximum of 300 seconds", "lower it"];
    threads_over_1024: ["threads = 2" => "threads = 1025"]
        key "server.threads" at "1025", says ["maximum of 1024", "0 (one per core)"];

    // Files that are not regular files (after symlinks): refused without reading them.
    client_key_is_a_device: [ORDERS_KEY => "client_key = \"/dev/urandom\"\nconnect_timeout_ms"]
        key "upstreams.orders.client_key" at "\"/dev/urandom\"",
        says ["/dev/urandom", "character device, not a regular file", "point it at the PEM private key"];
    server_cert_is_a_directory: ["cert = \"../certs/server.crt\"" => "cert = \"../certs\""]
        key "server.cert" at "\"../certs\"", says ["a directory, not a regular file"];
    upstream_ca_is_a_device: [ORDERS_CA => "sni = \"localhost\"\nca = \"/dev/zero\""]
        key "upstreams.orders.ca" at "\"/dev/zero\"",
        says ["character device", "point it at a PEM CA certificate"];
    jwks_file_is_a_device: [JWKS_FILE => "jwks_file = \"/dev/urandom\"\n"]
        key "issuers.corp.jwks_file" at "\"/dev/urandom\"",
        says ["not a regular file", "point it at a JWKS file"];
    // A secret may come over a FIFO or a device (secret agents), but never more than 1 MiB.
    secret_file_is_endless: [PSEUDONYM => "pseudonym_key = { file = \"/dev/urandom\" }"]
        key "audit.pseudonym_key" at "{ file", says ["cannot read secret file", "larger than 1 MiB"];

    // Listeners and TLS.
    bad_listen_address: ["listen = \"127.0.0.1:8443\"" => "listen = \"localhost:8443x\""]
        key "server.listen" at "\"localhost:8443x\"",
        says ["not an IP:port address", "write e.g. \"0.0.0.0:8443\""];
    bad_admin_listen_address: ["listen = \"127.0.0.1:9900\"" => "listen = \"127.0.0.1\""]
        key "admin.listen" at "\"127.0.0.1\"", says ["not an IP:port address"];
    bad_tls_min_version: ["tls_min_version = \"1.2\"" => "tls_min_version = \"1.1\""]
        key "server.tls_min_version" at "\"1.1\"",
        says ["\"1.1\" is not supported", "use \"1.2\" or \"1.3\""];
}

#[test]
fn issuer_with_discovery_false_and_jwks_file_is_fine() {
    let fx = Fixture::new();
    fx.load_ok(&edit(
        BASE,
        JWKS_FILE,
        &format!("discovery = false\n{JWKS_FILE}"),
    ));
}

#[test]
fn narrower_route_after_broader_one_with_other_methods_is_fine() {
    let fx = Fixture::new();
    let more = concat!(
        "\n[[routes]]\nname = \"order-items\"\npath_prefix = \"/orders/items\"\n",
        "methods = [\"GET\", \"POST\"]\nupstream = \"orders\"\n\n",
        "[[routes]]\nname = \"ordersx\"\npath_prefix = \"/ordersx\"\nupstream = \"orders\"\n"
    );
    let rt = fx.load_ok(&format!("{BASE}{more}"));
    assert_eq!(rt.routes.len(), 5);
}

#[test]
fn expired_certificate_is_an_error() {
    let fx = Fixture::new();
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let old = fx
        .pki
        .issue_with_validity("localhost", &["localhost"], false, now - 9 * day, now - day)
        .unwrap();
    std::fs::write(fx.root().join("certs/old.crt"), &old.cert_pem).unwrap();
    std::fs::write(fx.root().join("certs/old.key"), &old.key_pem).unwrap();
    let mut cfg = edit(
        BASE,
        "cert = \"../certs/server.crt\"",
        "cert = \"../certs/old.crt\"",
    );
    cfg = edit(
        &cfg,
        "key = \"../certs/server.key\"",
        "key = \"../certs/old.key\"",
    );
    let (_, errors) = fx.errors(&cfg);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "server.cert");
    assert_eq!(
        (errors[0].line, errors[0].col),
        position(&cfg, "\"../certs/old.crt\"")
    );
    assert!(errors[0].message.contains("expired"), "{}", errors[0]);
    assert!(errors[0].message.contains("renew it"), "{}", errors[0]);
}

/// `[tracing]`: the endpoint must be an http(s) base URL without credentials, query or
/// fragment, the service name printable; each defect names file, line, key and the fix.
#[test]
fn tracing_table_is_checked() {
    let table = |body: &str| format!("[tracing]\n{body}\n\n[admin]\n");
    for (value, says) in [
        (
            "\"ftp://collector:4318\"",
            &[
                "scheme must be http or https",
                "otlp_endpoint = \"http://127.0.0.1:4318\"",
            ][..],
        ),
        ("\"collector:4318\"", &["scheme must be http or https"][..]),
        ("\"not a url\"", &["is not a URL", "/v1/traces"][..]),
        (
            "\"http://user:pw@collector:4318\"",
            &["credentials", "never written inline"][..],
        ),
        (
            "\"http://collector:4318/?token=1\"",
            &["query or fragment"][..],
        ),
    ] {
        let body = format!("otlp_endpoint = {value}");
        assert_defect(
            &[("[admin]\n", table(&body).as_str())],
            "tracing.otlp_endpoint",
            value,
            says,
        );
    }
    assert_defect(
        &[(
            "[admin]\n",
            table("otlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"  \"").as_str(),
        )],
        "tracing.service_name",
        "\"  \"",
        &["not a usable service name", "service_name = \"gatehouse\""],
    );

    let fx = Fixture::new();
    let on = fx.load_ok(&edit(
        BASE,
        "[admin]\n",
        &table("otlp_endpoint = \"https://otel.example:4318/base/\""),
    ));
    let t = on.tracing.expect("tracing on");
    assert_eq!(t.traces_url, "https://otel.example:4318/base/v1/traces");
    assert_eq!(t.service_name, "gatehouse", "the default service name");
    // No endpoint, or no table: nothing is exported.
    let named_only = fx.load_ok(&edit(BASE, "[admin]\n", &table("service_name = \"edge\"")));
    assert!(named_only.tracing.is_none());
    assert!(fx.load_ok(BASE).tracing.is_none());
}
