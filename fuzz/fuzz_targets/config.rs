//! The config loader and validator on arbitrary bytes: UTF-8 check, TOML parsing, schema
//! errors with their key paths, and every semantic check. Files the input names are read
//! through the bounded reader; upstream host names would need DNS, so only inputs whose
//! upstream addresses are IP:port literals go through the full validation.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;

use gatehouse::config::{raw, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/nonexistent/gatehouse-fuzz/gatehouse.toml");
    if let Ok(text) = std::str::from_utf8(data) {
        match raw::parse(text) {
            Err(e) => {
                assert!(e.span.start <= text.len(), "span {:?} past the end", e.span);
            }
            Ok(cfg) => {
                let literal = cfg.upstreams.values().all(|u| {
                    u.get_ref()
                        .addrs
                        .get_ref()
                        .iter()
                        .all(|a| a.get_ref().parse::<SocketAddr>().is_ok())
                });
                if !literal {
                    return;
                }
            }
        }
    }
    let lines = data.iter().filter(|b| **b == b'\n').count() + 1;
    match validate::load_bytes(path, data) {
        Ok(rt) => {
            let _ = rt.summary();
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(e.line <= lines, "{e} points past the last line ({lines})");
                assert!(e.line == 0 || e.col >= 1, "{e}");
                let _ = e.to_string();
            }
        }
    }
});
