//! One-pass frame scanners that find where a RESP frame ends, enforce the
//! proxy's limits, and remember their progress between reads.
//!
//! They exist because redis-protocol's decoders (v6) enforce no size or depth
//! limit (a deeply nested array overflows the stack), do not parse inline
//! commands, and re-parse a large frame from its start on every read. The
//! scanners look only at headers and lengths, never copy payloads, and hand
//! out the length of each complete frame; redis-protocol then decodes only
//! complete, bounded frames (or the bytes pass through untouched).

use memchr::memchr;

use super::ProtocolError;

/// Longest header line (`*<count>` or `$<len>`) a client may send; Redis
/// answers "too big mbulk count string" / "too big bulk count string" past it.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Limits that apply to requests from one client. Defaults mirror Redis.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest bulk string argument (Redis `proto-max-bulk-len`, 512 MB).
    pub max_bulk_bytes: usize,
    /// Most arguments in one multibulk request (Redis: 1024 * 1024).
    pub max_multibulk_len: usize,
    /// Longest inline command line (Redis `PROTO_INLINE_MAX_SIZE`, 64 KB).
    pub max_inline_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_bytes: 64 * 1024,
        }
    }
}

/// A complete request found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFrame {
    /// `*<argc>` followed by `argc` bulk strings, `len` bytes in all; the
    /// first argument (the command name) is `name_len` bytes at `name_at`.
    Multibulk {
        len: usize,
        argc: usize,
        name_at: usize,
        name_len: usize,
        /// The argument after the name (usually the first key), if any.
        arg1_at: usize,
        arg1_len: usize,
    },
    /// A line typed as in telnet, `len` bytes including its line ending.
    Inline { len: usize },
    /// Something Redis ignores without a reply: an empty inline line or `*0`/`*-1`.
    Empty { len: usize },
}

impl RequestFrame {
    /// Bytes the frame occupies at the start of the buffer.
    pub fn len(&self) -> usize {
        match *self {
            RequestFrame::Multibulk { len, .. } | RequestFrame::Inline { len } | RequestFrame::Empty { len } => len,
        }
    }

    /// True for a frame of no bytes, which the scanner never produces.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finds request boundaries in a client's read buffer, incrementally.
///
/// Call [`RequestScanner::scan`] with the unconsumed buffer after every read.
/// `Ok(None)` means "need more bytes"; progress made so far is kept, so a
/// 512 MB argument arriving in small reads is looked at once, not once per read.
/// After a complete frame, the caller removes `frame.len()` bytes from the
/// front of its buffer before scanning again.
#[derive(Debug, Default)]
pub struct RequestScanner {
    limits: RequestLimits,
    progress: Option<MultibulkProgress>,
    /// Bytes of an inline line already searched for its end.
    inline_searched: usize,
}

#[derive(Debug, Clone, Copy)]
struct MultibulkProgress {
    argc: usize,
    /// Arguments still to be seen.
    remaining: usize,
    /// Offset of the next argument's header.
    pos: usize,
    /// Where the first two arguments' bytes are, once seen.
    name_at: usize,
    name_len: usize,
    arg1_at: usize,
    arg1_len: usize,
}

impl RequestScanner {
    pub fn new(limits: RequestLimits) -> Self {
        Self {
            limits,
            progress: None,
            inline_searched: 0,
        }
    }

