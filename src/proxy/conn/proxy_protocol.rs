//! PROXY protocol v2 (`server.proxy_protocol = true`): an L4 load balancer writes a
//! binary header before the TLS ClientHello naming the client it accepted the connection
//! from. The header is read here, byte-exact (nothing after it is consumed, so the TLS
//! handshake sees its ClientHello untouched) and bounded in size; the caller bounds it in
//! time. Parsing is `ppp`'s.
//!
//! Only v2 is accepted: the text v1 header (`PROXY TCP4 ...`) is refused, as is anything
//! without the v2 signature. A `LOCAL` command (the load balancer's own health check)
//! and a `PROXY` command with no IP addresses (`AF_UNSPEC`, `AF_UNIX`) leave the socket
//! peer as the client, as the specification allows.

use std::net::SocketAddr;

use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: signature (12), version and command, family and
/// protocol, length of the rest (u16, big-endian).
const FIXED: usize = 16;

/// The largest address block plus TLVs accepted after the fixed part. The v2 length
/// field allows 65535; load balancers send the addresses (at most 216 bytes, `AF_UNIX`)
/// and a few short TLVs (AWS NLB's endpoint id, Azure's link id), far below this.
pub const MAX_REST: usize = 4096;

/// Why a connection's start is not an acceptable PROXY v2 header.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the connection closed or failed before a whole PROXY v2 header arrived: {0}")]
    Io(#[from] std::io::Error),
    #[error("a PROXY protocol v1 (text) header; only v2 is accepted: configure the load balancer for v2")]
    Version1,
    #[error("no PROXY protocol v2 signature at the start of the connection")]
    NoSignature,
    #[error("PROXY v2 header announces {0} bytes after its fixed part, more than the {MAX_REST} accepted")]
    TooLong(usize),
    #[error("invalid PROXY v2 header: {0}")]
    Invalid(#[from] ppp::v2::ParseError),
}

/// Reads one PROXY v2 header from the start of `io`. `Ok(Some(source))`: the client's
/// address as the load balancer saw it; `Ok(None)`: a `LOCAL` header or one without IP
/// addresses, so the socket peer is the client.
pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<SocketAddr>, Refused> {
    let mut buf = vec![0u8; FIXED];
    io.read_exact(&mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        return Err(Refused::Version1);
    }
    if !buf.starts_with(PROTOCOL_PREFIX) {
        return Err(Refused::NoSignature);
    }
    let rest = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if rest > MAX_REST {
        return Err(Refused::TooLong(rest));
    }
    buf.resize(FIXED + rest, 0);
    io.read_exact(&mut buf[FIXED..]).await?;
    let header = Header::try_from(buf.as_slice())?;
    Ok(match header.command {
        Command::Local => None,
        Command::Proxy => match header.addresses {
            Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unspecified | Addresses::Unix(_) => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut v = PROTOCOL_PREFIX.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend(((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        v.extend(addrs);
        v.extend(tlvs);
        v
    }

    fn v4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend([10, 0, 0, 1]);
        a.extend(port.to_be_bytes());
        a.extend(443u16.to_be_bytes());
        a
    }

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, Refused>, Vec<u8>) {
        let mut r = bytes;
        let out = read(&mut r).await;
        (out, r.to_vec())
    }

    #[tokio::test]
    async fn ipv4_source_and_nothing_after_the_header_consumed() {
        let mut bytes = header(1, 0x11, &v4([203, 0, 113, 7], 50000), &[0x04, 0, 1, 9]);
        bytes.extend(b"\x16\x03\x01 ClientHello");
        let (r, left) = parse(&bytes).await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:50000".parse().unwrap()));
        assert_eq!(left, b"\x16\x03\x01 ClientHello");
    }

    #[tokio::test]
    async fn ipv6_source() {
        let mut a = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        a.extend(
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        a.extend(4242u16.to_be_bytes());
        a.extend(443u16.to_be_bytes());
        let (r, _) = parse(&header(1, 0x21, &a, &[])).await;
        assert_eq!(r.unwrap(), Some("[2001:db8::7]:4242".parse().unwrap()));
    }

    #[tokio::test]
    async fn local_and_unspecified_keep_the_socket_peer() {
        let (r, _) = parse(&header(0, 0x00, &[], &[])).await;
        assert_eq!(r.unwrap(), None);
        // LOCAL with addresses (some balancers send them): still the socket peer.
        let (r, _) = parse(&header(0, 0x11, &v4([1, 2, 3, 4], 1), &[])).await;
        assert_eq!(r.unwrap(), None);
        let (r, _) = parse(&header(1, 0x00, &[], &[])).await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn refused_headers() {
        let (r, _) = parse(b"PROXY TCP4 1.2.3.4 10.0.0.1 5000 443\r\n").await;
        assert!(matches!(r, Err(Refused::Version1)), "{r:?}");
        let (r, _) = parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh").await;
        assert!(matches!(r, Err(Refused::NoSignature)), "{r:?}");
        // Cut short: the connection ends before the announced length.
        let full = header(1, 0x11, &v4([1, 2, 3, 4], 1), &[]);
        let (r, _) = parse(&full[..full.len() - 3]).await;
        assert!(matches!(r, Err(Refused::Io(_))), "{r:?}");
        let (r, _) = parse(&full[..10]).await;
        assert!(matches!(r, Err(Refused::Io(_))), "{r:?}");
        // Version 1 in the binary form, an unknown command, fewer bytes than IPv4 needs.
        let mut bad = full.clone();
        bad[12] = 0x11;
        assert!(matches!(parse(&bad).await.0, Err(Refused::Invalid(_))));
        let mut bad = full.clone();
        bad[12] = 0x2f;
        assert!(matches!(parse(&bad).await.0, Err(Refused::Invalid(_))));
        let short = header(1, 0x11, &[1, 2, 3, 4], &[]);
        assert!(matches!(parse(&short).await.0, Err(Refused::Invalid(_))));
        // Longer than the bound: refused before anything more is read.
        let mut long = header(1, 0x11, &[], &[]);
        long[14..16].copy_from_slice(&((MAX_REST + 1) as u16).to_be_bytes());
        assert!(matches!(parse(&long).await.0, Err(Refused::TooLong(_))));
    }
}
