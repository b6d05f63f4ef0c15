//! The stored value format: how a value written through the proxy may look
//! in Redis (DESIGN.md, "Stored value format").
//!
//! ```text
//! magic (4) | format version (1) | codec id (1) | original length (LEB128 varint, 1-10) | payload
//! magic   = C1 41 55 52  ("\xC1AUR": 0xC1 never starts valid UTF-8 text)
//! version = 01
//! codec   = 00 stored as is (escape) | 01 zstd | 02 gzip | 03 zlib | 04+ reserved
//! ```
//!
//! This is persistent data: a later release must read what this one wrote,
//! so the layout is pinned by golden tests below. Parsing is total: any
//! bytes either are not an envelope (and are returned as they are), or are
//! one whose header is well formed, which then decodes exactly or fails
//! with a [`DecodeError`]; nothing panics, and nothing allocates more than
//! the declared length, which is checked against a limit first.

use std::io::Read;

use thiserror::Error;

/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = [0xC1, b'A', b'U', b'R'];
/// The format version this release writes (and the only one it reads).
pub const FORMAT_VERSION: u8 = 1;
/// The longest header: magic, version, codec, a 10-byte varint.
pub const MAX_HEADER_LEN: usize = MAGIC.len() + 2 + 10;

/// How an envelope's payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// The payload is the value itself: a raw value that begins with the
    /// magic, escaped so that decoding is never ambiguous.
    Stored,
    Zstd,
    Gzip,
    Zlib,
}

impl Codec {
    pub fn id(self) -> u8 {
        match self {
            Codec::Stored => 0,
            Codec::Zstd => 1,
            Codec::Gzip => 2,
            Codec::Zlib => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<Codec> {
        Some(match id {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            2 => Codec::Gzip,
            3 => Codec::Zlib,
            _ => return None,
        })
    }

    /// The name used in configuration and statistics.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Stored => "none",
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::Zlib => "zlib",
        }
    }
}

/// A well-formed envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub codec: Codec,
    /// The length of the value before it was encoded.
    pub original_len: u64,
    /// Where the payload starts.
    pub len: usize,
}

/// Why an envelope could not be decoded. The value's bytes are never
/// returned instead: they are not what was written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("declares {declared} bytes, more than limits.max_value_bytes ({limit})")]
    TooLarge { declared: u64, limit: u64 },
    #[error("{codec} payload is damaged ({reason})")]
    Damaged { codec: &'static str, reason: String },
    #[error("{codec} payload decodes to {actual} bytes, not the {declared} declared")]
    LengthMismatch {
        codec: &'static str,
        declared: u64,
        actual: u64,
    },
}

/// Whether `bytes` begins with the magic (so a raw value must be escaped).
pub fn starts_with_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// The header of `stored`, or `None` if it is not an envelope this release
/// reads: no magic, another format version, an unknown codec, or a
/// malformed length. Such bytes were not written by the proxy and are
/// returned as they are.
pub fn parse_header(stored: &[u8]) -> Option<Header> {
    let rest = stored.strip_prefix(&MAGIC)?;
    let (&version, rest) = rest.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    let (&codec, rest) = rest.split_first()?;
    let codec = Codec::from_id(codec)?;
    let (original_len, varint_len) = read_varint(rest)?;
    Some(Header {
        codec,
        original_len,
        len: MAGIC.len() + 2 + varint_len,
    })
}

