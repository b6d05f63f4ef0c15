//! The proxy's own answers for operators. Today: the `# Cache` section of
//! `INFO`, in Redis's INFO format so existing parsers read it.

use std::fmt::Write;

use bytes::Bytes;

use std::sync::atomic::Ordering;

use crate::cache::{L1, Namespace};
use crate::codec::Compression;
use crate::levels::{Level, LevelsSnapshot};
use crate::patterns::live::Patterns;
use crate::preload::Preload;
use crate::stats::Stats;

/// A Redis Cluster upstream's lines of `INFO cache`: its masters, the
/// slots they serve, how often the slot map changed and was read, and the
/// MOVED/ASK redirects followed.
pub fn cluster_lines(text: &mut String, cluster: &crate::upstream::cluster::Cluster) {
    let map = cluster.map();
    let served = (0..crate::upstream::cluster::SLOTS as u16)
        .filter(|slot| map.owner_index(*slot).is_some())
        .count();
    let (reads, redirects) = cluster.counts();
    let _ = write!(
        text,
        "cluster_enabled:1\r\ncluster_masters:{}\r\ncluster_slots_served:{served}\r\n\
         cluster_slot_map_changes:{}\r\ncluster_slot_map_reads:{reads}\r\ncluster_redirects:{redirects}\r\n",
        map.masters().len(),
        cluster.epoch(),
    );
}

/// The `INFO cache` section: `# Cache` then `field:value` lines, CRLF-ended.
pub fn info_cache(
    stats: &Stats,
    l1: Option<&L1>,
    compression: Option<&Compression>,
    patterns: Option<&Patterns>,
    preload: Option<&Preload>,
) -> String {
    let fields: [(&str, u64); 9] = [
        ("clients_connected", stats.clients() as u64),
        ("clients_total", stats.clients_total()),
        ("clients_rejected", stats.clients_rejected()),
        ("upstream_connections_pooled", stats.upstream_pooled() as u64),
        ("upstream_connections_dedicated", stats.upstream_dedicated() as u64),
        ("upstream_connections_tracking", stats.upstream_tracking() as u64),
        ("upstream_errors", stats.upstream_errors()),
        ("protocol_errors", stats.protocol_errors()),
        ("output_limit_disconnects", stats.output_limit_disconnects()),
    ];
    let mut text = String::from("# Cache\r\n");
    for (name, value) in fields {
        let _ = write!(text, "{name}:{value}\r\n");
    }
    // L1's invalidations flow (the tracking connection is up).
    let _ = write!(
        text,
        "tracking_connected:{}\r\n",
        u8::from(stats.upstream_tracking() > 0)
    );
    level_lines(&mut text, &stats.levels.snapshot());
    let _ = write!(text, "l1_enabled:{}\r\n", u8::from(l1.is_some()));
    if let Some(l1) = l1 {
        let counters = l1.store.stats();
        let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let (hits, misses) = (count(&counters.hits), count(&counters.misses));
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let _ = write!(text, "l1_ready:{}\r\n", u8::from(l1.ready()));
        let _ = write!(text, "l1_hit_ratio:{ratio:.4}\r\n");
        let l1_fields: [(&str, u64); 13] = [
            ("l1_hits", hits),
            ("l1_misses", misses),
            ("l1_entries", l1.store.len() as u64),
            ("l1_bytes", l1.store.bytes()),
            ("l1_max_bytes", l1.store.capacity()),
            ("l1_fills", count(&counters.fills)),
            ("l1_evictions", count(&counters.evictions)),
            ("l1_expirations", count(&counters.expirations)),
            ("l1_invalidations", count(&counters.invalidations)),
            ("l1_fills_voided", count(&counters.fills_voided)),
            ("l1_coalesced_waits", count(&counters.coalesced_waits)),
            ("l1_too_large", count(&counters.too_large)),
            ("l1_stale_served", count(&counters.stale_served)),
        ];
        for (name, value) in l1_fields {
            let _ = write!(text, "{name}:{value}\r\n");
        }
        for namespace in l1.store.namespaces().all() {
            namespace_line(&mut text, &namespace);
        }
    }
    // (Whether values are compressed now: PROXY CONFIG SET may have
    // turned it off; what was stored compressed is still decoded.)
    let compressing = compression.is_some_and(Compression::compresses);
    let _ = write!(text, "compression_enabled:{}\r\n", u8::from(compressing));
    if let Some(compression) = compression {
        compression_lines(&mut text, compression);
    }
    let _ = write!(text, "pattern_enabled:{}\r\n", u8::from(patterns.is_some()));
    if let Some(patterns) = patterns {
        pattern_lines(&mut text, patterns);
    }
    let _ = write!(text, "preload_enabled:{}\r\n", u8::from(preload.is_some()));
    if let (Some(preload), Some(l1)) = (preload, l1) {
        preload_lines(&mut text, preload, l1);
    }
    text
}

