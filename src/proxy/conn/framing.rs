//! Follows HTTP/1.1 request framing on the bytes hyper is about to read, for the one
//! thing hyper's parser hides from the service: a head with both `Content-Length` and
//! `Transfer-Encoding`. hyper drops the `Content-Length`, reads the body as chunked and
//! closes the connection afterwards; SPEC section 7 wants a `400`, so the index of such
//! a head is reported and [`super::ConnInfo::framing`] refuses that request.
//!
//! It reads the stream as hyper does (heads with httparse, bodies by `Content-Length` or
//! chunked). Anything it cannot follow (a head hyper would refuse anyway, a malformed
//! chunk) turns it off for the rest of the connection: hyper then has the last word, as
//! it would without this.

/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;
/// Header lines parsed per head (hyper refuses more than 100).
const MAX_HEADERS: usize = 128;

pub(super) struct Framing {
    state: State,
    /// A head, chunk-size line or trailer line not complete yet.
    buf: Vec<u8>,
    /// Longest head followed (hyper's read buffer limit).
    max_head: usize,
    /// Complete heads seen so far.
    heads: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailer,
    Off,
}

impl Framing {
    pub(super) fn new(max_head: usize) -> Self {
        Framing {
            state: State::Head,
            buf: Vec::new(),
            max_head,
            heads: 0,
        }
    }

    /// Follows `data`, the next bytes from the client; calls `conflict(i)` for head `i`
    /// (0-based) when it carries both `Content-Length` and `Transfer-Encoding`.
    pub(super) fn feed(&mut self, mut data: &[u8], mut conflict: impl FnMut(u64)) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are skipped (as httparse does).
                        let skip = data.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                        data = &data[skip.count()..];
                        if data.is_empty() {
                            return;
                        }
                        // The usual case: a whole head in one read, parsed where it is.
                        match parse_head(data) {
                            Parsed::Head(end, both, next) => {
                                self.head(Some((both, next)), &mut conflict);
                                data = &data[end..];
                                continue;
                            }
                            Parsed::Partial => {}
                            Parsed::Refused => {
                                self.state = State::Off;
                                return;
                            }
                        }
                    }
                    let old = self.buf.len();
                    self.buf.extend_from_slice(data);
                    let from = old.saturating_sub(3);
                    let Some(end) = head_end(&self.buf[from..]).map(|e| from + e) else {
                        if self.buf.len() > self.max_head {
                            self.state = State::Off;
                        }
                        return;
                    };
                    let parsed = match parse_head(&self.buf[..end]) {
                        Parsed::Head(n, both, next) if n == end => Some((both, next)),
                        _ => None,
                    };
                    self.buf.clear();
                    self.head(parsed, &mut conflict);
                    data = &data[end - old..];
                }
                State::Body(left) | State::ChunkData(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = match (self.state, left - n) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailer => {
                    let Some(line) = self.line(&mut data) else {
                        return;
                    };
                    self.state = match self.state {
                        State::ChunkSize => match chunk_size(&line) {
                            Some(0) => State::Trailer,
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        },
                        State::ChunkEnd if line == b"\r\n" => State::ChunkSize,
                        State::Trailer if line == b"\r\n" => State::Head,
                        State::Trailer => State::Trailer,
                        _ => State::Off,
                    };
                }
            }
        }
    }

    /// A complete head, parsed (`None`: hyper would refuse it).
    fn head(&mut self, parsed: Option<(bool, State)>, conflict: &mut impl FnMut(u64)) {
        match parsed {
            Some((both, next)) => {
                if both {
                    conflict(self.heads);
                }
                self.heads += 1;
                self.state = next;
            }
            None => self.state = State::Off,
        }
    }

    /// The next whole line (with its `\n`), taken from `data`; `None` while incomplete.
    fn line(&mut self, data: &mut &[u8]) -> Option<Vec<u8>> {
        match data.iter().position(|b| *b == b'\n') {
            Some(i) => {
                self.buf.extend_from_slice(&data[..=i]);
                *data = &data[i + 1..];
                Some(std::mem::take(&mut self.buf))
            }
            None => {
                self.buf.extend_from_slice(data);
                *data = &[];
                if self.buf.len() > MAX_LINE {
                    self.state = State::Off;
                }
                None
            }
        }
    }
}

