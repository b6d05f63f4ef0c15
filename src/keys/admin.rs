//! `PROXY VERSION STATUS` and `PROXY VERSION CLEANUP` (issue #6): what each
//! versioned namespace holds in Redis, and the removal of old versions in
//! small batches (SCAN + UNLINK), so Redis is never blocked.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::versions::{Cleanup, NamespaceVersions, Versioning, bulk, scan_page};
use crate::codec::strings::Upstream;

/// Up to this many keys in the database, STATUS counts them exactly (one
/// SCAN over the namespace); beyond, it samples.
const EXACT_COUNT_LIMIT: u64 = 10_000;
/// RANDOMKEY draws when sampling.
const SAMPLES: u64 = 400;
/// SCAN's COUNT hint and the most keys per UNLINK during a cleanup.
const SCAN_COUNT: &str = "500";
const UNLINK_BATCH: usize = 100;

/// The STATUS text: INFO-style sections, one per namespace.
pub async fn status(versions: &Versioning, only: Option<&str>, upstream: &mut impl Upstream) -> Result<String, String> {
    let namespaces: Vec<Arc<NamespaceVersions>> = match only {
        Some(name) => vec![versions.namespace(name).ok_or_else(|| not_versioned(name))?],
        None => versions.namespaces(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "# Versioning");
    let _ = writeln!(out, "key_pattern:{}", versions.pattern().source());
    let table = if versions.table_learned() {
        "upstream"
    } else {
        "built-in"
    };
    let _ = writeln!(out, "key_table:{table}");
    let dbsize = integer(&upstream.call(words(&["DBSIZE"])).await?)?.max(0) as u64;
    let sampled = if dbsize > EXACT_COUNT_LIMIT {
        Some(sample(versions, upstream).await?)
    } else {
        None
    };
    for namespace in namespaces {
        let _ = writeln!(out, "\r\n# Namespace {}", namespace.name);
        let _ = writeln!(out, "version:{}", namespace.current);
        let fallbacks: Vec<String> = namespace.fallbacks.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "fallback_versions:{}", fallbacks.join(","));
        let _ = writeln!(out, "fallback_unversioned:{}", yes_no(namespace.fallback_unversioned));
        let _ = writeln!(out, "migrate_on_read:{}", yes_no(namespace.migrate_on_read));
        let _ = writeln!(out, "delete_old_on_migrate:{}", yes_no(namespace.delete_old_on_migrate));
        let _ = writeln!(out, "keys_migrated:{}", namespace.migrated.load(Ordering::Relaxed));
        let _ = writeln!(out, "fallback_hits:{}", namespace.fallback_hits.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "migration_errors:{}",
            namespace.migration_errors.load(Ordering::Relaxed)
        );
        let counts = match &sampled {
            None => {
                let _ = writeln!(out, "keys_counted:exact");
                count_exactly(versions, &namespace, upstream).await?
            }
            Some((drawn, tallies)) => {
                let _ = writeln!(out, "keys_counted:estimated from {drawn} samples of {dbsize} keys");
                let mut estimated: BTreeMap<Option<u32>, u64> = BTreeMap::new();
                for ((name, version), hits) in tallies {
                    if name == &namespace.name && *drawn > 0 {
                        estimated.insert(*version, hits * dbsize / drawn);
                    }
                }
                estimated
            }
        };
        for version in std::iter::once(namespace.current).chain(namespace.fallbacks.iter().copied()) {
            let _ = writeln!(
                out,
                "keys_v{version}:{}",
                counts.get(&Some(version)).copied().unwrap_or(0)
            );
        }
        if namespace.fallback_unversioned {
            let _ = writeln!(out, "keys_unversioned:{}", counts.get(&None).copied().unwrap_or(0));
        }
        for (version, count) in &counts {
            if let Some(version) = version
                && *version != namespace.current
                && !namespace.fallbacks.contains(version)
            {
                let _ = writeln!(out, "keys_v{version}:{count} (not served)");
            }
        }
        let cleanup = versions.cleanup_of(&namespace.name);
        match cleanup {
            None => {
                let _ = writeln!(out, "cleanup:none");
            }
            Some(cleanup) => {
                let state = if cleanup.done.load(Ordering::Acquire) {
                    "done"
                } else {
                    "running"
                };
                let _ = writeln!(out, "cleanup:{state}");
                let _ = writeln!(out, "cleanup_versions_below:{}", cleanup.below.load(Ordering::Relaxed));
                let _ = writeln!(out, "cleanup_scanned:{}", cleanup.scanned.load(Ordering::Relaxed));
                let _ = writeln!(out, "cleanup_removed:{}", cleanup.removed.load(Ordering::Relaxed));
                if let Some(error) = cleanup.error() {
                    let _ = writeln!(out, "cleanup_error:{error}");
                }
            }
        }
    }
    Ok(out.replace('\n', "\r\n").replace("\r\r\n", "\r\n"))
}