    /// Looks for one complete request at the start of `buf`.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<RequestFrame>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if self.progress.is_none() && buf[0] != b'*' {
            return self.scan_inline(buf);
        }
        let mut progress = match self.progress {
            Some(progress) => progress,
            None => {
                let Some(next) = header_line(buf, 1, "mbulk count")? else {
                    return Ok(None);
                };
                let count = parse_len(&buf[1..next - 2]).ok_or(ProtocolError::new("invalid multibulk length"))?;
                if count <= 0 {
                    return Ok(Some(RequestFrame::Empty { len: next }));
                }
                let count = count as usize;
                if count > self.limits.max_multibulk_len {
                    return Err(ProtocolError::new("invalid multibulk length"));
                }
                MultibulkProgress {
                    argc: count,
                    remaining: count,
                    pos: next,
                    name_at: 0,
                    name_len: 0,
                    arg1_at: 0,
                    arg1_len: 0,
                }
            }
        };
        while progress.remaining > 0 {
            let pos = progress.pos;
            if pos >= buf.len() {
                self.progress = Some(progress);
                return Ok(None);
            }
            if buf[pos] != b'$' {
                self.progress = None;
                return Err(ProtocolError::new(format!("expected '$', got '{}'", buf[pos] as char)));
            }
            let Some(body) = header_line(buf, pos + 1, "bulk count")? else {
                self.progress = Some(progress);
                return Ok(None);
            };
            let len = parse_len(&buf[pos + 1..body - 2])
                .filter(|len| *len >= 0 && *len as usize <= self.limits.max_bulk_bytes)
                .ok_or(ProtocolError::new("invalid bulk length"))? as usize;
            let end = body + len + 2;
            if buf.len() < end {
                self.progress = Some(progress);
                return Ok(None);
            }
            if progress.remaining == progress.argc {
                progress.name_at = body;
                progress.name_len = len;
            } else if progress.remaining + 1 == progress.argc {
                progress.arg1_at = body;
                progress.arg1_len = len;
            }
            // Redis does not check the terminator either; it skips two bytes.
            progress.pos = end;
            progress.remaining -= 1;
        }
        self.progress = None;
        Ok(Some(RequestFrame::Multibulk {
            len: progress.pos,
            argc: progress.argc,
            name_at: progress.name_at,
            name_len: progress.name_len,
            arg1_at: progress.arg1_at,
            arg1_len: progress.arg1_len,
        }))
    }

    /// How many bytes the frame in progress needs at least, if known; lets
    /// the reader reserve a large argument's space once.
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        let Some(progress) = self.progress else {
            return 0;
        };
        let pos = progress.pos;
        if pos < buf.len()
            && buf[pos] == b'$'
            && let Ok(Some(body)) = header_line(buf, pos + 1, "bulk count")
            && let Some(len) = parse_len(&buf[pos + 1..body - 2])
        {
            return body + len.max(0) as usize + 2;
        }
        0
    }

    fn scan_inline(&mut self, buf: &[u8]) -> Result<Option<RequestFrame>, ProtocolError> {
        let from = self.inline_searched.min(buf.len());
        match memchr(b'\n', &buf[from..]) {
            Some(offset) => {
                self.inline_searched = 0;
                let len = from + offset + 1;
                if len > self.limits.max_inline_bytes {
                    return Err(ProtocolError::new("too big inline request"));
                }
                let line = trim_line_end(&buf[..len]);
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    Ok(Some(RequestFrame::Empty { len }))
                } else {
                    Ok(Some(RequestFrame::Inline { len }))
                }
            }
            None if buf.len() > self.limits.max_inline_bytes => Err(ProtocolError::new("too big inline request")),
            None => {
                self.inline_searched = buf.len();
                Ok(None)
            }
        }
    }
}

/// The arguments of a multibulk request [`RequestScanner`] accepted
/// (`frame` is exactly its bytes), read as the scanner (and Redis) reads
/// them: each header's digits end at its `\r`, and the two bytes after a
/// header or a bulk are skipped unchecked.
pub fn multibulk_args(frame: &bytes::Bytes) -> Option<Vec<bytes::Bytes>> {
    multibulk_args_from(frame, 0).map(|(args, _)| args)
}

/// The arguments of the multibulk frame starting at `start` in `batch`
/// (a batch of frames), and the offset just past it.
pub fn multibulk_args_from(batch: &bytes::Bytes, start: usize) -> Option<(Vec<bytes::Bytes>, usize)> {
    let frame = batch;
    let buf = batch.as_ref();
    if buf.get(start) != Some(&b'*') {
        return None;
    }
    let count_end = header_line(buf, start + 1, "mbulk count").ok()??;
    let count = usize::try_from(parse_len(&buf[start + 1..count_end - 2])?).ok()?;
    let mut args = Vec::with_capacity(count.min(1024));
    let mut pos = count_end;
    for _ in 0..count {
        if buf.get(pos) != Some(&b'$') {
            return None;
        }
        let body = header_line(buf, pos + 1, "bulk count").ok()??;
        let len = usize::try_from(parse_len(&buf[pos + 1..body - 2])?).ok()?;
        let end = body.checked_add(len)?;
        if end + 2 > buf.len() {
            return None;
        }
        args.push(frame.slice(body..end));
        pos = end + 2;
    }
    Some((args, pos))
}