/// Where the blank line that ends a head ends, in `s`.
fn head_end(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].iter().position(|b| *b == b'\n') {
        let at = from + p;
        match (s.get(at + 1), s.get(at + 2)) {
            (Some(b'\n'), _) => return Some(at + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

enum Parsed {
    /// Its length, whether it carries both framing headers, what follows it.
    Head(usize, bool, State),
    Partial,
    /// hyper would refuse it.
    Refused,
}

/// The head at the start of `buf`, as hyper reads it.
fn parse_head(buf: &[u8]) -> Parsed {
    if let Some(end) = plain_head(buf) {
        return Parsed::Head(end, false, State::Head);
    }
    parse_head_fully(buf)
}

/// The usual head, complete in `buf`, whose lines start with neither `Content-Length`
/// nor `Transfer-Encoding` (in any case): its length. Such a request has no body and
/// the next byte starts the next head, so there is nothing to parse. A head hyper would
/// refuse is followed here as if it were fine, harmlessly: hyper closes the connection
/// after refusing it. `None`: not complete, or a line that may be a framing header
/// (then [`parse_head_fully`] decides).
fn plain_head(buf: &[u8]) -> Option<usize> {
    const CL: &[u8] = b"content-length";
    const TE: &[u8] = b"transfer-encoding";
    let starts = |at: usize, name: &[u8]| {
        buf.get(at..at + name.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    for nl in memchr::memchr_iter(b'\n', buf) {
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            Some(b'c' | b'C') if starts(next, CL) => return None,
            Some(b't' | b'T') if starts(next, TE) => return None,
            _ => {}
        }
    }
    None
}

/// [`parse_head`] with httparse, for a head that may carry a framing header.
fn parse_head_fully(buf: &[u8]) -> Parsed {
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused,
    };
    // As hyper: the last Transfer-Encoding line decides, and it ends in chunked.
    let mut chunked = None;
    let (mut has_cl, mut length) = (false, None);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            has_cl = true;
            if length.is_none() {
                let Some(v) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                else {
                    return Parsed::Refused;
                };
                length = Some(v);
            }
        }
    }
    let next = match (chunked, length) {
        (Some(true), _) => State::ChunkSize,
        (Some(false), _) => return Parsed::Refused,
        (None, Some(n)) if n > 0 => State::Body(n),
        (None, _) => State::Head,
    };
    Parsed::Head(n, chunked.is_some() && has_cl, next)
}

/// The size in a chunk-size line (hex digits, then whitespace or `;extensions`, CRLF).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 || !line.ends_with(b"\r\n") {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; the heads reported.
    fn conflicts(input: &str, step: usize) -> (Vec<u64>, u64, State) {
        let mut f = Framing::new(16 * 1024);
        let mut seen = Vec::new();
        for piece in input.as_bytes().chunks(step) {
            f.feed(piece, |i| seen.push(i));
        }
        (seen, f.heads, f.state)
    }

    #[test]
    fn a_head_without_framing_headers_is_measured_without_parsing() {
        let full = |h: &str| match parse_head_fully(h.as_bytes()) {
            Parsed::Head(n, both, next) => Some((n, both, next)),
            _ => None,
        };
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\n",
            "GET / HTTP/1.1\nHost: a\n\nrest",
            "GET /content-length HTTP/1.1\r\nX-Content-Length: 5\r\nA: transfer-encoding\r\n\r\n",
        ] {
            let n = plain_head(head.as_bytes()).expect(head);
            assert_eq!(full(head), Some((n, false, State::Head)), "{head:?}");
        }
        // A line that may be a framing header, in any case, goes to httparse.
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\ncOnTeNt-LeNgTh: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
        ] {
            assert_eq!(plain_head(head.as_bytes()), None, "{head:?}");
        }
        assert_eq!(plain_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(plain_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
    }

    #[test]
    fn follows_pipelined_requests_in_any_pieces() {
        let input = "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
             POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;x=y\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n\
             POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\n";
        for step in [1, 2, 7, 64, input.len()] {
            assert_eq!(conflicts(input, step), (vec![3], 4, State::Head), "{step}");
        }
    }

    #[test]
    fn either_order_of_the_two_headers_is_a_conflict() {
        let te_first =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(conflicts(te_first, 5).0, vec![0]);
    }

    #[test]
    fn what_hyper_refuses_turns_it_off() {
        for input in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "POST / HTTP/1.1\r\nBad Header\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            assert_eq!(conflicts(input, 3).2, State::Off, "{input:?}");
        }
        let mut f = Framing::new(64);
        f.feed(&[b'a'; 65], |_| {});
        assert_eq!(f.state, State::Off);
        // A bad head without framing headers is followed as bodiless, not parsed:
        // hyper refuses it and closes the connection, so nothing after it is read.
        let (seen, heads, state) = conflicts("GET / HTTP/1.1\r\nBad Header\r\n\r\n", 3);
        assert_eq!((seen, heads, state), (vec![], 1, State::Head));
    }
}
