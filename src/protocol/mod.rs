//! RESP on the wire: finding frames ([`scan`]), turning a request frame into a
//! [`Command`], and encoding the few replies the proxy writes itself
//! ([`Reply`]). Replies from Redis are never decoded here; they pass through
//! as bytes.

pub mod inline;
pub mod scan;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redis_protocol::resp3::types::{BytesFrame as Resp3Frame, VerbatimStringFormat};

pub use scan::{ReplyFrame, ReplyLimits, ReplyScanner, RequestFrame, RequestLimits, RequestScanner};

/// A client broke the protocol. Redis answers `-ERR Protocol error: <message>`
/// and closes that connection; so does the proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {message}")]
pub struct ProtocolError {
    message: String,
}

impl ProtocolError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The part after "Protocol error: ", as Redis words it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The RESP version a client speaks; `HELLO 3` switches to RESP3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> u8 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One request from a client: its name, its RESP encoding ready to forward,
/// and, once [`Command::decode_args`] has run, its arguments.
///
/// For multibulk requests `wire` is the client's own bytes, so an unchanged
/// command is forwarded without re-encoding, and a command that only passes
/// through is never decoded at all: the scanner already found its name.
#[derive(Debug, Clone)]
pub struct Command {
    name: Bytes,
    /// The argument after the name, when there is one.
    arg1: Option<Bytes>,
    argc: usize,
    /// Empty until decoded; then every argument, the name first.
    args: Vec<Bytes>,
    decoded: bool,
    wire: Bytes,
}

impl Command {
    /// Takes a complete frame found by [`RequestScanner`]; `frame` holds
    /// exactly the bytes of that frame. Inline commands are split at once;
    /// multibulk arguments wait for [`Command::decode_args`].
    pub fn decode(kind: RequestFrame, frame: Bytes) -> Result<Command, ProtocolError> {
        match kind {
            RequestFrame::Multibulk {
                name_at,
                name_len,
                argc,
                arg1_at,
                arg1_len,
                ..
            } => Ok(Command {
                name: frame.slice(name_at..name_at + name_len),
                arg1: (argc >= 2).then(|| frame.slice(arg1_at..arg1_at + arg1_len)),
                argc,
                args: Vec::new(),
                decoded: false,
                wire: frame,
            }),
            RequestFrame::Inline { .. } => {
                let args = inline::split_args(&frame)?;
                Ok(Command::from_args(args))
            }
            RequestFrame::Empty { .. } => Err(ProtocolError::new("empty request")),
        }
    }

    /// Decodes the arguments if not done yet, as the scanner read them
    /// (so exactly as Redis reads the same bytes).
    pub fn decode_args(&mut self) -> Result<(), ProtocolError> {
        if self.decoded {
            return Ok(());
        }
        self.args =
            scan::multibulk_args(&self.wire).ok_or_else(|| ProtocolError::new("expected a multibulk request"))?;
        self.decoded = true;
        Ok(())
    }

    /// Builds a command from arguments, encoding it as a RESP array.
    pub fn from_args(args: Vec<Bytes>) -> Command {
        let mut wire = BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode_array(&mut wire, &args);
        Command {
            name: args.first().cloned().unwrap_or_default(),
            arg1: args.get(1).cloned(),
            argc: args.len(),
            args,
            decoded: true,
            wire: wire.freeze(),
        }
    }

    /// True once the arguments are available.
    pub fn is_decoded(&self) -> bool {
        self.decoded
    }

    /// All arguments, the command name first; empty until decoded.
    pub fn args(&self) -> &[Bytes] {
        debug_assert!(self.decoded, "arguments of {:?} used before decode_args", self.name);
        &self.args
    }

    /// How many arguments, the name included (known without decoding).
    pub fn argc(&self) -> usize {
        self.argc
    }

    /// The argument after the name (known without decoding).
    pub fn first_arg(&self) -> Option<&Bytes> {
        self.arg1.as_ref()
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// True when the command name equals `upper` ignoring ASCII case.
    pub fn is(&self, upper: &str) -> bool {
        self.name().eq_ignore_ascii_case(upper.as_bytes())
    }

    /// The argument at `index` (0 is the name), if present; past the name,
    /// only once decoded.
    pub fn arg(&self, index: usize) -> Option<&[u8]> {
        if index == 0 {
            return Some(&self.name);
        }
        self.args().get(index).map(|a| a.as_ref())
    }

    /// The RESP bytes to send upstream.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }
}

/// Appends a RESP array of bulk strings: the form every request takes.
pub fn encode_array(out: &mut BytesMut, args: &[Bytes]) {
    let frame = Resp2Frame::Array(args.iter().cloned().map(Resp2Frame::BulkString).collect());
    // Encoding into a growable buffer cannot fail.
    let _ = redis_protocol::resp2::encode::extend_encode(out, &frame, false);
}

/// A reply the proxy writes itself (errors, local answers), encoded for the
/// client's protocol exactly as Redis would encode it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Nil,
    /// Text Redis sends as a verbatim string in RESP3 (INFO does).
    Verbatim(Bytes),
}

