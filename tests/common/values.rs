//! Reading the proxy's own replies in tests: `PROXY PATTERNS` entries (field
//! /value arrays in RESP2, maps in RESP3) and `INFO cache` fields.

use std::collections::BTreeMap;

use auracache::config::Config;
use redis::Value;

/// L1 filling on the first miss ([`super::l1_eager`]) and every key listed
/// from its first read.
pub fn eager(config: &mut Config) {
    super::l1_eager(config);
    config.patterns.min_access_count = 1;
}

/// L1 off (every read goes to Redis) and every key listed from its first read.
pub fn quiet(config: &mut Config) {
    config.memory_cache.enabled = false;
    config.patterns.min_access_count = 1;
}

pub fn fields(entry: Value) -> BTreeMap<String, Value> {
    let pairs: Vec<(Value, Value)> = match entry {
        Value::Array(items) => {
            assert_eq!(items.len() % 2, 0, "field/value pairs");
            let mut items = items.into_iter();
            std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        other => panic!("an entry is fields: {other:?}"),
    };
    pairs.into_iter().map(|(name, value)| (text(&name), value)).collect()
}

pub fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        other => panic!("text: {other:?}"),
    }
}

pub fn int(value: &Value) -> i64 {
    match value {
        Value::Int(value) => *value,
        other => panic!("an integer: {other:?}"),
    }
}

pub fn ints(value: &Value) -> Vec<i64> {
    match value {
        Value::Array(items) => items.iter().map(int).collect(),
        other => panic!("integers: {other:?}"),
    }
}

pub fn info_field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("INFO cache has {name}: {info}"))
        .trim()
        .to_string()
}
