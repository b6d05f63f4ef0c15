//! The HTTP admin surface (issue #9), on `admin.listen` (loopback by
//! default, off when empty): `/health` (200 while the upstream and, when
//! L1 needs it, the tracking connection are up; 503 with the reason
//! otherwise) and `/metrics` (the proxy's counters and gauges in the
//! Prometheus / OpenMetrics text format, labelled by namespace and codec),
//! and JSON under `/api/v1/monitoring/cache/v2/`: `memory/stats`,
//! `compression/stats` (with recommendations), `patterns/analysis`
//! (the top patterns, peak hours, the preloader and recommendations),
//! `performance` and `multi-level/flow`; and the dashboard at `/`
//! (`dashboard.html`, which draws those JSON answers in the browser).
//! It reads the same counters as `INFO cache` and never takes a lock the
//! request path holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::codec::Totals;
use crate::levels::{Level, LevelsSnapshot, Sample, Snapshot};
use crate::protocol::Protocol;
use crate::session::Shared;
use crate::shutdown::Shutdown;

/// How long `/health` waits for Redis's PONG.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The OpenMetrics content type Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints on `listener` until shutdown.
pub fn start(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/monitoring/cache/v2/memory/stats", get(memory_stats))
        .route("/api/v1/monitoring/cache/v2/compression/stats", get(compression_stats))
        .route("/api/v1/monitoring/cache/v2/patterns/analysis", get(patterns_analysis))
        .route("/api/v1/monitoring/cache/v2/performance", get(performance))
        .route("/api/v1/monitoring/cache/v2/multi-level/flow", get(flow))
        .route("/", get(dashboard))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), admin_only))
        .with_state(shared.clone());
    tokio::spawn(sample_history(shared, shutdown.clone()));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.triggered().await })
            .await;
        if let Err(error) = served {
            tracing::error!("the HTTP admin listener failed: {error}");
        }
    });
}

/// With `[auth]` on, every endpoint but `/health` (which load balancers
/// probe) needs HTTP Basic credentials of a user with the admin role (the
/// `default` user is `auth.password`'s): 401 without or with wrong ones,
/// 403 for a user without the role.
async fn admin_only(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !shared.auth.required() || request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()
        });
    let role = credentials.as_deref().and_then(|decoded| {
        let at = decoded.iter().position(|byte| *byte == b':')?;
        shared.auth.check(Some(&decoded[..at]), &decoded[at + 1..])
    });
    match role {
        Some(crate::config::Role::Admin) => next.run(request).await,
        Some(_) => (
            StatusCode::FORBIDDEN,
            "the HTTP admin needs a user with the admin role\n",
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"auracache admin\", charset=\"UTF-8\"",
            )],
            "credentials needed: a user with the admin role ([auth])\n",
        )
            .into_response(),
    }
}

/// A PING of the one Redis on a pooled connection.
async fn ping(shared: &Shared, db: u32) -> Result<(), String> {
    match shared.pools.get(db, Protocol::Resp2).connection(0).await {
        Ok(connection) => {
            let ping = connection
                .send(bytes::Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), 1)
                .await;
            match tokio::time::timeout(PING_TIMEOUT, ping).await {
                Ok(Ok(Ok(reply))) if reply.as_ref() == b"+PONG\r\n" => Ok(()),
                Ok(Ok(Ok(reply))) => Err(format!(
                    "upstream unavailable: PING answered {}",
                    String::from_utf8_lossy(&reply).trim()
                )),
                Ok(Ok(Err(error))) => Err(format!("upstream unavailable: {}", error.client_message())),
                Ok(Err(_)) => Err("upstream unavailable: connection lost".to_string()),
                Err(_) => Err(format!(
                    "upstream unavailable: no answer to PING within {PING_TIMEOUT:?}"
                )),
            }
        }
        Err(error) => Err(format!("upstream unavailable: {}", error.client_message())),
    }
}

