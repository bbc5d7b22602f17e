//! mint: the peer bench's signing key and tokens.
//!
//!   mint keys DIR
//!       RSA-2048 signing key: DIR/jwt.key (PKCS#1 PEM), DIR/jwt.pub (SPKI PEM, for HAProxy's
//!       jwt_verify) and DIR/jwks.json (kid "k1", for Envoy and gatehouse). Kept if present.
//!   mint tokens KEY [--count N] [--first I] [--ttl S] [--region R] [--bad]
//!       N RS256 access tokens, one a line, subjects user-I .. user-(I+N-1), each distinct.
//!       --bad breaks each token's signature (the header and claims stay valid).
//!
//! Claims: iss https://idp.test, aud api://orders, sub, iat, exp (now + ttl, default 24 h),
//! region, scope "orders.read", groups ["sg-data-stewards"]; header kid "k1".

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "api://orders";

fn usage() -> ! {
    eprintln!(
        "usage: mint keys DIR\n       mint tokens KEY [--count N] [--first I] [--ttl S] [--region R] [--bad]"
    );
    std::process::exit(2)
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage()),
        None => default,
    }
}

fn keys(dir: &Path) -> Result<(), BoxError> {
    if dir.join("jwks.json").exists() && dir.join("jwt.key").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
    std::fs::write(
        dir.join("jwt.key"),
        key.to_pkcs1_pem(LineEnding::LF)?.as_bytes(),
    )?;
    std::fs::write(
        dir.join("jwt.pub"),
        key.to_public_key().to_public_key_pem(LineEnding::LF)?,
    )?;
    let jwk = serde_json::json!({
        "kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
        "n": B64.encode(key.n().to_bytes_be()),
        "e": B64.encode(key.e().to_bytes_be()),
    });
    std::fs::write(
        dir.join("jwks.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "keys": [jwk] }))?,
    )?;
    Ok(())
}

fn tokens(args: &[String]) -> Result<(), BoxError> {
    let key_path = args.first().unwrap_or_else(|| usage());
    let count: u64 = flag(args, "--count", 1);
    let first: u64 = flag(args, "--first", 0);
    let ttl: u64 = flag(args, "--ttl", 86_400);
    let region: String = flag(args, "--region", "eu-west".to_string());
    let bad = args.iter().any(|a| a == "--bad");
    let key = EncodingKey::from_rsa_pem(&std::fs::read(key_path)?)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());

    // RSA signing is the slow part (about a millisecond a token): one chunk per core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let chunk = count.div_ceil(threads).max(1);
    let parts: Vec<Result<String, BoxError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (key, header, region) = (&key, &header, &region);
                s.spawn(move || -> Result<String, BoxError> {
                    let mut out = String::new();
                    let end = ((t + 1) * chunk).min(count);
                    for i in (t * chunk)..end {
                        let claims = serde_json::json!({
                            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{}", first + i),
                            "iat": now, "exp": now + ttl, "region": region,
                            "scope": "orders.read", "groups": ["sg-data-stewards"],
                        });
                        let mut tok = jsonwebtoken::encode(header, &claims, key)?;
                        if bad {
                            tok = break_signature(&tok);
                        }
                        out.push_str(&tok);
                        out.push('\n');
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut stdout = std::io::stdout().lock();
    for part in parts {
        stdout.write_all(part?.as_bytes())?;
    }
    Ok(())
}

/// Flips one bit in the middle of the signature, so the token still parses but never verifies.
fn break_signature(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').expect("a JWS has three parts");
    let mut raw = B64.decode(sig).expect("base64url signature");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    format!("{signed}.{}", B64.encode(raw))
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("keys") => keys(Path::new(args.get(1).unwrap_or_else(|| usage()))),
        Some("tokens") => tokens(&args[1..]),
        _ => usage(),
    }
}
