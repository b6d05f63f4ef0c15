//! `PROXY PATTERNS` and `PROXY PATTERNS PEAKS`: what the engine says, as
//! replies a client reads like Redis's own (flat field/value arrays in
//! RESP2, maps in RESP3, as `XINFO` and `CLIENT TRACKINGINFO` do).

use bytes::{Bytes, BytesMut};

use super::engine::Insight;
use super::live::Query;
use crate::protocol::Protocol;

/// Keys listed when COUNT is not given, and at most.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 10_000;

pub const SYNTAX: &str = "ERR syntax: PROXY PATTERNS [COUNT n] [NAMESPACE ns] [MINPRIORITY p] | PEAKS | SAVE";

/// The options after `PROXY PATTERNS`, in any order.
pub fn parse_query(args: &[Bytes]) -> Result<Query, String> {
    let mut query = Query {
        count: DEFAULT_COUNT,
        namespace: None,
        min_priority: 1,
    };
    let mut rest = args.iter();
    while let Some(option) = rest.next() {
        let value = rest.next().ok_or_else(|| SYNTAX.to_string())?;
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<usize>().ok())
        };
        match option.to_ascii_uppercase().as_slice() {
            b"COUNT" => {
                query.count = number()
                    .filter(|count| (1..=MAX_COUNT).contains(count))
                    .ok_or_else(|| format!("ERR COUNT must be from 1 to {MAX_COUNT}"))?;
            }
            b"NAMESPACE" => query.namespace = Some(value.to_vec()),
            b"MINPRIORITY" => {
                query.min_priority = number()
                    .filter(|priority| (1..=10).contains(priority))
                    .ok_or_else(|| "ERR MINPRIORITY must be from 1 to 10".to_string())?
                    as u8;
            }
            _ => return Err(SYNTAX.to_string()),
        }
    }
    Ok(query)
}