/// 200 `{"status":"ok",...}` while the upstream answers (a pooled
/// connection is up) and L1's invalidations flow (when a strict namespace
/// needs them); 503 with the reason otherwise.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let db = shared.pools.target().db;
    // Redis must answer a PING, not merely hold a connection open.
    let upstream = match shared.pools.cluster() {
        Some(cluster) => cluster
            .ping_all(PING_TIMEOUT)
            .await
            .map_err(|error| format!("upstream unavailable: {error}")),
        None => ping(&shared, db).await,
    };
    let needs_tracking = shared.l1.as_ref().is_some_and(|l1| l1.store.namespaces().any_strict());
    let tracking = match &shared.l1 {
        Some(l1) if needs_tracking && !l1.store.is_accepting() => {
            Err("tracking connection down: L1 serves no strict namespace until it is back".to_string())
        }
        _ => Ok(()),
    };
    let problems: Vec<String> = [&upstream, &tracking]
        .into_iter()
        .filter_map(|result| result.as_ref().err().cloned())
        .collect();
    let body = serde_json::json!({
        "status": if problems.is_empty() { "ok" } else { "unavailable" },
        "upstream": if upstream.is_ok() { "up" } else { "down" },
        "tracking": match (needs_tracking, tracking.is_ok()) {
            (false, _) => "not used",
            (true, true) => "up",
            (true, false) => "down",
        },
        "reasons": problems,
    });
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Labels of a metric: (name, value) pairs.
type Labels = Vec<(String, String)>;

/// Builds a registry of what the proxy counts now, for one scrape.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn counter(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in values {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    fn gauge(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, value) in values {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.registry.register(name, help, family);
    }
}

/// A latency histogram as scraped (set once per scrape).
#[derive(Debug, Default)]
struct Latency(std::sync::Mutex<Snapshot>);