/// The original value inside `stored`: `Ok(None)` when `stored` is not an
/// envelope (it is the value), `Ok(Some(value))` when it is, an error when
/// it is a damaged envelope or declares more than `limit` bytes. The
/// decompressor's output is capped at the declared length while it runs.
pub fn decode(stored: &[u8], limit: u64) -> Result<Option<Vec<u8>>, DecodeError> {
    let Some(header) = parse_header(stored) else {
        return Ok(None);
    };
    let payload = &stored[header.len..];
    let codec = header.codec.name();
    if header.original_len > limit {
        return Err(DecodeError::TooLarge {
            declared: header.original_len,
            limit,
        });
    }
    let declared = header.original_len;
    let mismatch = |actual: u64| DecodeError::LengthMismatch {
        codec,
        declared,
        actual,
    };
    let damaged = |reason: String| DecodeError::Damaged { codec, reason };
    // The declared length passed the limit, so it fits in memory.
    let capacity = declared as usize;
    let value = match header.codec {
        Codec::Stored => payload.to_vec(),
        Codec::Zstd => zstd_decompress(payload, capacity).map_err(|error| damaged(error.to_string()))?,
        Codec::Gzip => read_capped(flate2::read::GzDecoder::new(payload), capacity).map_err(damaged)?,
        Codec::Zlib => read_capped(flate2::read::ZlibDecoder::new(payload), capacity).map_err(damaged)?,
    };
    if value.len() as u64 != declared {
        return Err(mismatch(value.len() as u64));
    }
    Ok(Some(value))
}

thread_local! {
    /// One zstd decompression context per thread, kept between values.
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// At most `capacity` bytes out (zstd refuses to write more).
fn zstd_decompress(payload: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    ZSTD_DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(decompressor) => decompressor.decompress(payload, capacity),
            None => zstd::bulk::decompress(payload, capacity),
        }
    })
}

/// Reads at most `capacity + 1` bytes (one more shows a payload that
/// decodes to more than it declared, without decoding the rest).
fn read_capped(reader: impl Read, capacity: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(capacity.min(1 << 20));
    reader
        .take(capacity as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|error| error.to_string())?;
    Ok(out)
}

/// An envelope: the header for `codec` and `original_len`, then `payload`.
pub fn wrap(codec: Codec, original_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(codec.id());
    write_varint(&mut out, original_len);
    out.extend_from_slice(payload);
    out
}

/// `value` escaped: stored as is, behind a header.
pub fn escape(value: &[u8]) -> Vec<u8> {
    wrap(Codec::Stored, value.len() as u64, value)
}