impl Reply {
    /// An error reply; `message` starts with its code (`ERR`, `NOAUTH`, ...).
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error(message.into())
    }

    pub fn encode(&self, protocol: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        match protocol {
            Protocol::Resp2 => {
                let frame = match self {
                    Reply::Status(text) => Resp2Frame::SimpleString(Bytes::from_static(text.as_bytes())),
                    Reply::Error(message) => Resp2Frame::Error(sanitize(message).into()),
                    Reply::Integer(value) => Resp2Frame::Integer(*value),
                    Reply::Bulk(bytes) | Reply::Verbatim(bytes) => Resp2Frame::BulkString(bytes.clone()),
                    Reply::Nil => Resp2Frame::Null,
                };
                let _ = redis_protocol::resp2::encode::extend_encode(&mut out, &frame, false);
            }
            Protocol::Resp3 => {
                let frame = match self {
                    Reply::Status(text) => Resp3Frame::SimpleString {
                        data: Bytes::from_static(text.as_bytes()),
                        attributes: None,
                    },
                    Reply::Error(message) => Resp3Frame::SimpleError {
                        data: sanitize(message).into(),
                        attributes: None,
                    },
                    Reply::Integer(value) => Resp3Frame::Number {
                        data: *value,
                        attributes: None,
                    },
                    Reply::Bulk(bytes) => Resp3Frame::BlobString {
                        data: bytes.clone(),
                        attributes: None,
                    },
                    Reply::Verbatim(bytes) => Resp3Frame::VerbatimString {
                        data: bytes.clone(),
                        format: VerbatimStringFormat::Text,
                        attributes: None,
                    },
                    Reply::Nil => Resp3Frame::Null,
                };
                let _ = redis_protocol::resp3::encode::complete::extend_encode(&mut out, &frame, false);
            }
        }
        out.freeze()
    }
}

/// Error lines cannot hold CR or LF; Redis replaces them with spaces too.
fn sanitize(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibulk_command_keeps_client_bytes() {
        let frame = Bytes::from_static(b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n");
        let kind = RequestScanner::default().scan(&frame).unwrap().unwrap();
        let mut command = Command::decode(kind, frame.clone()).unwrap();
        assert!(command.is("GET"), "the name is known before decoding");
        assert!(!command.is_decoded());
        command.decode_args().unwrap();
        assert_eq!(command.arg(1), Some(&b"k"[..]));
        assert_eq!(command.args().len(), 2);
        assert_eq!(command.wire(), &frame);
    }

    #[test]
    fn inline_command_is_reencoded_as_multibulk() {
        let frame = Bytes::from_static(b"set greeting \"hello world\"\r\n");
        let kind = RequestScanner::default().scan(&frame).unwrap().unwrap();
        let command = Command::decode(kind, frame).unwrap();
        assert_eq!(
            command.wire().as_ref(),
            b"*3\r\n$3\r\nset\r\n$8\r\ngreeting\r\n$11\r\nhello world\r\n"
        );
    }

    #[test]
    fn replies_match_redis_encoding_per_protocol() {
        assert_eq!(Reply::Nil.encode(Protocol::Resp2).as_ref(), b"$-1\r\n");
        assert_eq!(Reply::Nil.encode(Protocol::Resp3).as_ref(), b"_\r\n");
        assert_eq!(
            Reply::error("ERR bad\r\nthing").encode(Protocol::Resp2).as_ref(),
            b"-ERR bad  thing\r\n"
        );
        assert_eq!(
            Reply::Verbatim(Bytes::from_static(b"# Cache\r\n"))
                .encode(Protocol::Resp3)
                .as_ref(),
            b"=13\r\ntxt:# Cache\r\n\r\n"
        );
        assert_eq!(Reply::Integer(-3).encode(Protocol::Resp3).as_ref(), b":-3\r\n");
    }
}
