//! One audit record as one JSON line, written by hand: byte for byte what
//! `serde_json::to_string(&record)` writes (a unit test holds the two together), at a
//! fraction of the cost. Serialising through serde was the audit writer's largest cost in
//! the request profiles (per field: a key escaped at run time, a string escaped byte by
//! byte, a growing buffer); here the keys are constants, a string is copied in runs
//! between the rare bytes JSON escapes, and numbers go through `itoa`.

use super::AuditRecord;

/// Appends `rec` as one JSON object (no newline) to `out`.
pub(super) fn write(out: &mut Vec<u8>, rec: &AuditRecord) {
    out.extend_from_slice(b"{\"ts\":");
    string(out, &rec.ts);
    out.extend_from_slice(b",\"request_id\":");
    string(out, &rec.request_id);
    out.extend_from_slice(b",\"route\":");
    string(out, &rec.route);
    out.extend_from_slice(b",\"method\":");
    string(out, &rec.method);
    out.extend_from_slice(b",\"path\":");
    string(out, &rec.path);
    out.extend_from_slice(b",\"decision\":");
    string(out, rec.decision.as_str());
    out.extend_from_slice(b",\"reason\":");
    optional(out, rec.reason);
    out.extend_from_slice(b",\"subject\":");
    optional(out, rec.subject.as_deref());
    out.extend_from_slice(b",\"client_id\":");
    optional(out, rec.client_id.as_deref());
    out.extend_from_slice(b",\"roles\":[");
    for (i, role) in rec.roles.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, role);
    }
    out.extend_from_slice(b"],\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(rec.status).as_bytes());
    out.extend_from_slice(b",\"upstream\":");
    optional(out, rec.upstream.as_deref());
    out.extend_from_slice(b",\"duration_ms\":");
    out.extend_from_slice(itoa::Buffer::new().format(rec.duration_ms).as_bytes());
    out.push(b'}');
}

fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string as serde_json writes one: `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00XX` (lower-case hex), everything else (non-ASCII included)
/// as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Nearly every string (a timestamp, hex ids, names, a path) needs no escape: found
    // by a branch-free pass the compiler vectorises, then copied whole.
    let plain = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(short);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Decision;

    fn line(rec: &AuditRecord) -> String {
        let mut out = Vec::new();
        write(&mut out, rec);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_string_is_escaped_as_serde_json_escapes_it() {
        let mut nasty: String = (0u8..0x80).map(char::from).collect();
        nasty.push_str("é漢🦀\u{2028}\u{7f}\\\"/");
        for s in [
            "",
            "plain",
            "\"",
            "\\",
            "a\"b\\c",
            "\u{0}",
            "x\u{1f}",
            nasty.as_str(),
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_line_is_what_serde_json_writes() {
        let mut rec = AuditRecord::new("req-\"1\"", "orders\nread", "PATCH", "/o/\u{1}é?q=1");
        assert_eq!(line(&rec), serde_json::to_string(&rec).unwrap());
        rec.decision = Decision::Deny;
        rec.reason = Some("insufficient_role");
        rec.subject = Some("ab".repeat(32).into());
        rec.client_id = Some("billing\\sync".into());
        rec.roles = vec!["a".to_string(), "b\"c".to_string(), String::new()].into();
        rec.status = 65535;
        rec.upstream = Some("orders".into());
        rec.duration_ms = u64::MAX;
        assert_eq!(line(&rec), serde_json::to_string(&rec).unwrap());
        rec.decision = Decision::Allow;
        rec.roles = vec!["only".to_string()].into();
        rec.status = 0;
        rec.duration_ms = 0;
        assert_eq!(line(&rec), serde_json::to_string(&rec).unwrap());
    }
}