/// Reads per level (the ones L1 can answer: `crate::levels`) and writes,
/// with their latencies in microseconds.
fn level_lines(text: &mut String, levels: &LevelsSnapshot) {
    let _ = write!(
        text,
        "reads_total:{}\r\nl1_answered:{}\r\nl2_hits:{}\r\nl2_misses:{}\r\nwrites_total:{}\r\n",
        levels.reads(),
        levels.l1.count(),
        levels.l2.count(),
        levels.miss.count(),
        levels.writes.count(),
    );
    for level in Level::ALL {
        let latency = levels.read(level);
        let name = level.name();
        let _ = write!(
            text,
            "read_latency_{name}_p50_us:{:.1}\r\nread_latency_{name}_p99_us:{:.1}\r\nread_latency_{name}_avg_us:{:.1}\r\n",
            latency.quantile_us(0.5),
            latency.quantile_us(0.99),
            latency.mean_us(),
        );
    }
    let writes = &levels.writes;
    let _ = write!(
        text,
        "write_latency_p50_us:{:.1}\r\nwrite_latency_p99_us:{:.1}\r\nwrite_latency_avg_us:{:.1}\r\n",
        writes.quantile_us(0.5),
        writes.quantile_us(0.99),
        writes.mean_us(),
    );
}

/// Redis's INFO reply (a bulk string, or a RESP3 verbatim string) with
/// `section` appended as one more section; any other reply (an error) as
/// it is.
pub fn append_section(reply: &[u8], section: &str) -> Bytes {
    let parsed = (|| {
        let kind = *reply.first()?;
        if kind != b'$' && kind != b'=' {
            return None;
        }
        let end = memchr::memchr(b'\n', reply)?;
        let len: usize = std::str::from_utf8(reply.get(1..end.checked_sub(1)?)?)
            .ok()?
            .parse()
            .ok()?;
        let body = reply.get(end + 1..end + 1 + len)?;
        Some((kind, body))
    })();
    let Some((kind, body)) = parsed else {
        return Bytes::copy_from_slice(reply);
    };
    let mut text = body.to_vec();
    if !text.is_empty() && !text.ends_with(b"\r\n\r\n") {
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(section.as_bytes());
    let mut out = format!("{}{}\r\n", kind as char, text.len()).into_bytes();
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The preloader: runs, what they fetched, and whether it was used.
fn preload_lines(text: &mut String, preload: &Preload, l1: &L1) {
    let stats = preload.stats();
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let l1_stats = l1.store.stats();
    let (hits, waste) = (count(&l1_stats.preload_hits), count(&l1_stats.preload_waste));
    let last_run = preload.last().map_or(0, |report| report.started_ms);
    let fields: [(&str, u64); 11] = [
        ("preload_runs", preload.runs()),
        ("preload_last_run", last_run),
        ("preload_next_run", count(&stats.next_run_ms)),
        ("preload_fetched", count(&stats.fetched)),
        ("preload_absent", count(&stats.absent)),
        ("preload_errors", count(&stats.errors)),
        ("preload_deferred", count(&stats.deferred)),
        ("preload_stored", count(&l1_stats.preloads)),
        ("preload_hits", hits),
        ("preload_waste", waste),
        (
            "preload_max_in_flight",
            stats.max_in_flight.load(Ordering::Relaxed) as u64,
        ),
    ];
    for (name, value) in fields {
        let _ = write!(text, "{name}:{value}\r\n");
    }
    let _ = write!(
        text,
        "preload_hit_ratio:{:.4}\r\n",
        crate::preload::hit_rate(hits, waste)
    );
}

/// The pattern engine: keys tracked and their bound, bytes used, events
/// recorded and dropped (queue full), snapshots, peak hours.
fn pattern_lines(text: &mut String, patterns: &Patterns) {
    let stats = patterns.stats();
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let fields: [(&str, u64); 12] = [
        ("pattern_keys_tracked", count(&stats.tracked)),
        ("pattern_max_keys", patterns.max_keys() as u64),
        ("pattern_bytes", count(&stats.bytes)),
        ("pattern_events", count(&stats.events)),
        ("pattern_events_dropped", count(&stats.dropped)),
        ("pattern_events_queued", patterns.queued() as u64),
        ("pattern_events_sampled_out", count(&stats.sampled_out)),
        ("pattern_max_events_per_sec", patterns.budget()),
        ("pattern_restored_keys", count(&stats.restored_keys)),
        ("pattern_snapshots_written", count(&stats.snapshots_written)),
        ("pattern_snapshot_errors", count(&stats.snapshot_errors)),
        ("pattern_last_snapshot_ms", count(&stats.last_snapshot_ms)),
    ];
    for (name, value) in fields {
        let _ = write!(text, "{name}:{value}\r\n");
    }
    let _ = write!(text, "pattern_sampled_share:{:.4}\r\n", patterns.sampled_share());
    let (_, peaks) = patterns.peaks();
    let hours: Vec<String> = peaks.iter().map(u8::to_string).collect();
    let _ = write!(text, "pattern_peak_hours:{}\r\n", hours.join(","));
}

/// A namespace as part of an INFO field name, one to one: letters, digits,
/// `_`, `-` and `.` as they are, any other byte as `%XX`, so no key can
/// break a line, forge a field or share another namespace's name; the
/// proxy's own `(none)` and `(other)` (`reserved`) as they are.
pub fn field_name(name: &str, reserved: bool) -> String {
    if reserved {
        return name.to_string();
    }
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"_-.".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `l1_namespace_<name>:entries=..,bytes=..,...` (like Redis's `db0:keys=..`
/// lines): one namespace's counters and rules.
fn namespace_line(text: &mut String, namespace: &Namespace) {
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let stats = &namespace.stats;
    let (hits, misses) = (count(&stats.hits), count(&stats.misses));
    let ratio = if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    };
    let name = field_name(namespace.name(), namespace.is_reserved());
    let rules = namespace.rules();
    let _ = write!(
        text,
        "l1_namespace_{name}:entries={},bytes={},hits={hits},misses={misses},hit_ratio={ratio:.4},\
         fills={},evictions={},expirations={},invalidations={},fills_voided={},coalesced_waits={},\
         too_large={},stale_served={},ttl={},max_entries={},consistency={},serve_stale_max={}\r\n",
        count(&namespace.entries),
        count(&namespace.bytes),
        count(&stats.fills),
        count(&stats.evictions),
        count(&stats.expirations),
        count(&stats.invalidations),
        count(&stats.fills_voided),
        count(&stats.coalesced_waits),
        count(&stats.too_large),
        count(&stats.stale_served),
        rules.ttl.as_secs(),
        rules.max_entries,
        rules.consistency.as_str(),
        rules.serve_stale.as_secs(),
    );
}

/// Totals, then one line per (codec, namespace) like Redis's `db0:` lines:
/// values compressed and left raw (by reason), bytes before and after,
/// ratio (stored / original), compress and decompress time (total, p99).
fn compression_lines(text: &mut String, compression: &Compression) {
    let all = compression.stats.snapshot();
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let sum =
        |pick: &dyn Fn(&crate::codec::CodecStats) -> u64| all.iter().map(|(_, _, stats)| pick(stats)).sum::<u64>();
    let raw = sum(&|stats| {
        count(&stats.below_threshold) + count(&stats.poor_savings) + count(&stats.interpreted) + count(&stats.escaped)
    });
    let mut totals = crate::codec::Totals::default();
    // Per algorithm too (over its namespaces).
    let mut by_algorithm: std::collections::BTreeMap<&str, crate::codec::Totals> = Default::default();
    for (codec, _, stats) in &all {
        totals.add(stats);
        by_algorithm.entry(codec.name()).or_default().add(stats);
    }
    let _ = write!(text, "compression_values:{}\r\n", totals.values);
    let _ = write!(text, "compression_values_raw:{raw}\r\n");
    let _ = write!(text, "compression_bytes_in:{}\r\n", totals.bytes_in);
    let _ = write!(text, "compression_bytes_out:{}\r\n", totals.bytes_out);
    let _ = write!(text, "compression_ratio:{:.4}\r\n", totals.ratio());
    let _ = write!(text, "compression_decoded:{}\r\n", sum(&|stats| count(&stats.decoded)));
    let _ = write!(
        text,
        "compression_decode_errors:{}\r\n",
        sum(&|stats| count(&stats.decode_errors))
    );
    for (algorithm, totals) in by_algorithm {
        let _ = write!(text, "compression_ratio_{algorithm}:{:.4}\r\n", totals.ratio());
    }
    for (codec, namespace, stats) in all {
        let reserved = [crate::codec::NO_NAMESPACE, crate::codec::OTHER_NAMESPACE].contains(&namespace.as_ref());
        let namespace = field_name(&namespace, reserved);
        let (compress, decompress) = (stats.compress_ns.snapshot(), stats.decompress_ns.snapshot());
        let _ = write!(
            text,
            "compression_{}_{namespace}:compressed={},below_threshold={},poor_savings={},interpreted={},escaped={},bytes_in={},bytes_out={},ratio={:.4},compress_total_us={},compress_p99_us={},decoded={},decompress_total_us={},decompress_p99_us={},decode_errors={}\r\n",
            codec.name(),
            count(&stats.compressed),
            count(&stats.below_threshold),
            count(&stats.poor_savings),
            count(&stats.interpreted),
            count(&stats.escaped),
            count(&stats.bytes_in),
            count(&stats.bytes_out),
            stats.ratio(),
            compress.sum_us() as u64,
            compress.quantile_us(0.99) as u64,
            count(&stats.decoded),
            decompress.sum_us() as u64,
            decompress.quantile_us(0.99) as u64,
            count(&stats.decode_errors),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ConnectionKind;

    #[test]
    fn info_cache_reads_like_redis_info() {
        let stats = Stats::default();
        stats.connection_opened(ConnectionKind::Pooled);
        let text = info_cache(&stats, None, None, None, None);
        assert!(text.starts_with("# Cache\r\n"));
        assert!(text.contains("upstream_connections_pooled:1\r\n"));
        for line in text.split("\r\n").skip(1).filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').expect("field:value");
            assert!(
                !name.is_empty() && value.parse::<f64>().is_ok_and(f64::is_finite),
                "{line}"
            );
        }
    }
}