/// Removes the namespace's stored keys of versions older than the newest
/// `keep` of its configured ones (never newer than current), by SCAN and
/// UNLINK in small batches; progress is visible to STATUS meanwhile.
pub async fn cleanup(
    versions: &Versioning,
    name: &str,
    keep: usize,
    upstream: &mut impl Upstream,
) -> Result<String, String> {
    let namespace = versions.namespace(name).ok_or_else(|| not_versioned(name))?;
    let mut known: Vec<u32> = std::iter::once(namespace.current)
        .chain(namespace.fallbacks.iter().copied())
        .collect();
    known.sort_unstable_by(|a, b| b.cmp(a));
    known.dedup();
    // Never the current version, even when a fallback is newer (a rollback).
    let below = known[keep.clamp(1, known.len()) - 1].min(namespace.current);
    // The unversioned names are the oldest of all: kept only within the
    // newest `keep`.
    let unversioned = namespace.fallback_unversioned && keep <= known.len();
    let progress = Arc::new(Cleanup::default());
    progress.below.store(u64::from(below), Ordering::Relaxed);
    versions.start_cleanup(name, progress.clone())?;
    let mut result = remove_below(versions, &namespace, below, &progress, upstream).await;
    if result.is_ok() && unversioned {
        result = remove_unversioned(versions, &namespace, &progress, upstream).await;
    }
    if let Err(error) = &result {
        progress.set_error(error.clone());
    }
    progress.done.store(true, Ordering::Release);
    result?;
    Ok(format!(
        "removed {} keys of namespace {name} in versions below {below} (scanned {})",
        progress.removed.load(Ordering::Relaxed),
        progress.scanned.load(Ordering::Relaxed)
    ))
}

async fn remove_below(
    versions: &Versioning,
    namespace: &NamespaceVersions,
    below: u32,
    progress: &Cleanup,
    upstream: &mut impl Upstream,
) -> Result<(), String> {
    let scan = NamespaceScan::new(versions, namespace);
    let old = |stored: &Bytes| {
        versions
            .version_in(namespace, stored)
            .is_some_and(|version| version < below)
    };
    remove_matching(scan, old, progress, upstream).await
}

/// Removes the namespace's unversioned names.
async fn remove_unversioned(
    versions: &Versioning,
    namespace: &NamespaceVersions,
    progress: &Cleanup,
    upstream: &mut impl Upstream,
) -> Result<(), String> {
    let scan = NamespaceScan::unversioned(versions, namespace);
    let old = |stored: &Bytes| versions.is_unversioned_in(namespace, stored);
    remove_matching(scan, old, progress, upstream).await
}