/// LEB128: seven bits a byte, least significant first, high bit = more.
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The varint at the start of `bytes` and its length; `None` if it is
/// truncated, longer than ten bytes, overflows, or is not the shortest
/// form (so each length has exactly one encoding).
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            if index > 0 && byte == 0 {
                return None;
            }
            return Some((value, index + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u64 = 1 << 20;

    /// Golden bytes: what this release writes for fixed inputs. If one of
    /// these changes, data already in users' Redis servers no longer
    /// reads: bump FORMAT_VERSION and keep reading version 1 instead.
    #[test]
    fn golden_headers_are_fixed() {
        assert_eq!(escape(b""), b"\xC1AUR\x01\x00\x00");
        assert_eq!(escape(b"\xC1AURx"), b"\xC1AUR\x01\x00\x05\xC1AURx");
        assert_eq!(wrap(Codec::Zstd, 300, b"P"), b"\xC1AUR\x01\x01\xAC\x02P");
        assert_eq!(wrap(Codec::Gzip, 127, b""), b"\xC1AUR\x01\x02\x7F");
        assert_eq!(wrap(Codec::Zlib, 128, b""), b"\xC1AUR\x01\x03\x80\x01");
        assert_eq!(
            wrap(Codec::Zstd, u64::MAX, b""),
            b"\xC1AUR\x01\x01\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\x01"
        );
    }

    /// Golden payloads, one per codec, as this release wrote them (level
    /// 3): they must decode to the same value in every later one, whatever
    /// a newer compressor would write for it.
    #[test]
    fn golden_envelopes_decode() {
        let value = b"hello hello hello hello hello hello".to_vec();
        let zstd = b"\xc1\x41\x55\x52\x01\x01\x23\x28\xb5\x2f\xfd\x20\x23\x65\x00\x00\x30\x68\x65\x6c\x6c\x6f\x20\x01\x00\xb9\x4b\x11";
        let gzip = b"\xc1\x41\x55\x52\x01\x02\x23\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xcb\x48\xcd\xc9\xc9\x57\xc8\xc0\x47\x02\x00\x57\x37\x62\x85\x23\x00\x00\x00";
        let zlib = b"\xc1\x41\x55\x52\x01\x03\x23\x78\x5e\xcb\x48\xcd\xc9\xc9\x57\xc8\xc0\x47\x02\x00\xeb\x55\x0d\x19";
        for (name, stored) in [("zstd", &zstd[..]), ("gzip", &gzip[..]), ("zlib", &zlib[..])] {
            assert_eq!(decode(stored, LIMIT), Ok(Some(value.clone())), "{name}");
        }
        assert_eq!(decode(b"\xC1AUR\x01\x00\x02ab", LIMIT), Ok(Some(b"ab".to_vec())));
    }

    #[test]
    fn bytes_that_are_not_an_envelope_are_the_value() {
        for stored in [
            &b""[..],
            b"plain",
            b"\xC1AU",
            b"\xC1AUR",
            b"\xC1AUR\x02\x01\x00",     // another format version
            b"\xC1AUR\x01\x09\x00",     // an unknown codec
            b"\xC1AUR\x01\x01",         // no length
            b"\xC1AUR\x01\x01\x80",     // a truncated length
            b"\xC1AUR\x01\x01\x81\x00", // not the shortest form
        ] {
            assert_eq!(decode(stored, LIMIT), Ok(None), "{stored:?}");
        }
    }

    #[test]
    fn damaged_envelopes_and_bombs_are_errors() {
        // Declared far beyond the limit: refused before anything is allocated.
        let bomb = wrap(Codec::Zstd, 1 << 40, b"whatever");
        assert_eq!(
            decode(&bomb, LIMIT),
            Err(DecodeError::TooLarge {
                declared: 1 << 40,
                limit: LIMIT
            })
        );
        // A payload that inflates to more than it declares stops at the cap.
        let big = vec![0u8; 1 << 20];
        for codec in [Codec::Zstd, Codec::Gzip, Codec::Zlib] {
            let payload = crate::codec::compress(codec, 1, &big);
            let lying = wrap(codec, 10, &payload);
            assert!(decode(&lying, LIMIT).is_err(), "{codec:?}");
            let truncated = wrap(codec, big.len() as u64, &payload[..payload.len() / 2]);
            assert!(decode(&truncated, LIMIT).is_err(), "{codec:?} truncated");
        }
        assert_eq!(
            decode(b"\xC1AUR\x01\x00\x05ab", LIMIT),
            Err(DecodeError::LengthMismatch {
                codec: "none",
                declared: 5,
                actual: 2
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random bytes, random bytes behind a valid-looking header, and
        /// every prefix of real envelopes: decoding never panics, and what
        /// it returns is either "not an envelope" or exactly the value.
        #[test]
        fn decoding_anything_never_panics(noise in prop::collection::vec(any::<u8>(), 0..200), codec in 0u8..5, len in 0u64..5000) {
            let _ = decode(&noise, LIMIT);
            let mut forged = MAGIC.to_vec();
            forged.push(FORMAT_VERSION);
            forged.push(codec);
            write_varint(&mut forged, len);
            forged.extend_from_slice(&noise);
            let _ = decode(&forged, LIMIT);
        }

        #[test]
        fn every_prefix_of_an_envelope_is_safe(value in prop::collection::vec(any::<u8>(), 0..600), codec in 0u8..4) {
            let codec = Codec::from_id(codec).unwrap();
            let stored = match codec {
                Codec::Stored => escape(&value),
                _ => wrap(codec, value.len() as u64, &crate::codec::compress(codec, 3, &value)),
            };
            prop_assert_eq!(decode(&stored, LIMIT), Ok(Some(value.clone())));
            for end in 0..stored.len() {
                // A prefix is "not an envelope", an error, or (a Stored
                // envelope's own) exactly the value: never other bytes.
                if let Ok(Some(decoded)) = decode(&stored[..end], LIMIT) {
                    prop_assert_eq!(&decoded, &value);
                }
            }
        }

        #[test]
        fn varints_round_trip(value in any::<u64>()) {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            prop_assert_eq!(read_varint(&out), Some((value, out.len())));
        }
    }
}