impl prometheus_client::metrics::TypedMetric for Latency {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Latency {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            snapshot.sum_us() / 1e6,
            snapshot.count(),
            &snapshot.prometheus_buckets(),
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

impl Scrape {
    fn histogram(&mut self, name: &str, help: &str, values: impl IntoIterator<Item = (Labels, Snapshot)>) {
        let family = Family::<Labels, Latency>::default();
        for (labels, snapshot) in values {
            *family
                .get_or_create(&labels)
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
        }
        self.registry
            .register_with_unit(name, help, prometheus_client::registry::Unit::Seconds, family);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn none() -> Labels {
    Vec::new()
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// `/metrics`: counters (`*_total`) and gauges, in OpenMetrics text.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut scrape = Scrape {
        registry: Registry::with_prefix("auracache"),
    };
    let stats = &shared.stats;
    let levels = stats.levels.snapshot();
    scrape.histogram(
        "read_latency",
        "Reads (GET, HGET, HGETALL, MGET and HMGET items) by the level that answered them: l1, l2 (Redis had a value), miss",
        Level::ALL
            .iter()
            .map(|level| (label("level", level.name()), levels.read(*level).clone())),
    );
    scrape.histogram(
        "write_latency",
        "Commands Redis flags as writes, until Redis answered",
        [(none(), levels.writes.clone())],
    );
    scrape.gauge("clients", "Clients connected", [(none(), stats.clients() as u64)]);
    scrape.counter(
        "clients_accepted",
        "Clients accepted",
        [(none(), stats.clients_total())],
    );
    scrape.counter(
        "clients_rejected",
        "Clients refused over limits.max_clients",
        [(none(), stats.clients_rejected())],
    );
    scrape.gauge(
        "upstream_connections",
        "Connections to Redis, by kind",
        [
            (label("kind", "pooled"), stats.upstream_pooled() as u64),
            (label("kind", "dedicated"), stats.upstream_dedicated() as u64),
            (label("kind", "tracking"), stats.upstream_tracking() as u64),
        ],
    );
    scrape.counter(
        "upstream_errors",
        "Requests failed for want of Redis",
        [(none(), stats.upstream_errors())],
    );
    scrape.counter(
        "protocol_errors",
        "Clients cut off for malformed requests",
        [(none(), stats.protocol_errors())],
    );
    scrape.counter(
        "output_limit_disconnects",
        "Clients cut off for not reading their replies (limits.max_output_bytes)",
        [(none(), stats.output_limit_disconnects())],
    );
    if let Some(l1) = &shared.l1 {
        let namespaces = l1.store.namespaces().all();
        let per = |pick: fn(&crate::cache::L1Stats) -> &AtomicU64| {
            namespaces
                .iter()
                .map(move |namespace| (label("namespace", namespace.name()), load(pick(&namespace.stats))))
                .collect::<Vec<_>>()
        };
        scrape.counter("l1_hits", "Reads answered from L1", per(|stats| &stats.hits));
        scrape.counter("l1_misses", "Reads L1 could not answer", per(|stats| &stats.misses));
        scrape.counter("l1_fills", "Replies stored in L1", per(|stats| &stats.fills));
        scrape.counter(
            "l1_evictions",
            "L1 entries evicted for room",
            per(|stats| &stats.evictions),
        );
        scrape.counter("l1_expirations", "L1 entries expired", per(|stats| &stats.expirations));
        scrape.counter(
            "l1_stale_served",
            "Reads answered with a stale L1 entry while Redis was down (serve_stale_max_secs)",
            per(|stats| &stats.stale_served),
        );
        scrape.counter(
            "l1_invalidations",
            "L1 invalidations (writes, Redis's messages)",
            per(|stats| &stats.invalidations),
        );
        scrape.gauge(
            "l1_entries",
            "Keys with replies in L1",
            namespaces
                .iter()
                .map(|namespace| (label("namespace", namespace.name()), load(&namespace.entries))),
        );
        scrape.gauge(
            "l1_bytes",
            "Bytes L1's entries cost",
            namespaces
                .iter()
                .map(|namespace| (label("namespace", namespace.name()), load(&namespace.bytes))),
        );
        scrape.gauge("l1_max_bytes", "L1's byte bound", [(none(), l1.store.capacity())]);
        let totals = l1.store.stats();
        scrape.counter(
            "preload_stored",
            "Entries the preloader stored or made to last",
            [(none(), load(&totals.preloads))],
        );
        scrape.counter(
            "preload_hits",
            "Preloaded entries hit at least once",
            [(none(), load(&totals.preload_hits))],
        );
        scrape.counter(
            "preload_waste",
            "Preloaded entries dropped unused",
            [(none(), load(&totals.preload_waste))],
        );
    }
    if let Some(compression) = &shared.compression {
        let all = compression.stats.snapshot();
        let per = |pick: fn(&crate::codec::CodecStats) -> &AtomicU64| {
            all.iter()
                .map(move |(codec, namespace, stats)| {
                    (
                        vec![
                            ("algorithm".to_string(), codec.name().to_string()),
                            ("namespace".to_string(), namespace.to_string()),
                        ],
                        load(pick(stats)),
                    )
                })
                .collect::<Vec<_>>()
        };
        scrape.counter(
            "compression_values",
            "Values stored compressed",
            per(|stats| &stats.compressed),
        );
        scrape.counter(
            "compression_bytes_in",
            "Bytes of the compressed values before compression",
            per(|stats| &stats.bytes_in),
        );
        scrape.counter(
            "compression_bytes_out",
            "Bytes of the compressed values as stored",
            per(|stats| &stats.bytes_out),
        );
        scrape.counter("compression_decoded", "Envelopes decoded", per(|stats| &stats.decoded));
    }
    if let Some(patterns) = &shared.patterns {
        let stats = patterns.stats();
        scrape.gauge(
            "pattern_keys_tracked",
            "Keys the pattern engine tracks",
            [(none(), load(&stats.tracked))],
        );
        scrape.counter(
            "pattern_events",
            "Reads handed to the pattern engine",
            [(none(), load(&stats.events))],
        );
        scrape.counter(
            "pattern_events_dropped",
            "Reads dropped (the engine's queue full)",
            [(none(), load(&stats.dropped))],
        );
    }
    if let Some(preload) = &shared.preload {
        let stats = preload.stats();
        scrape.counter("preload_runs", "Preloader runs", [(none(), preload.runs())]);
        scrape.counter(
            "preload_fetched",
            "Keys the preloader fetched into L1",
            [(none(), load(&stats.fetched))],
        );
        scrape.counter(
            "preload_absent",
            "Predicted keys absent in Redis",
            [(none(), load(&stats.absent))],
        );
    }
    let mut text = String::new();
    if encode(&mut text, &scrape.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded").into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
}

/// Values attempted in a namespace before its ratio is judged.
const JUDGED_AFTER: u64 = 10;
/// Stored bytes per original byte above which compression does not pay.
const POOR_RATIO: f64 = 0.9;

/// `memory/stats`: L1's totals and, per namespace, entries, bytes, bound,
/// TTL and what left it.
async fn memory_stats(State(shared): State<Arc<Shared>>) -> Response {
    let Some(l1) = &shared.l1 else {
        // The same shape with L1 off: zeros.
        return axum::Json(serde_json::json!({
            "l1": { "enabled": false, "entries": 0, "bytes": 0, "max_bytes": 0, "evictions": 0, "expirations": 0 },
            "namespaces": [],
        }))
        .into_response();
    };
    let totals = l1.store.stats();
    let namespaces: Vec<serde_json::Value> = l1
        .store
        .namespaces()
        .all()
        .iter()
        .map(|namespace| {
            let stats = &namespace.stats;
            serde_json::json!({
                "name": namespace.name(),
                "entries": load(&namespace.entries),
                "bytes": load(&namespace.bytes),
                "max_entries": namespace.rules().max_entries,
                "ttl_secs": namespace.rules().ttl.as_secs(),
                "consistency": match namespace.rules().consistency {
                    crate::config::Consistency::Strict => "strict",
                    crate::config::Consistency::TtlOnly => "ttl-only",
                },
                "hits": load(&stats.hits),
                "misses": load(&stats.misses),
                "evictions": load(&stats.evictions),
                "expirations": load(&stats.expirations),
                "invalidations": load(&stats.invalidations),
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "l1": {
            "enabled": true,
            "entries": l1.store.len(),
            "bytes": l1.store.bytes(),
            "max_bytes": l1.store.capacity(),
            "evictions": load(&totals.evictions),
            "expirations": load(&totals.expirations),
        },
        "namespaces": namespaces,
    }))
    .into_response()
}

/// `compression/stats`: totals, per codec, per namespace and codec, and
/// what to change (a namespace whose values barely shrink).
async fn compression_stats(State(shared): State<Arc<Shared>>) -> Response {
    let Some(compression) = &shared.compression else {
        return axum::Json(serde_json::json!({
            "enabled": false,
            "totals": totals_json(&Totals::default()),
            "by_algorithm": [], "by_namespace": [], "recommendations": [],
        }))
        .into_response();
    };
    let all = compression.stats.snapshot();
    let mut totals = Totals::default();
    let mut by_algorithm: std::collections::BTreeMap<&str, Totals> = Default::default();
    let mut by_namespace = Vec::new();
    let mut recommendations = Vec::new();
    for (codec, namespace, stats) in &all {
        let namespace_totals = stats.totals();
        let (values, bytes_in, bytes_out) = (
            namespace_totals.values,
            namespace_totals.bytes_in,
            namespace_totals.bytes_out,
        );
        let poor = load(&stats.poor_savings);
        let raw = load(&stats.below_threshold) + poor + load(&stats.interpreted) + load(&stats.escaped);
        totals.add(stats);
        by_algorithm.entry(codec.name()).or_default().add(stats);
        let namespace_ratio = namespace_totals.ratio();
        // Values tried (compressed, or kept raw because they did not shrink).
        let tried = values + poor;
        if tried >= JUDGED_AFTER && (poor * 2 > tried || namespace_ratio > POOR_RATIO) {
            let seen = if poor * 2 > tried {
                format!("{poor} of {tried} values did not shrink enough")
            } else {
                format!("ratio {namespace_ratio:.2}")
            };
            recommendations.push(format!("namespace {namespace}: {seen}, disable compression"));
        }
        by_namespace.push(serde_json::json!({
            "namespace": namespace.as_ref(),
            "algorithm": codec.name(),
            "values": values,
            "raw_values": raw,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "ratio": namespace_ratio,
        }));
    }
    let by_algorithm: Vec<serde_json::Value> = by_algorithm
        .iter()
        .map(|(algorithm, totals)| {
            serde_json::json!({
                "algorithm": algorithm, "values": totals.values, "bytes_in": totals.bytes_in,
                "bytes_out": totals.bytes_out, "ratio": totals.ratio(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "enabled": compression.compresses(),
        "totals": totals_json(&totals),
        "by_algorithm": by_algorithm,
        "by_namespace": by_namespace,
        "recommendations": recommendations,
    }))
    .into_response()
}

/// `patterns/analysis`: the top keys by priority, the peak hours, the
/// preloader's state, and recommendations.
async fn patterns_analysis(State(shared): State<Arc<Shared>>) -> Response {
    let Some(patterns) = shared.patterns.clone() else {
        return axum::Json(serde_json::json!({
            "enabled": false, "keys_tracked": 0, "peak_hours": [], "hourly_load": vec![0u64; 24], "top": [],
            "preload": { "enabled": false, "priority_threshold": shared.config.preload.priority_threshold },
            "recommendations": [],
        }))
        .into_response();
    };
    let ranking = patterns.clone();
    let top = tokio::task::spawn_blocking(move || {
        ranking.top(&crate::patterns::live::Query {
            count: 20,
            namespace: None,
            min_priority: 1,
        })
    })
    .await
    .unwrap_or_default();
    let (load_by_hour, peaks) = patterns.peaks();
    let threshold = shared
        .preload
        .as_ref()
        .map_or(shared.config.preload.priority_threshold, |preload| {
            preload.config().priority_threshold
        });
    let preloadable = top.iter().filter(|insight| insight.priority >= threshold).count();
    let mut recommendations = Vec::new();
    let preload = match (&shared.preload, &shared.l1) {
        (Some(preload), Some(l1)) => {
            let stats = l1.store.stats();
            let (hits, waste) = (load(&stats.preload_hits), load(&stats.preload_waste));
            let hit_rate = crate::preload::hit_rate(hits, waste);
            if hits + waste >= 20 && hit_rate < 0.5 {
                recommendations.push(format!(
                    "preloaded entries are hit {:.0} % of the time: raise preload.priority_threshold above {threshold}",
                    hit_rate * 100.0
                ));
            }
            serde_json::json!({
                "enabled": true,
                "priority_threshold": threshold,
                "runs": preload.runs(),
                "last_run_ms": preload.last().map(|report| report.started_ms),
                "next_run_ms": load(&preload.stats().next_run_ms),
                "stored": load(&stats.preloads),
                "hits": hits,
                "waste": waste,
                "hit_rate": hit_rate,
            })
        }
        _ => {
            if preloadable > 0 {
                recommendations.push(format!(
                    "{preloadable} of the top keys have priority >= {threshold}: turn the preloader on (CACHE_PRELOAD_ENABLED, with L1 on)"
                ));
            }
            serde_json::json!({ "enabled": false, "priority_threshold": threshold })
        }
    };
    let now_ms = patterns.now_ms();
    let top: Vec<serde_json::Value> = top
        .iter()
        .map(|insight| {
            serde_json::json!({
                "key": String::from_utf8_lossy(&insight.key),
                "db": insight.db,
                "namespace": String::from_utf8_lossy(patterns.namespace_of(&insight.key)),
                "class": insight.verdict.class.as_str(),
                "predictability": insight.verdict.predictability,
                "priority": insight.priority,
                "accesses": insight.accesses,
                "next_access_ms": insight.verdict.next_ms,
                "next_access_in_s": insight.verdict.next_ms.map(|next| (next as i64 - now_ms as i64).div_euclid(1_000)),
                "period_ms": insight.verdict.period_ms,
                "peak_hours": insight.verdict.hours,
                "hourly": insight.hourly,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "enabled": true,
        "keys_tracked": load(&patterns.stats().tracked),
        "peak_hours": peaks,
        "hourly_load": load_by_hour,
        "top": top,
        "preload": preload,
        "recommendations": recommendations,
    }))
    .into_response()
}

/// Samples the traffic every `admin.history_interval_secs` into
/// `shared.history`, until shutdown.
async fn sample_history(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let every = std::time::Duration::from_secs(shared.config.admin.history_interval_secs.max(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last = (shared.stats.levels.snapshot(), std::time::Instant::now());
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.triggered() => return,
        }
        let now = (shared.stats.levels.snapshot(), std::time::Instant::now());
        let delta = now.0.since(&last.0);
        shared.history.push(Sample::of(
            &delta,
            now.1.duration_since(last.1).as_secs_f64(),
            unix_ms(),
        ));
        last = now;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Compression totals: values, bytes before and after, ratio, saved bytes.
fn totals_json(totals: &Totals) -> serde_json::Value {
    serde_json::json!({
        "values": totals.values,
        "bytes_in": totals.bytes_in,
        "bytes_out": totals.bytes_out,
        "ratio": totals.ratio(),
        "saved_bytes": totals.saved_bytes(),
    })
}

/// One latency summary, in microseconds.
fn latency_json(snapshot: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "count": snapshot.count(),
        "p50": snapshot.quantile_us(0.5),
        "p90": snapshot.quantile_us(0.9),
        "p99": snapshot.quantile_us(0.99),
        "mean": snapshot.mean_us(),
    })
}

/// The levels' shares of `levels`' reads.
fn rates_json(levels: &LevelsSnapshot) -> serde_json::Value {
    serde_json::json!({
        "l1": levels.rate(Level::L1),
        "l2": levels.rate(Level::L2),
        "miss": levels.rate(Level::Miss),
    })
}

/// `performance`: since start (or `PROXY STATS RESET`), per level: reads,
/// share and latency; writes; throughput over the last sample and on
/// average; the compression totals; and the sampled history.
async fn performance(State(shared): State<Arc<Shared>>) -> Response {
    let levels = shared.stats.levels.snapshot();
    let uptime = shared.started.elapsed().as_secs_f64();
    let level_json = |level: Level| {
        let snapshot = levels.read(level);
        serde_json::json!({
            "reads": snapshot.count(),
            "rate": levels.rate(level),
            "latency_us": latency_json(snapshot),
        })
    };
    let last = shared.history.last();
    let totals = shared
        .compression
        .as_ref()
        .map(|compression| compression.stats.totals());
    let mut compression = totals_json(&totals.unwrap_or_default());
    compression["enabled"] = shared.compression.is_some().into();
    axum::Json(serde_json::json!({
        "uptime_secs": uptime,
        "reads": levels.reads(),
        "writes": levels.writes.count(),
        "hit_rates": rates_json(&levels),
        "levels": {
            "l1": level_json(Level::L1),
            "l2": level_json(Level::L2),
            "miss": level_json(Level::Miss),
        },
        "write_latency_us": latency_json(&levels.writes),
        "throughput": {
            "interval_secs": shared.config.admin.history_interval_secs,
            "reads_per_sec": last.as_ref().map_or(0.0, |sample| sample.reads_per_sec),
            "writes_per_sec": last.as_ref().map_or(0.0, |sample| sample.writes_per_sec),
            "average_reads_per_sec": if uptime > 0.0 { levels.reads() as f64 / uptime } else { 0.0 },
            "average_writes_per_sec": if uptime > 0.0 { levels.writes.count() as f64 / uptime } else { 0.0 },
        },
        "compression": compression,
        "history": shared.history.samples(),
    }))
    .into_response()
}

/// `multi-level/flow`: reads from clients into L1, on to L2 (Redis), and
/// what Redis did not have, as counts since start and rates per second
/// over the last sample.
async fn flow(State(shared): State<Arc<Shared>>) -> Response {
    let levels = shared.stats.levels.snapshot();
    let (l1, l2, miss) = (levels.l1.count(), levels.l2.count(), levels.miss.count());
    let reads = levels.reads();
    let share = |part: u64, of: u64| if of == 0 { 0.0 } else { part as f64 / of as f64 };
    let last = shared.history.last();
    let per_sec = |pick: fn(&Sample) -> f64| last.as_ref().map_or(0.0, |sample| sample.reads_per_sec * pick(sample));
    axum::Json(serde_json::json!({
        "reads": reads,
        "l1": { "requests": reads, "hits": l1, "misses": l2 + miss, "hit_rate": share(l1, reads) },
        "l2": { "requests": l2 + miss, "hits": l2, "misses": miss, "hit_rate": share(l2, l2 + miss) },
        "miss": { "count": miss, "rate": share(miss, reads) },
        "flow": [
            { "from": "client", "to": "l1", "count": reads },
            { "from": "l1", "to": "client", "count": l1 },
            { "from": "l1", "to": "l2", "count": l2 + miss },
            { "from": "l2", "to": "client", "count": l2 },
            { "from": "l2", "to": "miss", "count": miss },
        ],
        "rates_per_sec": {
            "interval_secs": shared.config.admin.history_interval_secs,
            "reads": last.as_ref().map_or(0.0, |sample| sample.reads_per_sec),
            "l1_hits": per_sec(|sample| sample.l1_hit_rate),
            "l2_hits": per_sec(|sample| sample.l2_hit_rate),
            "misses": per_sec(|sample| sample.miss_rate),
        },
    }))
    .into_response()
}

/// The dashboard page (`/`): one file, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}