/// UNLINKs, in batches, the names a scan finds that `old` picks.
async fn remove_matching(
    mut scan: NamespaceScan,
    old: impl Fn(&Bytes) -> bool,
    progress: &Cleanup,
    upstream: &mut impl Upstream,
) -> Result<(), String> {
    while let Some(keys) = scan.next_page(upstream).await? {
        progress.scanned.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let old: Vec<Bytes> = keys.into_iter().filter(|stored| old(stored)).collect();
        for batch in old.chunks(UNLINK_BATCH) {
            let mut args = vec![Bytes::from_static(b"UNLINK")];
            args.extend_from_slice(batch);
            let removed = integer(&upstream.call(args).await?)?;
            progress.removed.fetch_add(removed.max(0) as u64, Ordering::Relaxed);
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Exact counts per version of one namespace (one SCAN over its names; a
/// second over its unversioned names, counted as None, when they are a
/// fallback).
async fn count_exactly(
    versions: &Versioning,
    namespace: &NamespaceVersions,
    upstream: &mut impl Upstream,
) -> Result<BTreeMap<Option<u32>, u64>, String> {
    let mut counts = BTreeMap::new();
    let mut scan = NamespaceScan::new(versions, namespace);
    while let Some(keys) = scan.next_page(upstream).await? {
        for stored in keys {
            if let Some(version) = versions.version_in(namespace, &stored) {
                *counts.entry(Some(version)).or_insert(0) += 1;
            }
        }
    }
    if namespace.fallback_unversioned {
        let mut scan = NamespaceScan::unversioned(versions, namespace);
        while let Some(keys) = scan.next_page(upstream).await? {
            let raw = keys
                .iter()
                .filter(|stored| versions.is_unversioned_in(namespace, stored))
                .count();
            *counts.entry(None).or_insert(0) += raw as u64;
        }
    }
    Ok(counts)
}

/// The stored names of one namespace's keys (any version), a SCAN page at
/// a time.
struct NamespaceScan {
    pattern: Bytes,
    /// None once SCAN answered cursor 0.
    cursor: Option<Bytes>,
}

impl NamespaceScan {
    fn new(versions: &Versioning, namespace: &NamespaceVersions) -> NamespaceScan {
        let mut prefix = namespace.name.as_bytes().to_vec();
        prefix.push(versions.separator());
        NamespaceScan {
            pattern: Bytes::from(versions.pattern().glob_namespace(&prefix)),
            cursor: Some(Bytes::from_static(b"0")),
        }
    }

    /// The namespace's own unversioned names (`user:*`).
    fn unversioned(versions: &Versioning, namespace: &NamespaceVersions) -> NamespaceScan {
        let mut prefix = namespace.name.as_bytes().to_vec();
        prefix.push(versions.separator());
        let mut pattern = crate::keys::glob::escape(&prefix);
        pattern.push(b'*');
        NamespaceScan {
            pattern: Bytes::from(pattern),
            cursor: Some(Bytes::from_static(b"0")),
        }
    }

    async fn next_page(&mut self, upstream: &mut impl Upstream) -> Result<Option<Vec<Bytes>>, String> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let reply = upstream
            .call(vec![
                Bytes::from_static(b"SCAN"),
                cursor,
                Bytes::from_static(b"MATCH"),
                self.pattern.clone(),
                Bytes::from_static(b"COUNT"),
                Bytes::from_static(SCAN_COUNT.as_bytes()),
            ])
            .await?;
        let (next, keys) = scan_page(&reply)
            .ok_or_else(|| format!("unexpected SCAN reply: {}", String::from_utf8_lossy(&reply).trim_end()))?;
        self.cursor = (next.as_ref() != b"0").then_some(next);
        Ok(Some(keys))
    }
}

/// RANDOMKEY draws: how many, and the hits per (namespace, version; None
/// for an unversioned name in a versioned namespace).
async fn sample(
    versions: &Versioning,
    upstream: &mut impl Upstream,
) -> Result<(u64, BTreeMap<(String, Option<u32>), u64>), String> {
    let mut tallies = BTreeMap::new();
    let mut drawn = 0;
    for _ in 0..SAMPLES {
        let reply = upstream.call(words(&["RANDOMKEY"])).await?;
        let Some(stored) = bulk(&reply) else {
            break;
        };
        drawn += 1;
        if let Some((name, version)) = versions.namespace_and_version(stored) {
            *tallies.entry((name, Some(version))).or_insert(0) += 1;
        } else if let Some(name) = versions.unversioned_namespace(stored) {
            *tallies.entry((name, None)).or_insert(0) += 1;
        }
    }
    Ok((drawn, tallies))
}

fn integer(reply: &[u8]) -> Result<i64, String> {
    let text = String::from_utf8_lossy(reply);
    text.strip_prefix(':')
        .and_then(|rest| rest.trim_end().parse().ok())
        .ok_or_else(|| text.trim_end().trim_start_matches('-').to_string())
}

fn words(words: &[&str]) -> Vec<Bytes> {
    words
        .iter()
        .map(|word| Bytes::copy_from_slice(word.as_bytes()))
        .collect()
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn not_versioned(name: &str) -> String {
    format!("ERR namespace '{name}' is not versioned (no version in [namespaces.{name}])")
}