/// Finds the `\r\n` ending the header line whose digits start at `from`.
/// Returns the offset just past it.
fn header_line(buf: &[u8], from: usize, what: &str) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[from.min(buf.len())..];
    match memchr(b'\r', window) {
        Some(offset) if offset > MAX_HEADER_LINE => Err(ProtocolError::new(format!("too big {what} string"))),
        Some(offset) => {
            let end = from + offset;
            if end + 1 >= buf.len() {
                return Ok(None);
            }
            Ok(Some(end + 2))
        }
        None if window.len() > MAX_HEADER_LINE => Err(ProtocolError::new(format!("too big {what} string"))),
        None => Ok(None),
    }
}

/// Parses a signed decimal length the way Redis's `string2ll` does: no
/// sign other than a leading '-', no spaces, no leading '+'.
fn parse_len(digits: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(digits).ok()?;
    if text.is_empty() || text.starts_with('+') {
        return None;
    }
    text.parse::<i64>().ok()
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A complete reply found at the start of an upstream read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame {
    /// Bytes the reply occupies, including any RESP3 attribute before it.
    pub len: usize,
    /// An out-of-band RESP3 push (`>`), not the answer to a request.
    pub push: bool,
}

/// Limits that apply to replies from Redis.
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimits {
    /// Deepest aggregate nesting accepted; guards the proxy's own decoders.
    pub max_nesting_depth: usize,
    /// Largest bulk reply accepted.
    pub max_bulk_bytes: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        Self {
            max_nesting_depth: 1024,
            max_bulk_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Finds reply boundaries in a stream of RESP2 or RESP3 frames, iteratively
/// (an explicit stack, so depth costs heap, not call stack) and resumably.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    limits: ReplyLimits,
    /// Offset of the next element header within the current reply.
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    open: Vec<OpenAggregate>,
    /// Whether the reply being scanned is a push; known after its first header.
    push: Option<bool>,
}

#[derive(Debug, Clone, Copy)]
struct OpenAggregate {
    remaining: usize,
    /// RESP3 attributes decorate the next element and are not elements.
    attribute: bool,
}

impl ReplyScanner {
    pub fn new(limits: ReplyLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Scans `buf`, which starts at the current reply. `Ok(None)` means "need
    /// more bytes" and keeps the progress made.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<ReplyFrame>, ProtocolError> {
        loop {
            let pos = self.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            let kind = buf[pos];
            let Some(line_end) = memchr(b'\n', &buf[pos..]).map(|offset| pos + offset) else {
                return Ok(None);
            };
            // (A line must hold its type byte before the CR: "\r\n" alone is none.)
            if line_end < pos + 2 || buf[line_end - 1] != b'\r' {
                return Err(ProtocolError::new("reply line without CRLF"));
            }
            let header = &buf[pos + 1..line_end - 1];
            let next = line_end + 1;
            if self.open.is_empty() && kind != b'|' && self.push.is_none() {
                self.push = Some(kind == b'>');
            }
            let completes_element = match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = next;
                    true
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_len(header).ok_or(ProtocolError::new("invalid bulk length in reply"))?;
                    if len < 0 {
                        self.pos = next;
                    } else {
                        let len = len as usize;
                        if len > self.limits.max_bulk_bytes {
                            return Err(ProtocolError::new("bulk reply above max_bulk_bytes"));
                        }
                        let end = next + len + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        self.pos = end;
                    }
                    true
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let count = parse_len(header).ok_or(ProtocolError::new("invalid aggregate length in reply"))?;
                    self.pos = next;
                    if count <= 0 {
                        true
                    } else {
                        if self.open.len() >= self.limits.max_nesting_depth {
                            return Err(ProtocolError::new("reply nesting deeper than max_nesting_depth"));
                        }
                        let pairs = matches!(kind, b'%' | b'|');
                        let count = count as usize;
                        self.open.push(OpenAggregate {
                            remaining: if pairs { count * 2 } else { count },
                            attribute: kind == b'|',
                        });
                        false
                    }
                }
                other => {
                    return Err(ProtocolError::new(format!(
                        "unexpected reply type byte {:?}",
                        other as char
                    )));
                }
            };
            if completes_element && self.element_completed() {
                let frame = ReplyFrame {
                    len: self.pos,
                    push: self.push.unwrap_or(false),
                };
                self.pos = 0;
                self.push = None;
                return Ok(Some(frame));
            }
        }
    }

    /// Records that one element ended; true when the whole reply has.
    fn element_completed(&mut self) -> bool {
        loop {
            let Some(top) = self.open.last_mut() else {
                return true;
            };
            top.remaining -= 1;
            if top.remaining > 0 {
                return false;
            }
            let closed = self.open.pop().unwrap_or(OpenAggregate {
                remaining: 0,
                attribute: false,
            });
            if closed.attribute {
                // The attribute is done; the element it decorates follows.
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/corpus/reply_frames/regression-*): a reply
    /// line that is only "\r\n" panicked slicing its header.
    #[test]
    fn a_bare_crlf_in_a_reply_is_an_error_not_a_panic() {
        for input in [
            &b"\r\n"[..],
            b"*2\r\n\r\n",
            b"!21\r\nS)NTAX 5ind$5\r\nhelloval\r\nid synta",
        ] {
            let mut scanner = ReplyScanner::new(ReplyLimits::default());
            let mut buf = input;
            while let Ok(Some(frame)) = scanner.scan(buf) {
                buf = &buf[frame.len..];
            }
        }
        let mut scanner = ReplyScanner::new(ReplyLimits::default());
        assert!(scanner.scan(b"\r\n").is_err());
    }

    /// Found by fuzzing (fuzz/corpus/request_frames/regression-*): Redis
    /// reads a bulk header's digits up to its CR and skips the next byte
    /// unchecked, and so does the scanner; the arguments are read the same
    /// way (redis-protocol refused them, which cut the client off).
    #[test]
    fn arguments_are_read_as_the_scanner_and_redis_read_them() {
        let wire = bytes::Bytes::from_static(b"*2\r\n$4\r\x0fMG;T\r\n$1\r\na\r\n");
        let mut scanner = RequestScanner::new(RequestLimits::default());
        let frame = scanner.scan(&wire).unwrap().expect("a frame, as Redis takes it");
        assert_eq!(frame.len(), wire.len());
        let args = multibulk_args(&wire).expect("its arguments");
        assert_eq!(
            args,
            vec![bytes::Bytes::from_static(b"MG;T"), bytes::Bytes::from_static(b"a")]
        );
        let proper = bytes::Bytes::from_static(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(multibulk_args(&proper).unwrap(), vec![&b"SET"[..], b"k", b""]);
    }

    fn scan_request(bytes: &[u8]) -> Result<Option<RequestFrame>, ProtocolError> {
        RequestScanner::new(RequestLimits::default()).scan(bytes)
    }

    #[test]
    fn multibulk_request_is_found_whole() {
        let bytes = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n";
        assert_eq!(
            scan_request(bytes).unwrap(),
            Some(RequestFrame::Multibulk {
                len: 20,
                argc: 2,
                name_at: 8,
                name_len: 3,
                arg1_at: 17,
                arg1_len: 1
            })
        );
    }

    #[test]
    fn request_split_across_reads_resumes_where_it_stopped() {
        let bytes = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let mut scanner = RequestScanner::new(RequestLimits::default());
        for end in 0..bytes.len() {
            assert_eq!(scanner.scan(&bytes[..end]).unwrap(), None, "prefix {end}");
        }
        assert_eq!(
            scanner.scan(bytes).unwrap(),
            Some(RequestFrame::Multibulk {
                len: bytes.len(),
                argc: 3,
                name_at: 8,
                name_len: 3,
                arg1_at: 17,
                arg1_len: 1
            })
        );
    }

    #[test]
    fn large_argument_reports_bytes_needed() {
        let mut scanner = RequestScanner::new(RequestLimits::default());
        let bytes = b"*2\r\n$3\r\nSET\r\n$100000\r\nabc";
        assert_eq!(scanner.scan(bytes).unwrap(), None);
        assert_eq!(scanner.bytes_needed(bytes), 22 + 100_000 + 2);
    }

    #[test]
    fn inline_request_and_empty_lines() {
        assert_eq!(
            scan_request(b"PING\r\n").unwrap(),
            Some(RequestFrame::Inline { len: 6 })
        );
        assert_eq!(
            scan_request(b"set a b\n").unwrap(),
            Some(RequestFrame::Inline { len: 8 })
        );
        assert_eq!(scan_request(b"\r\n").unwrap(), Some(RequestFrame::Empty { len: 2 }));
        assert_eq!(scan_request(b"PIN").unwrap(), None);
    }

    #[test]
    fn protocol_errors_use_redis_wording() {
        let cases: [(&[u8], &str); 6] = [
            (b"*abc\r\n", "invalid multibulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n:5\r\n", "expected '$', got ':'"),
            (b"*99999999\r\n", "invalid multibulk length"),
            (b"*1\r\n$600000000\r\n", "invalid bulk length"),
            (b"*+1\r\n", "invalid multibulk length"),
        ];
        for (bytes, message) in cases {
            let error = scan_request(bytes).unwrap_err();
            assert_eq!(error.message(), message, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn limits_are_configurable() {
        let limits = RequestLimits {
            max_bulk_bytes: 10,
            max_multibulk_len: 2,
            max_inline_bytes: 8,
        };
        let mut scanner = RequestScanner::new(limits);
        assert!(scanner.scan(b"*1\r\n$11\r\n").is_err());
        let mut scanner = RequestScanner::new(limits);
        assert!(scanner.scan(b"*3\r\n").is_err());
        let mut scanner = RequestScanner::new(limits);
        assert!(scanner.scan(b"PING PING PING\r\n").is_err());
        let mut scanner = RequestScanner::new(limits);
        assert!(scanner.scan(b"PINGPINGPING").is_err());
    }

    #[test]
    fn zero_and_negative_multibulk_are_ignored() {
        assert_eq!(scan_request(b"*0\r\n").unwrap(), Some(RequestFrame::Empty { len: 4 }));
        assert_eq!(scan_request(b"*-1\r\n").unwrap(), Some(RequestFrame::Empty { len: 5 }));
    }

    fn scan_reply(bytes: &[u8]) -> Result<Option<ReplyFrame>, ProtocolError> {
        ReplyScanner::new(ReplyLimits::default()).scan(bytes)
    }

    #[test]
    fn every_reply_type_is_delimited() {
        let replies: [&[u8]; 14] = [
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$5\r\nhello\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!5\r\nERR x\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"%1\r\n+k\r\n~2\r\n:1\r\n:2\r\n",
        ];
        for reply in replies {
            let mut padded = reply.to_vec();
            padded.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                scan_reply(&padded).unwrap(),
                Some(ReplyFrame {
                    len: reply.len(),
                    push: false
                }),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn push_and_attribute_are_recognised() {
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        assert_eq!(
            scan_reply(push).unwrap(),
            Some(ReplyFrame {
                len: push.len(),
                push: true
            })
        );
        let attributed = b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n";
        assert_eq!(
            scan_reply(attributed).unwrap(),
            Some(ReplyFrame {
                len: attributed.len(),
                push: false
            })
        );
        let nested = b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n";
        assert_eq!(scan_reply(nested).unwrap().map(|f| f.len), Some(nested.len()));
    }

    #[test]
    fn reply_split_anywhere_is_found_once_complete() {
        let reply = b"*3\r\n$5\r\nhello\r\n*1\r\n:7\r\n%1\r\n+a\r\n_\r\n";
        let mut scanner = ReplyScanner::new(ReplyLimits::default());
        for end in 0..reply.len() {
            assert_eq!(scanner.scan(&reply[..end]).unwrap(), None, "prefix {end}");
        }
        assert_eq!(scanner.scan(reply).unwrap().map(|f| f.len), Some(reply.len()));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut bytes = b"*1\r\n".repeat(100_000);
        bytes.extend_from_slice(b":1\r\n");
        let error = scan_reply(&bytes).unwrap_err();
        assert!(error.message().contains("nesting"), "{}", error.message());
    }
}