/// A reply value.
pub(crate) enum Value {
    Bulk(Bytes),
    Integer(i64),
    Double(f64),
    Nil,
    Array(Vec<Value>),
    Map(Vec<(&'static str, Value)>),
    /// A map whose names are values too (built at run time).
    Pairs(Vec<(Value, Value)>),
}

impl Value {
    /// The reply's bytes in `protocol`.
    pub(crate) fn to_bytes(&self, protocol: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(protocol, &mut out);
        out.freeze()
    }

    pub(crate) fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        match self {
            Value::Bulk(bytes) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Value::Integer(value) => out.extend_from_slice(format!(":{value}\r\n").as_bytes()),
            Value::Double(value) => match protocol {
                Protocol::Resp2 => Value::Bulk(Bytes::from(format!("{value:.3}"))).encode(protocol, out),
                Protocol::Resp3 => out.extend_from_slice(format!(",{value:.3}\r\n").as_bytes()),
            },
            Value::Nil => out.extend_from_slice(match protocol {
                Protocol::Resp2 => b"$-1\r\n",
                Protocol::Resp3 => b"_\r\n",
            }),
            Value::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Value::Pairs(pairs) => {
                match protocol {
                    Protocol::Resp2 => out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes()),
                    Protocol::Resp3 => out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes()),
                }
                for (name, value) in pairs {
                    name.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
            Value::Map(fields) => {
                match protocol {
                    Protocol::Resp2 => out.extend_from_slice(format!("*{}\r\n", fields.len() * 2).as_bytes()),
                    Protocol::Resp3 => out.extend_from_slice(format!("%{}\r\n", fields.len()).as_bytes()),
                }
                for (name, value) in fields {
                    Value::Bulk(Bytes::from_static(name.as_bytes())).encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

fn integers(values: impl IntoIterator<Item = u64>) -> Value {
    Value::Array(values.into_iter().map(|value| Value::Integer(value as i64)).collect())
}

fn optional(value: Option<u64>) -> Value {
    value.map_or(Value::Nil, |value| Value::Integer(value as i64))
}

/// The top keys: one entry per key, highest priority first.
pub fn top_reply(top: &[Insight], namespace_of: impl Fn(&[u8]) -> Bytes, now_ms: u64, protocol: Protocol) -> Bytes {
    let entries = top
        .iter()
        .map(|insight| {
            let verdict = &insight.verdict;
            Value::Map(vec![
                ("key", Value::Bulk(insight.key.clone())),
                ("db", Value::Integer(i64::from(insight.db))),
                ("namespace", Value::Bulk(namespace_of(&insight.key))),
                (
                    "class",
                    Value::Bulk(Bytes::from_static(verdict.class.as_str().as_bytes())),
                ),
                ("predictability", Value::Double(verdict.predictability)),
                ("priority", Value::Integer(i64::from(insight.priority))),
                ("accesses", Value::Integer(insight.accesses as i64)),
                ("l1_hits", Value::Integer(insight.l1_hits as i64)),
                ("l2_hits", Value::Integer(insight.l2_hits as i64)),
                ("misses", Value::Integer(insight.misses as i64)),
                ("last_access_ms", Value::Integer(insight.last_ms as i64)),
                ("next_access_ms", optional(verdict.next_ms)),
                (
                    "next_access_in_s",
                    verdict.next_ms.map_or(Value::Nil, |next| {
                        Value::Integer((next as i64 - now_ms as i64).div_euclid(1_000))
                    }),
                ),
                ("period_ms", optional(verdict.period_ms)),
                (
                    "peak_hours",
                    integers(verdict.hours.iter().map(|hour| u64::from(*hour))),
                ),
                ("hourly", integers(insight.hourly)),
                ("mean_latency_us", Value::Integer(insight.mean_latency_us as i64)),
                ("mean_size", Value::Integer(insight.mean_size as i64)),
            ])
        })
        .collect();
    Value::Array(entries).to_bytes(protocol)
}

/// The global load per hour of the day and the peak hours (1.5 times the
/// mean hourly load or more).
pub fn peaks_reply(load: &[u64; 24], peaks: &[u8], protocol: Protocol) -> Bytes {
    let total: u64 = load.iter().sum();
    let reply = Value::Map(vec![
        ("peak_hours", integers(peaks.iter().map(|hour| u64::from(*hour)))),
        ("hourly_load", integers(*load)),
        ("events", Value::Integer(total as i64)),
        ("threshold", Value::Double(total as f64 / 24.0 * 1.5)),
    ]);
    reply.to_bytes(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect()
    }

    #[test]
    fn options_parse_in_any_order_and_bad_ones_are_refused() {
        let query = parse_query(&args(&["minpriority", "5", "NAMESPACE", "user", "count", "3"])).unwrap();
        assert_eq!(
            (query.count, query.namespace.as_deref(), query.min_priority),
            (3, Some(&b"user"[..]), 5)
        );
        let query = parse_query(&[]).unwrap();
        assert_eq!((query.count, query.min_priority), (DEFAULT_COUNT, 1));
        assert_eq!(parse_query(&args(&["COUNT"])).err().as_deref(), Some(SYNTAX));
        assert_eq!(parse_query(&args(&["LIMIT", "3"])).err().as_deref(), Some(SYNTAX));
        assert!(
            parse_query(&args(&["COUNT", "0"]))
                .unwrap_err()
                .contains("COUNT must be")
        );
        assert!(
            parse_query(&args(&["COUNT", "x"]))
                .unwrap_err()
                .contains("COUNT must be")
        );
        assert!(
            parse_query(&args(&["MINPRIORITY", "11"]))
                .unwrap_err()
                .contains("MINPRIORITY")
        );
    }

    #[test]
    fn peaks_are_a_flat_array_in_resp2_and_a_map_in_resp3() {
        let mut load = [0u64; 24];
        load[9] = 48;
        let resp2 = peaks_reply(&load, &[9], Protocol::Resp2);
        assert!(resp2.starts_with(b"*8\r\n$10\r\npeak_hours\r\n*1\r\n:9\r\n$11\r\nhourly_load\r\n*24\r\n"));
        assert!(resp2.ends_with(b"$6\r\nevents\r\n:48\r\n$9\r\nthreshold\r\n$5\r\n3.000\r\n"));
        let resp3 = peaks_reply(&load, &[9], Protocol::Resp3);
        assert!(resp3.starts_with(b"%4\r\n"));
        assert!(resp3.ends_with(b"$9\r\nthreshold\r\n,3.000\r\n"));
    }
}
