//! `gatehouse check` and `config::load` on the files themselves: files over 1 MiB or not
//! regular files, a config that is not UTF-8 (named at its first bad byte), columns that
//! count characters.

#[path = "check/fixture.rs"]
mod fixture;

use fixture::*;

// ---------------------------------------------------------------------------------------
// Files over 1 MiB, a config that is not a file or not UTF-8.

fn load_err(p: &Path) -> config::ConfigErrors {
    match config::load(p) {
        Ok(_) => panic!("{} was accepted", p.display()),
        Err(e) => e,
    }
}

/// A PEM bundle of the dev CA repeated past 1 MiB: valid, just absurdly large.
fn huge_bundle(fx: &Fixture) -> PathBuf {
    let pem = std::fs::read_to_string(fx.root().join("certs/ca.crt")).unwrap();
    let copies = (1024 * 1024) / pem.len() + 1;
    let p = fx.root().join("certs/huge.crt");
    std::fs::write(&p, pem.repeat(copies)).unwrap();
    p
}

#[test]
fn files_over_1_mib_are_refused() {
    let fx = Fixture::new();
    huge_bundle(&fx);
    for (from, to, key, at) in [
        (
            ORDERS_CA,
            "sni = \"localhost\"\nca = \"../certs/huge.crt\"",
            "upstreams.orders.ca",
            "\"../certs/huge.crt\"",
        ),
        (
            "cert = \"../certs/server.crt\"",
            "cert = \"../certs/huge.crt\"",
            "server.cert",
            "\"../certs/huge.crt\"",
        ),
    ] {
        let text = edit(BASE, from, to);
        let (_, errors) = fx.errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.key, key);
        assert_eq!((e.line, e.col), position(&text, at), "{e}");
        assert!(e.message.contains("larger than 1 MiB"), "{e}");
    }
    // A JWKS file padded past 1 MiB with white space (still valid JSON).
    let jwks = fx.root().join("conf/keys/corp.jwks.json");
    let mut body = std::fs::read(&jwks).unwrap();
    body.extend(std::iter::repeat_n(b' ', 1024 * 1024));
    std::fs::write(fx.root().join("conf/keys/big.jwks.json"), body).unwrap();
    let text = edit(BASE, JWKS_FILE, "jwks_file = \"keys/big.jwks.json\"\n");
    let (_, errors) = fx.errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "issuers.corp.jwks_file");
    assert!(
        errors[0].message.contains("larger than 1 MiB"),
        "{}",
        errors[0]
    );
}

#[test]
fn config_over_1_mib_or_not_a_file_is_refused() {
    let fx = Fixture::new();
    let big = format!("{BASE}\n#{}\n", "x".repeat(1024 * 1024));
    let (path, errors) = fx.errors(&big);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("larger than 1 MiB"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].file, path);

    // A symlink to a device: refused at once, through the binary too.
    let link = fx.root().join("conf/random.toml");
    std::os::unix::fs::symlink("/dev/urandom", &link).unwrap();
    let e = load_err(&link);
    assert!(
        e.0[0]
            .message
            .contains("character device, not a regular file"),
        "{e}"
    );
    let out = gatehouse(&["check", "-c", link.to_str().unwrap()], fx.root());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
    let e = load_err(&fx.root().join("conf"));
    assert!(e.0[0].message.contains("a directory"), "{e}");
}

#[test]
fn config_that_is_not_utf8_names_the_first_bad_byte() {
    let fx = Fixture::new();
    let good = edit(BASE, "name = \"billing\"", "name = \"bill@ing\"");
    let mut bytes = good.into_bytes();
    let at = bytes.iter().position(|b| *b == b'@').unwrap();
    bytes[at] = 0xff;
    // The first bad byte, where a lossy reading shows U+FFFD.
    let (line, col) = position(&String::from_utf8_lossy(&bytes), "\u{fffd}");
    let p = fx.root().join("conf/gatehouse.toml");
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(&p);
    assert_eq!(e.0.len(), 1, "{e}");
    let err = &e.0[0];
    assert_eq!((err.line, err.col), (line, col), "{err}");
    assert!(err.message.contains("not UTF-8"), "{err}");
    let out = gatehouse(&["check", "-c", p.to_str().unwrap()], fx.root());
    assert_eq!(out.status.code(), Some(1));
    let want = format!("{}:{line}:{col}: ", p.display());
    assert!(
        text(&out.stderr).contains(&want),
        "want {want:?} in {}",
        text(&out.stderr)
    );
}

#[test]
fn columns_count_characters() {
    // An error after non-ASCII text on the same line points at the right character.
    let fx = Fixture::new();
    let text = edit(
        BASE,
        "leeway_s = 30\n",
        concat!(
            "leeway_s = 30\nintrospection = { url = \"https://l\u{f6}gin.example.com/i\", ",
            "client_id = \"gh\", client_secret = \"s3\" }\n"
        ),
    );
    let (_, errors) = fx.errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "issuers.corp.introspection.client_secret");
    assert_eq!(
        (errors[0].line, errors[0].col),
        position(&text, "\"s3\""),
        "{}",
        errors[0]
    );
}

// ---------------------------------------------------------------------------------------
// The files a load names: what the file watch watches.

#[test]
fn a_load_names_the_config_and_every_file_it_read() {
    let fx = Fixture::new();
    let rt = fx.load_ok(BASE);
    let conf = fx.root().join("conf");
    let names: Vec<PathBuf> = rt.files.iter().map(|(p, _)| p.clone()).collect();
    // Resolved next to the config as given, `..` kept: not canonicalised.
    let mut want = vec![
        conf.join("gatehouse.toml"),
        conf.join("../certs/server.crt"),
        conf.join("../certs/server.key"),
        conf.join("pseudonym.key"),
        conf.join("keys/corp.jwks.json"),
        conf.join("../certs/ca.crt"),
        conf.join("../certs/client.crt"),
        conf.join("../certs/client.key"),
    ];
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, want, "each once");
    assert_eq!(names[0], conf.join("gatehouse.toml"), "the config first");
    // Each with the fingerprint of what was read.
    for (p, f) in &rt.files {
        assert_eq!(*f, gatehouse::watch::fingerprint(p), "{}", p.display());
    }

    // A refused config still names what it tried to read, missing files included.
    let text = edit(
        BASE,
        "cert = \"../certs/server.crt\"",
        "cert = \"../certs/next.crt\"",
    );
    let path = fx.write(&text);
    let (loaded, files) = config::load_naming_files(&path);
    assert!(loaded.is_err());
    let next = conf.join("../certs/next.crt");
    let (_, f) = files
        .iter()
        .find(|(p, _)| *p == next)
        .expect("the missing certificate is named");
    assert!(matches!(f, gatehouse::watch::Fingerprint::Unreadable(_)));
}
