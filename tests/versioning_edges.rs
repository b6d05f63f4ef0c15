//! Key versioning's edge cases (issue #6), found by an adversarial review:
//! each test below marked "Was:" reproduced a bug (its comment says what
//! plain Redis answers and what the proxy answered) and now guards the fix;
//! "Check:" tests probe an area that held up.

mod common;

use std::time::Duration;

use auracache::config::Config;
use common::{Proxy, RawClient, RedisServer};

/// `app` stored as v2 with fallback v1; L1 off unless a test turns it on.
fn versioned(config: &mut Config) {
    config.memory_cache.enabled = false;
    let app = config.namespaces.entry("app".into()).or_default();
    app.version = Some(2);
    app.fallback_versions = vec![1];
}

async fn start(tweak: impl FnOnce(&mut Config)) -> (RedisServer, Proxy, RawClient) {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        versioned(config);
        tweak(config);
    })
    .await;
    let versions = proxy.handle().versions().expect("versioning on").clone();
    common::poll_until("the key table from Redis", || versions.table_learned());
    let direct = RawClient::connect(server.addr()).await;
    (server, proxy, direct)
}

/// The next reply within `wait`, or None.
async fn reply_within(client: &mut RawClient, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, client.next_reply()).await {
        Ok(Some(reply)) => Some(String::from_utf8_lossy(&reply).into_owned()),
        _ => None,
    }
}

/// Keyevent messages (event, key) until the one about `plain:marker`.
async fn events_until_marker(events: &mut RawClient) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let reply = reply_within(events, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no marker event; had {seen:?}"));
        let parts: Vec<&str> = reply.split("\r\n").collect();
        // *4 pmessage pattern channel key
        let channel = parts[6];
        let key = parts[8];
        let event = channel.rsplit(':').next().unwrap().to_string();
        if key == "plain:marker" {
            return seen;
        }
        seen.push((event, key.to_string()));
    }
}

// Was: the hidden migration script's own writes reach keyspace/keyevent
// subscribers, mapped to the client's key. Plain Redis: a GET emits no
// event, a SET emits exactly `set`. Proxy: GET of an old-version key emits
// `copy_to app:r`; SET of an old-version key emits `rename_from app:w`,
// `rename_to app:w`, then `set app:w`; SET of a key read before (both
// versions exist) emits `del app:r` (the UNLINK of v1) before `set app:r`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_migrations_leak_keyspace_events() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KEA").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:r old").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:w old").await, "+OK\r\n");
    let mut events = proxy.raw().await;
    let confirmed = events.cmd("PSUBSCRIBE __keyevent@0__:*").await;
    assert!(confirmed.contains("psubscribe"), "{confirmed}");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET app:r").await, "$3\r\nold\r\n");
    assert_eq!(client.cmd("SET app:w new").await, "+OK\r\n");
    assert_eq!(client.cmd("SET app:r new").await, "+OK\r\n");
    assert_eq!(client.cmd("SET plain:marker 1").await, "+OK\r\n");
    let seen = events_until_marker(&mut events).await;
    // Plain Redis sends only the two `set` events. The read's migration
    // still shows as `copy_to` on the key (a documented limitation: it is
    // told from a client's COPY by nothing); the write's RENAME and the
    // UNLINK of the old name are left out.
    let expected: Vec<(String, String)> = vec![
        ("copy_to".into(), "app:r".into()),
        ("set".into(), "app:w".into()),
        ("set".into(), "app:r".into()),
    ];
    assert_eq!(seen, expected, "for GET app:r; SET app:w; SET app:r");
}

// Was (migrate_on_read = false): a command that writes a key and reads the
// same key (`SUNIONSTORE s s t`, `ZUNIONSTORE z 2 z w`, `SDIFFSTORE s s t`)
// loses the key's own contents when it is only in a fallback version: the
// read is pointed at `v1:app:s`, then the write's migration RENAMEs
// `v1:app:s` to `v2:app:s` before the command runs, so the command reads a
// key that no longer exists. Plain Redis: `:3`, SMEMBERS {a,b,c}. Proxy:
// `:1`, SMEMBERS {c}: acknowledged data lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_write_and_read_of_one_key_without_migrate_on_read_loses_data() {
    let (_server, proxy, mut direct) = start(|config| {
        config.namespaces.get_mut("app").unwrap().migrate_on_read = Some(false);
    })
    .await;
    assert_eq!(direct.cmd("SADD v1:app:s a b").await, ":2\r\n");
    assert_eq!(direct.cmd("SADD v1:app:t c").await, ":1\r\n");
    let mut client = proxy.raw().await;
    let union = client.cmd("SUNIONSTORE app:s app:s app:t").await;
    let members = client.cmd("SCARD app:s").await;
    assert_eq!((union, members), (":3\r\n".to_string(), ":3\r\n".to_string()));
}

// Was (migrate_on_read = false): the FIND round trip and the read are not
// atomic. A reader is pointed at `v1:app:kN`; a concurrent writer's
// migration RENAMEs it to v2 before the read arrives, and the read answers
// nil for a key that existed at every instant. Plain Redis never answers
// nil here (every key always has a value).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn was_reads_without_migrate_on_read_see_nil_during_a_concurrent_write() {
    let (_server, proxy, mut direct) = start(|config| {
        config.namespaces.get_mut("app").unwrap().migrate_on_read = Some(false);
    })
    .await;
    const KEYS: usize = 300;
    for i in 0..KEYS {
        assert_eq!(direct.cmd(&format!("SET v1:app:k{i} old")).await, "+OK\r\n");
    }
    let mut writer = proxy.raw().await;
    let (mut r1, mut r2, mut r3) = (proxy.raw().await, proxy.raw().await, proxy.raw().await);
    let mut nils = Vec::new();
    for i in 0..KEYS {
        let get = format!("GET app:k{i}");
        let set = format!("SET app:k{i} new");
        let (written, a, b, c) = tokio::join!(writer.cmd(&set), r1.cmd(&get), r2.cmd(&get), r3.cmd(&get));
        assert_eq!(written, "+OK\r\n");
        if [a, b, c].iter().any(|reply| reply == "$-1\r\n") {
            nils.push(i);
        }
    }
    assert!(
        nils.is_empty(),
        "GET answered nil for {} keys that always existed: {nils:?}",
        nils.len()
    );
}

// Was: RESP2 CLIENT TRACKING with REDIRECT: the invalidation message on
// `__redis__:invalidate` names the stored key. Plain Redis:
// `message __redis__:invalidate [app:x]`; proxy: `[v2:app:x]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_resp2_redirected_invalidations_show_the_version() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut setup = proxy.raw().await;
    assert_eq!(setup.cmd("SET app:x 1").await, "+OK\r\n");
    let mut sink = proxy.raw().await;
    let id = sink.cmd("CLIENT ID").await;
    let id = id.trim_start_matches(':').trim_end();
    assert!(sink.cmd("SUBSCRIBE __redis__:invalidate").await.contains("subscribe"));
    let mut reader = proxy.raw().await;
    assert_eq!(
        reader.cmd(&format!("CLIENT TRACKING ON REDIRECT {id}")).await,
        "+OK\r\n"
    );
    assert_eq!(reader.cmd("GET app:x").await, "$1\r\n1\r\n");
    assert_eq!(setup.cmd("SET app:x 2").await, "+OK\r\n");
    let message = reply_within(&mut sink, Duration::from_secs(5))
        .await
        .expect("an invalidation");
    assert_eq!(
        message,
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$5\r\napp:x\r\n"
    );
}

// Was: CLIENT TRACKING BCAST with a PREFIX that is not exactly a versioned
// namespace's (`app:user:`, `app`, `a`) is passed through unchanged, so
// Redis tracks a prefix no stored name has: the client is never told about
// writes and its client-side cache stays stale. Plain Redis: `>2 invalidate
// [app:user:1]`; proxy: nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_bcast_prefix_narrower_than_the_namespace_gets_no_invalidations() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut tracked = proxy.raw().await;
    assert!(tracked.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(
        tracked.cmd("CLIENT TRACKING ON BCAST PREFIX app:user:").await,
        "+OK\r\n"
    );
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET app:user:1 x").await, "+OK\r\n");
    let push = reply_within(&mut tracked, Duration::from_secs(3)).await;
    assert_eq!(
        push.as_deref(),
        Some(">2\r\n$10\r\ninvalidate\r\n*1\r\n$10\r\napp:user:1\r\n")
    );
}

// Was: a command the proxy refuses inside MULTI (here the documented SORT
// pattern refusal) never reaches Redis, so the transaction is not flagged:
// EXEC runs the other commands. The client saw an error for a queued
// command, which in Redis means EXEC answers -EXECABORT and nothing runs.
// Proxy: EXEC answers `*1 [+OK]` and app:a is set (a partial transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_refusal_inside_multi_lets_exec_run_a_partial_transaction() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(client.cmd("SET app:a 1").await, "+QUEUED\r\n");
    let refused = client.cmd("SORT app:l BY *:w").await;
    assert!(refused.starts_with("-ERR"), "{refused}");
    let exec = client.cmd("EXEC").await;
    assert!(
        exec.starts_with("-EXECABORT"),
        "EXEC after a queued command failed: {exec}"
    );
    assert_eq!(direct.cmd("EXISTS v2:app:a").await, ":0\r\n");
}

// Was: a failed migration is only counted; the client's command runs
// anyway. A client authenticated as a Redis user without scripting (the
// proxy has no [auth], so the client's AUTH goes to Redis) deletes a key
// that lives in v1: the hidden EVAL is refused (NOPERM), DEL removes only
// the nonexistent v2 name. Plain Redis: DEL answers :1 and GET nil. Proxy:
// DEL answers :0 and the key is still read back (it was never deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_a_failed_migration_lets_a_delete_leave_the_old_version() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(
        direct.cmd("ACL SETUSER alice on >pw +@all -@scripting ~*").await,
        "+OK\r\n"
    );
    assert_eq!(direct.cmd("SET v1:app:x old").await, "+OK\r\n");
    let mut alice = proxy.raw().await;
    assert_eq!(alice.cmd("AUTH alice pw").await, "+OK\r\n");
    let deleted = alice.cmd("DEL app:x").await;
    let mut other = proxy.raw().await;
    let after = other.cmd("GET app:x").await;
    assert_eq!((deleted, after), (":1\r\n".to_string(), "$-1\r\n".to_string()));
}

// Was: under maxmemory with noeviction and memory full, Redis still serves
// reads, but the read's migration (COPY, a denyoom command) is refused, so
// the proxy reads the empty current version. Plain Redis: `$3 old`. Proxy:
// nil.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_reads_of_old_keys_answer_nil_when_redis_is_out_of_memory() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v1:app:x old").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("PING").await, "+PONG\r\n");
    assert_eq!(direct.cmd("CONFIG SET maxmemory-policy noeviction").await, "+OK\r\n");
    assert_eq!(direct.cmd("CONFIG SET maxmemory 1").await, "+OK\r\n");
    assert_eq!(
        direct.cmd("GET v1:app:x").await,
        "$3\r\nold\r\n",
        "Redis reads under OOM"
    );
    let got = client.cmd("GET app:x").await;
    direct.cmd("CONFIG SET maxmemory 0").await;
    assert_eq!(got, "$3\r\nold\r\n");
}

// Was: a piped client (RESP3 with CLIENT TRACKING ON, the usual
// client-side caching setup) gets every reply through PipeMapper, which
// takes any array whose first element is "message" for a pub/sub message
// (RESP3 replies `*` are not told from pushes `>`). A list holding such
// values is rewritten. Plain Redis: LRANGE answers the list as stored.
// Proxy: the `__keyspace@0__:v2:app:x` element comes back as
// `__keyspace@0__:app:x` (the client's data altered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_piped_clients_replies_that_look_like_messages_are_rewritten() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(
        direct.cmd("RPUSH plain:l1 message __keyspace@0__:v2:app:x hello").await,
        ":3\r\n"
    );
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(client.cmd("CLIENT TRACKING ON").await, "+OK\r\n");
    let first = client.cmd("LRANGE plain:l1 0 -1").await;
    assert_eq!(
        first,
        "*3\r\n$7\r\nmessage\r\n$23\r\n__keyspace@0__:v2:app:x\r\n$5\r\nhello\r\n"
    );
}

// Was: same cause, worse effect: a reply that looks like a message about a
// hidden key is dropped, so the client waits forever and every later reply
// is taken for the one before it. Plain Redis: LRANGE answers the 3
// elements, then PING +PONG. Proxy: no LRANGE reply; the next reply the
// client reads is PONG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_piped_clients_replies_that_look_like_messages_are_dropped() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(
        direct.cmd("RPUSH plain:l2 message __keyevent@0__:set v3:app:x").await,
        ":3\r\n"
    );
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(client.cmd("CLIENT TRACKING ON").await, "+OK\r\n");
    client.send_command(&[b"LRANGE", b"plain:l2", b"0", b"-1"]).await;
    client.send_command(&[b"PING"]).await;
    let reply = reply_within(&mut client, Duration::from_secs(3)).await;
    assert_eq!(
        reply.as_deref(),
        Some("*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$8\r\nv3:app:x\r\n")
    );
}

// Was: SCAN with MATCH given twice: Redis uses the last one; the proxy
// rewrites and filters by the first. `SCAN 0 MATCH plain:* MATCH app:*`:
// plain Redis answers [0, [app:a]]; the proxy answers [0, []].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_scan_with_two_match_options_uses_the_wrong_one() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:a 1").await, "+OK\r\n");
    assert_eq!(client.cmd("SET plain:b 1").await, "+OK\r\n");
    assert_eq!(
        client.cmd("SCAN 0 MATCH plain:* MATCH app:* COUNT 1000").await,
        "*2\r\n$1\r\n0\r\n*1\r\n$5\r\napp:a\r\n"
    );
}

// Was (key pattern `{key}@v{version}`): KEYS/SCAN append `@v*` to the
// client's pattern, which changes what a pattern ending in an unclosed
// class or a lone backslash means. Plain Redis: `KEYS app:[ab` answers
// [app:a]; proxy: []. (`v{version}:{key}` puts the client's pattern last
// and is not affected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_key_first_pattern_breaks_unclosed_classes_in_keys() {
    let (_server, proxy, _direct) = start(|config| {
        config.versioning.key_pattern = "{key}@v{version}".into();
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:a 1").await, "+OK\r\n");
    assert_eq!(client.cmd("KEYS app:[ab").await, "*1\r\n$5\r\napp:a\r\n");
}

// Was: MOVE/COPY ... DB n: the migration runs in the client's database
// only, so the target database's old version of the key is neither seen
// nor removed. db1 holds app:x in v1. Plain Redis: MOVE app:x 1 answers :0
// (the key exists there) and db1's app:x keeps its value. Proxy: :1, and
// db1's app:x now reads db0's value (v1's copy stays behind, shadowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_move_to_another_db_ignores_the_old_version_there() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:x indb1").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:x indb0").await, "+OK\r\n");
    let moved = client.cmd("MOVE app:x 1").await;
    assert_eq!(client.cmd("SELECT 1").await, "+OK\r\n");
    let in_db1 = client.cmd("GET app:x").await;
    assert_eq!((moved, in_db1), (":0\r\n".to_string(), "$5\r\nindb1\r\n".to_string()));
}

// Was: PUBSUB CHANNELS / NUMSUB show and count the stored keyspace
// channels. A proxied client subscribed to `__keyspace@0__:app:x`. Plain
// Redis: PUBSUB CHANNELS __keyspace* answers [__keyspace@0__:app:x] and
// NUMSUB counts 1. Proxy: [__keyspace@0__:v2:app:x], NUMSUB 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_pubsub_introspection_shows_stored_channels() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut subscriber = proxy.raw().await;
    assert!(
        subscriber
            .cmd("SUBSCRIBE __keyspace@0__:app:x")
            .await
            .contains("subscribe")
    );
    let mut client = proxy.raw().await;
    assert_eq!(
        client.cmd("PUBSUB CHANNELS __keyspace*").await,
        "*1\r\n$20\r\n__keyspace@0__:app:x\r\n"
    );
}

// Was (documented as a limitation, but the issue requires "a client never
// sees a version prefix"): a piped client (RESP3 CLIENT TRACKING, the usual
// client-side caching setup) gets KEYS and pops unmapped. Plain Redis:
// [app:a]; proxy: [v2:app:a].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_piped_clients_see_stored_names_in_keys_and_pops() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(client.cmd("CLIENT TRACKING ON").await, "+OK\r\n");
    assert_eq!(client.cmd("RPUSH app:a x").await, ":1\r\n");
    assert_eq!(client.cmd("KEYS app:*").await, "*1\r\n$5\r\napp:a\r\n");
    assert_eq!(client.cmd("BLPOP app:a 1").await, "*2\r\n$5\r\napp:a\r\n$1\r\nx\r\n");
}

// Was (minor): RANDOMKEY gives up after 64 hidden draws and answers nil,
// Redis's "the database is empty", while the client's keyspace has keys.
// Here db0 holds 3000 keys of a version `app` no longer serves and one
// visible key. Plain Redis (a database of the client's keys): app:only.
// Proxy: nil (almost always).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_randomkey_answers_nil_while_keys_exist() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    let script = "for i = 1, 3000 do redis.call('SET', 'v0:app:k' .. i, 1) end return 1";
    assert_eq!(direct.command(&[b"EVAL", script.as_bytes(), b"0"]).await, b":1\r\n");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:only 1").await, "+OK\r\n");
    assert_eq!(client.cmd("EXISTS app:only").await, ":1\r\n");
    assert_eq!(client.cmd("RANDOMKEY").await, "$8\r\napp:only\r\n");
}

// Limitation: in front of a read-only replica (read scaling), Redis serves reads,
// but the read's migration COPY is refused (READONLY), only counted, and
// the proxy reads the empty current version. Plain Redis (the replica):
// `$3 old`. Proxy: nil.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_old_keys_through_a_replica_fail_explicitly() {
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut direct = RawClient::connect(primary.addr()).await;
    assert_eq!(direct.cmd("SET v1:app:x old").await, "+OK\r\n");
    let mut on_replica = RawClient::connect(replica.addr()).await;
    on_replica.cmd_until("GET v1:app:x", "$3\r\nold\r\n").await;
    let proxy = Proxy::start_with(&replica.url(), versioned).await;
    let versions = proxy.handle().versions().unwrap().clone();
    common::poll_until("the key table from Redis", || versions.table_learned());
    let mut client = proxy.raw().await;
    // A documented limitation (versioning with fallbacks needs a writable
    // Redis): the read cannot bring the old version over, and says so
    // rather than answer "absent".
    let reply = client.cmd("GET app:x").await;
    assert!(
        reply.starts_with("-ERR auracache: version migration failed: "),
        "{reply}"
    );
    assert!(reply.contains("READONLY"), "{reply}");
}

// Was: CLIENT TRACKING BCAST PREFIX of a versioned namespace is replaced by
// its stored prefixes, which can overlap a prefix Redis would accept next
// to the client's. Plain Redis: `PREFIX app: PREFIX v` is +OK (they do
// not overlap). Proxy: -ERR Prefix 'v' overlaps with 'v1:app:'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_tracking_prefixes_that_do_not_overlap_are_refused() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut tracked = proxy.raw().await;
    assert!(tracked.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(
        tracked.cmd("CLIENT TRACKING ON BCAST PREFIX app: PREFIX v").await,
        "+OK\r\n"
    );
}

// Was (documented: "don't name an unversioned namespace like a version
// prefix"): a client key that looks like a stored name is the same Redis
// key as the versioned one. Plain Redis: SET v2:app:x alias leaves app:x
// missing (nil). Proxy: GET app:x answers "alias", and DEL v2:app:x
// deletes app:x. Nothing refuses or escapes such keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_client_keys_shaped_like_stored_names_alias_versioned_keys() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut client = proxy.raw().await;
    // Now refused, so no client key can alias a stored name.
    let refused = client.cmd("SET v2:app:x alias").await;
    assert!(
        refused.starts_with("-ERR auracache: the key 'v2:app:x' has the form of a versioned stored name"),
        "{refused}"
    );
    assert_eq!(client.cmd("GET app:x").await, "$-1\r\n");
}

// Was (fallback_versions = [1, 0]): a read copies the first fallback that
// has the key but leaves the older, shadowed ones; when the copy and v1
// expire, the next read resurrects v0's older value. Client's view: app:x
// was "new" with a 300 ms TTL; after it expired plain Redis answers nil.
// Proxy: "ancient" (v0's value, never shown before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_an_expired_key_comes_back_from_an_older_shadowed_fallback() {
    let (_server, proxy, mut direct) = start(|config| {
        config.namespaces.get_mut("app").unwrap().fallback_versions = vec![1, 0];
    })
    .await;
    assert_eq!(direct.cmd("SET v0:app:x ancient").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:x new PX 300").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET app:x").await, "$3\r\nnew\r\n");
    // Expired in Redis (both the copy and v1 carry v1's expiry).
    direct.cmd_until("EXISTS v1:app:x v2:app:x", ":0\r\n").await;
    assert_eq!(
        direct.cmd("EXISTS v0:app:x").await,
        ":0\r\n",
        "the shadowed v0 went at the copy"
    );
    assert_eq!(client.cmd("GET app:x").await, "$-1\r\n");
}

/// Plain Redis holding the client's keys under their own names, and a
/// proxied Redis holding the same data in v1 (so every command migrates).
struct Pair {
    plain: RawClient,
    proxied: RawClient,
    proxy: Proxy,
    #[allow(dead_code)]
    servers: (RedisServer, RedisServer),
}

impl Pair {
    async fn new(protocol: u8, tweak: impl FnOnce(&mut Config)) -> Pair {
        let plain_server = RedisServer::start();
        let (proxied_server, proxy, mut direct) = start(tweak).await;
        let mut plain = RawClient::connect(plain_server.addr()).await;
        for (plain_line, stored_line) in [
            ("SET app:a va", "SET v1:app:a va"),
            ("SET app:b vb", "SET v1:app:b vb"),
            ("RPUSH app:l x y z", "RPUSH v1:app:l x y z"),
            ("XADD app:s 1-1 f v", "XADD v1:app:s 1-1 f v"),
            ("ZADD app:z 1 m 2 n", "ZADD v1:app:z 1 m 2 n"),
        ] {
            let reply = plain.cmd(plain_line).await;
            assert_eq!(direct.cmd(stored_line).await, reply);
        }
        let mut proxied = proxy.raw().await;
        if protocol == 3 {
            assert!(plain.cmd("HELLO 3").await.starts_with('%'));
            assert!(proxied.cmd("HELLO 3").await.starts_with('%'));
        }
        Pair {
            plain,
            proxied,
            proxy,
            servers: (plain_server, proxied_server),
        }
    }

    async fn lines(&mut self, lines: &[&str]) {
        for line in lines {
            let plain = self.plain.cmd(line).await;
            let proxied = self.proxied.cmd(line).await;
            assert_eq!(proxied, plain, "{line:?} (left: proxy, right: plain Redis)");
        }
    }

    /// All lines in one write, replies compared in order.
    async fn pipelined(&mut self, lines: &[&str]) {
        let mut bytes = Vec::new();
        for line in lines {
            let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
            bytes.extend(common::encode(&args));
        }
        self.plain.send(&bytes).await;
        self.proxied.send(&bytes).await;
        for line in lines {
            let plain = String::from_utf8_lossy(&self.plain.read_reply().await).into_owned();
            let proxied = String::from_utf8_lossy(&self.proxied.read_reply().await).into_owned();
            assert_eq!(
                proxied, plain,
                "{line:?} in a pipeline (left: proxy, right: plain Redis)"
            );
        }
    }
}

const TRANSACTIONS: &[&str] = &[
    "MULTI",
    "GET app:a",
    "KEYS app:a*",
    "LPOP app:l",
    "XREAD STREAMS app:s 0",
    "BZPOPMIN app:z 0",
    "EXEC",
    "MULTI",
    "MULTI",
    "GET app:b",
    "EXEC",
    "MULTI",
    "SET app:a changed",
    "DISCARD",
    "MULTI",
    "GET app:a",
    "SET app:c",
    "EXEC",
    "GET app:a",
    "MULTI",
    "INCR app:a",
    "GET app:b",
    "EXEC",
    "WATCH app:b",
    "MULTI",
    "GET app:b",
    "EXEC",
    "EXEC",
    "DISCARD",
];

// Check: transactions with queued hidden migrations (EXEC arrays
// mapped, nested MULTI, DISCARD, a queue-time error's EXECABORT, a runtime
// error inside EXEC, WATCH), RESP2 and RESP3, one command at a time and
// all in one pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_transactions_with_hidden_migrations() {
    for protocol in [2, 3] {
        let mut pair = Pair::new(protocol, |_| {}).await;
        pair.lines(TRANSACTIONS).await;
        let mut pair = Pair::new(protocol, |_| {}).await;
        pair.pipelined(TRANSACTIONS).await;
    }
}

// Check: same with L1 and compression on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_transactions_with_l1_and_compression() {
    let mut pair = Pair::new(2, |config| {
        common::l1_eager(config);
        config.compression.enabled = true;
        config.compression.threshold = 1;
    })
    .await;
    let l1 = pair.proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 ready", || l1.ready());
    pair.lines(TRANSACTIONS).await;
}

// Check: a pipeline mixing L1 hits, misses of old-version keys
// (with hidden migrations), writes, KEYS, pops and MGET partly from L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_pipeline_mixing_l1_hits_and_migrations() {
    let mut pair = Pair::new(2, common::l1_eager).await;
    let l1 = pair.proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 ready", || l1.ready());
    pair.lines(&["SET app:hot h", "GET app:hot", "GET app:hot"]).await;
    pair.pipelined(&[
        "GET app:hot",
        "GET app:a",
        "SET app:n 1",
        "GET app:hot",
        "MGET app:hot app:b app:none app:a",
        "KEYS app:[a]",
        "LPOP app:l",
        "GET app:hot",
        "DEL app:b",
        "GET app:b",
        "MGET app:b app:hot",
    ])
    .await;
}

// Was: SUBSCRIBE (or CLIENT TRACKING ON) queued inside MULTI turns the
// client into a piped one before EXEC, so EXEC's array reaches it
// unmapped, with the hidden migration's element in it. Plain Redis 7.0:
// EXEC answers [va, [subscribe, ch, 1]]. Proxy: [[1], va, [subscribe, ch,
// 1]] (the migration's reply shown as an extra first element).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_exec_after_a_queued_subscribe_shows_the_hidden_migration() {
    let mut pair = Pair::new(2, |_| {}).await;
    pair.lines(&["MULTI", "GET app:a", "SUBSCRIBE ch", "EXEC"]).await;
}

// Check: empty and binary keys of a versioned namespace, and a key
// named twice in one command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_empty_binary_and_repeated_keys() {
    let mut pair = Pair::new(2, |_| {}).await;
    for args in [
        &[&b"SET"[..], b"app:", b"empty"][..],
        &[b"GET", b"app:"],
        &[b"SET", b"app:\r\n\xff\x00", b"bin"],
        &[b"GET", b"app:\r\n\xff\x00"],
        &[b"KEYS", b"app:\r*"],
        &[b"SET", b"", b"nothing"],
        &[b"KEYS", b"*\x00"],
        &[b"RENAME", b"app:a", b"app:a"],
        &[b"LMOVE", b"app:l", b"app:l", b"LEFT", b"RIGHT"],
        &[b"LRANGE", b"app:l", b"0", b"-1"],
        &[b"SUNIONSTORE", b"app:u", b"app:u", b"app:u"],
        &[b"MSET", b"app:b", b"1", b"app:b", b"2"],
        &[b"GET", b"app:b"],
        &[b"EXISTS", b"app:a", b"app:a", b"app:none"],
        &[b"DEL", b"app:a", b"app:a"],
        &[b"GET", b"app:a"],
    ] {
        let plain = pair.plain.command(args).await;
        let proxied = pair.proxied.command(args).await;
        assert_eq!(
            String::from_utf8_lossy(&proxied),
            String::from_utf8_lossy(&plain),
            "{:?}",
            args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>()
        );
    }
}

// Was: PROXY VERSION CLEANUP ... KEEP 1 with a fallback newer than the
// current version (a rolled-back deployment: version = 1, fallback_versions
// = [2]) computes "versions below 2" and removes the CURRENT version's
// keys. README: "Versions newer than the current one are never removed";
// the current one should never be either. Client's view: app:x was
// written through the proxy (so it is v1, current); after the cleanup,
// GET app:x answers nil instead of "mine".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_cleanup_keep_1_after_a_rollback_removes_the_current_version() {
    let (_server, proxy, mut direct) = start(|config| {
        let app = config.namespaces.get_mut("app").unwrap();
        app.version = Some(1);
        app.fallback_versions = vec![2];
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:x mine").await, "+OK\r\n");
    assert_eq!(direct.cmd("EXISTS v1:app:x").await, ":1\r\n");
    let cleanup = client.cmd("PROXY VERSION CLEANUP app KEEP 1").await;
    assert_eq!(client.cmd("GET app:x").await, "$4\r\nmine\r\n", "after {cleanup:?}");
}

// Check: a cleanup of v1 (KEEP 1) while clients write and delete
// keys of the namespace: every acknowledged write is read back, every
// deleted key stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_cleanup_while_writes_run() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    const KEYS: usize = 3000;
    let script = format!("for i = 1, {KEYS} do redis.call('SET', 'v1:app:k' .. i, 'old') end return 1");
    assert_eq!(direct.command(&[b"EVAL", script.as_bytes(), b"0"]).await, b":1\r\n");
    let mut admin = proxy.raw().await;
    let cleanup = tokio::spawn(async move { admin.cmd("PROXY VERSION CLEANUP app KEEP 1").await });
    let mut writer = proxy.raw().await;
    for i in 1..=KEYS {
        let line = if i % 3 == 0 {
            format!("DEL app:k{i}")
        } else {
            format!("SET app:k{i} new{i}")
        };
        let reply = writer.cmd(&line).await;
        assert!(!reply.starts_with('-'), "{line}: {reply}");
    }
    let report = cleanup.await.unwrap();
    assert!(report.contains("removed"), "{report}");
    for i in 1..=KEYS {
        let expected = if i % 3 == 0 {
            "$-1\r\n".to_string()
        } else {
            format!("${}\r\nnew{i}\r\n", format!("new{i}").len())
        };
        assert_eq!(writer.cmd(&format!("GET app:k{i}")).await, expected, "app:k{i}");
    }
}

// Was: a keyspace PSUBSCRIBE pattern whose literal prefix does not fix the
// namespace (`__keyspace@0__:*:1`, `__keyspace@0__:a*`) is widened to
// `__keyspace@0__:*`, and PipeMapper never filters the messages by the
// client's own pattern (KEYS and SCAN do). Plain Redis: SET plain:2 sends
// nothing to a `__keyspace@0__:*:1` subscriber. Proxy: it gets
// `pmessage __keyspace@0__:*:1 __keyspace@0__:plain:2 set`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_widened_keyspace_patterns_deliver_messages_the_pattern_excludes() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KEA").await, "+OK\r\n");
    let mut subscriber = proxy.raw().await;
    assert!(
        subscriber
            .cmd("PSUBSCRIBE __keyspace@0__:*:1")
            .await
            .contains("psubscribe")
    );
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET plain:2 x").await, "+OK\r\n");
    assert_eq!(client.cmd("SET plain:1 x").await, "+OK\r\n");
    let first = reply_within(&mut subscriber, Duration::from_secs(3)).await;
    assert_eq!(
        first.as_deref(),
        Some("*4\r\n$8\r\npmessage\r\n$18\r\n__keyspace@0__:*:1\r\n$22\r\n__keyspace@0__:plain:1\r\n$3\r\nset\r\n"),
        "the first message must be about plain:1"
    );
}

// Check: reply order in pipelines with round trips the proxy makes
// on the way (migrate_on_read = false resolves, RANDOMKEY redraws) and
// local refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_pipeline_order_with_resolves_and_refusals() {
    let mut pair = Pair::new(2, |config| {
        config.namespaces.get_mut("app").unwrap().migrate_on_read = Some(false);
    })
    .await;
    pair.pipelined(&[
        "SET plain:n 1",
        "GET app:a",
        "INCR plain:n",
        "MGET app:a app:b plain:n",
        "LRANGE app:l 0 -1",
        "GET app:b",
        "SET app:b new",
        "GET app:b",
        "INCR plain:n",
    ])
    .await;
    // A refusal keeps its place.
    let mut client = pair.proxy.raw().await;
    let mut bytes = common::encode(&[b"GET", b"app:a"]);
    bytes.extend(common::encode(&[b"SORT", b"app:l", b"BY", b"*:w"]));
    bytes.extend(common::encode(&[b"GET", b"plain:n"]));
    client.send(&bytes).await;
    assert_eq!(client.read_reply().await, b"$2\r\nva\r\n");
    assert!(client.read_reply().await.starts_with(b"-ERR auracache"));
    assert_eq!(client.read_reply().await, b"$1\r\n3\r\n");
}

// The second review's findings, on the fixes for the first.

fn no_migrate(config: &mut Config) {
    config.namespaces.get_mut("app").unwrap().migrate_on_read = Some(false);
}

// Was (second review): L1 miss path after a refusal: read_through_l1 computes batch_replies - 1
// after forward() answered the command itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_get_on_the_l1_path_answers_and_keeps_the_client() {
    let (_server, proxy, _direct) = start(common::l1_eager).await;
    let mut client = proxy.raw().await;
    let first = client.try_cmd("GET v2:app:x").await;
    assert!(
        first
            .as_deref()
            .is_some_and(|reply| reply.starts_with("-ERR auracache: the key 'v2:app:x'")),
        "{first:?}"
    );
    let second = client.try_cmd("GET v2:app:x").await;
    let third = client.try_cmd("PING").await;
    assert_eq!(
        third.as_deref(),
        Some("+PONG\r\n"),
        "client dropped: {first:?} {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mget_on_the_l1_path_answers_and_keeps_the_client() {
    let (_server, proxy, _direct) = start(common::l1_eager).await;
    let mut client = proxy.raw().await;
    let first = client.try_cmd("MGET v2:app:x plain").await;
    let third = client.try_cmd("PING").await;
    assert_eq!(third.as_deref(), Some("+PONG\r\n"), "client dropped: {first:?}");
}

// Was (second review): A failed migration inside MULTI: the command is answered with an
// error but never queued, so EXEC runs the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_inside_multi_aborts_exec() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v1:app:k old").await, "+OK\r\n");
    let mut redis = RawClient::connect(_server.addr()).await;
    let r: Vec<String> = vec![
        redis.cmd("MULTI").await,
        redis.cmd("SET plain:a 1").await,
        redis.cmd("MOVE plain:k 99").await,
        redis.cmd("EXEC").await,
    ];
    let mut client = proxy.raw().await;
    let p: Vec<String> = vec![
        client.cmd("MULTI").await,
        client.cmd("SET plain:b 1").await,
        client.cmd("MOVE app:k 99").await,
        client.cmd("EXEC").await,
    ];
    // Now as in Redis: MOVE is queued, and fails alone inside EXEC.
    assert_eq!(p, r);
}

// Was (second review): WATCH with migrate_on_read = false watches the v1 name; a write in the
// transaction migrates (RENAME v1 -> v2), which touches the watched key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_migrate_on_read_keeps_the_transaction() {
    let (_server, proxy, mut direct) = start(no_migrate).await;
    assert_eq!(direct.cmd("SET v1:app:k old").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    let p = [
        client.cmd("WATCH app:k").await,
        client.cmd("MULTI").await,
        client.cmd("SET app:k new").await,
        client.cmd("EXEC").await,
        client.cmd("GET app:k").await,
    ];
    assert_eq!(p[3], "*1\r\n+OK\r\n");
}

// Was (second review): XREAD BLOCK with migrate_on_read = false blocks on the v1 name; an XADD
// through the proxy moves the stream to v2, the reader never wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xread_block_without_migrate_on_read_sees_new_entries() {
    let (_server, proxy, mut direct) = start(no_migrate).await;
    assert!(direct.cmd("XADD v1:app:s 1-1 f v").await.contains("1-1"));
    let mut reader = proxy.raw().await;
    reader
        .send_command(&[b"XREAD", b"BLOCK", b"1500", b"STREAMS", b"app:s", b"$"])
        .await;
    common::poll_until_async("XREAD to block in Redis", || {
        let addr = _server.addr();
        async move {
            let mut probe = RawClient::connect(addr).await;
            probe.cmd("INFO clients").await.contains("blocked_clients:1")
        }
    })
    .await;
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("XADD app:s 2-1 f w").await, "$3\r\n2-1\r\n");
    let got = reply_within(&mut reader, Duration::from_secs(8)).await;
    assert!(got.as_deref().is_some_and(|r| r.contains("2-1")), "{got:?}");
}

// Was (second review): MGET across a no-migrate namespace (key in v1) and a migrating one
// (key in v1): the answered read drops the other namespace's migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_mixing_namespaces_keeps_the_migrating_one() {
    let (_server, proxy, mut direct) = start(|config| {
        no_migrate(config);
        let other = config.namespaces.entry("other".into()).or_default();
        other.version = Some(2);
        other.fallback_versions = vec![1];
    })
    .await;
    assert_eq!(direct.cmd("SET v1:app:a A").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:other:b B").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    let got = client.cmd("MGET app:a other:b").await;
    assert_eq!(got, "*2\r\n$1\r\nA\r\n$1\r\nB\r\n");
}

// Was (second review): migrate_on_read = false: FIND runs on the client's own connection; a
// client with its own AUTH (no scripting) reads the empty current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_runs_with_the_proxys_credentials() {
    let (_server, proxy, mut direct) = start(no_migrate).await;
    assert_eq!(
        direct.cmd("ACL SETUSER alice on >pw +@all -@scripting ~*").await,
        "+OK\r\n"
    );
    assert_eq!(direct.cmd("SET v1:app:x old").await, "+OK\r\n");
    let mut alice = proxy.raw().await;
    assert_eq!(alice.cmd("AUTH alice pw").await, "+OK\r\n");
    let got = alice.cmd("GET app:x").await;
    assert_eq!(got, "$3\r\nold\r\n");
}

/// A RESP3 client made piped by SUBSCRIBE to a plain channel.
async fn piped_resp3(proxy: &Proxy) -> RawClient {
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    let sub = client.cmd("SUBSCRIBE plain:chan").await;
    assert!(sub.starts_with(">3"), "{sub}");
    client
}

// Was (second review): A SUBSCRIBE without channels in pipe mode: Redis answers an error (a
// reply), but no reply was expected for it, so the next command's mapping
// is consumed by it and KEYS comes back unmapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_subscribe_arity_error_keeps_replies_in_step() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v2:app:k 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:old 1").await, "+OK\r\n");
    let mut client = piped_resp3(&proxy).await;
    client.send_command(&[b"SUBSCRIBE"]).await;
    client.send_command(&[b"KEYS", b"app:*"]).await;
    let a = reply_within(&mut client, Duration::from_secs(3)).await;
    let b = reply_within(&mut client, Duration::from_secs(3)).await;
    assert!(
        a.as_deref().is_some_and(|reply| reply.starts_with("-ERR wrong number")),
        "{a:?}"
    );
    // KEYS's own reply, mapped: app:k, and app:old (still in v1).
    let keys = b.unwrap_or_default();
    assert!(
        keys.starts_with("*2\r\n") && keys.contains("$5\r\napp:k\r\n") && keys.contains("$7\r\napp:old\r\n"),
        "{keys}"
    );
}

// Was (second review): RESET in pipe mode: the mapper still thinks RESP3, so RESP2
// confirmations/messages after it are taken for replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_reset_then_keyspace_subscribe_names_client_keys() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KA").await, "+OK\r\n");
    let mut client = piped_resp3(&proxy).await;
    assert_eq!(client.cmd("RESET").await, "+RESET\r\n");
    let sub = client.cmd("SUBSCRIBE __keyspace@0__:app:k").await;
    assert!(sub.contains("__keyspace@0__:app:k"), "{sub}");
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET app:k 1").await, "+OK\r\n");
    let message = reply_within(&mut client, Duration::from_secs(3)).await;
    assert!(!sub.contains("v2:") && !message.unwrap_or_default().contains("v2:"));
}

// Was (second review): HELLO 2 in RESP3 pipe mode (still subscribed): RESP2 messages are
// taken for replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_hello2_then_keyspace_messages_name_client_keys() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KA").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    let sub = client.cmd("SUBSCRIBE __keyspace@0__:app:k").await;
    assert!(sub.contains("__keyspace@0__:app:k"), "{sub}");
    assert!(client.cmd("HELLO 2").await.starts_with('*'));
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET app:k 1").await, "+OK\r\n");
    let message = reply_within(&mut client, Duration::from_secs(3)).await;
    assert!(!message.unwrap_or_default().contains("v2:"));
}

// Was (second review): RESP2: the count in a SUNSUBSCRIBE confirmation is the shard count;
// the mapper takes 0 for "not subscribed" while the client still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_shard_counts_do_not_end_subscribed_mode() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KA").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert!(client.cmd("SSUBSCRIBE plain:shard").await.ends_with(":1\r\n"));
    assert!(client.cmd("SUBSCRIBE __keyspace@0__:app:k").await.ends_with(":1\r\n"));
    assert!(client.cmd("SUNSUBSCRIBE plain:shard").await.ends_with(":0\r\n"));
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET app:k 1").await, "+OK\r\n");
    let message = reply_within(&mut client, Duration::from_secs(3)).await;
    assert_eq!(
        message.as_deref(),
        Some("*3\r\n$7\r\nmessage\r\n$20\r\n__keyspace@0__:app:k\r\n$3\r\nset\r\n")
    );
}

// Was (second review): A refusal in pipe mode is written at once, ahead of replies still owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_refusal_keeps_its_place() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET plain:big x").await, "+OK\r\n");
    let mut client = piped_resp3(&proxy).await;
    // A slow-ish command first.
    client
        .send_command(&[
            b"EVAL",
            b"local i = 0 while i < 20000000 do i = i + 1 end return 'slow'",
            b"0",
        ])
        .await;
    client.send_command(&[b"GET", b"v2:app:x"]).await;
    let a = reply_within(&mut client, Duration::from_secs(5)).await;
    let b = reply_within(&mut client, Duration::from_secs(5)).await;
    assert!(a.unwrap_or_default().contains("slow"), "replies out of order");
    assert!(b.is_some_and(|reply| reply.starts_with("-ERR auracache: the key 'v2:app:x'")));
}

// Was (second review): MULTI in pipe mode: EXEC's array is not mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_exec_array_names_client_keys() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v2:app:k 1").await, "+OK\r\n");
    let mut client = piped_resp3(&proxy).await;
    let p = [
        client.cmd("MULTI").await,
        client.cmd("KEYS app:*").await,
        client.cmd("EXEC").await,
    ];
    assert!(!p[2].contains("v2:"));
}

// Was (second review): A refusal in pipe mode inside MULTI: Redis never sees it; EXEC runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_refusal_inside_multi_aborts_exec() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    let mut client = piped_resp3(&proxy).await;
    let p = vec![
        client.cmd("MULTI").await,
        client.cmd("SET app:a 1").await,
        client.cmd("SORT app:l BY *:w").await,
        client.cmd("EXEC").await,
    ];
    assert!(p[3].starts_with("-EXECABORT"), "{p:?}");
    assert_eq!(direct.cmd("EXISTS v2:app:a").await, ":0\r\n");
}

// Was (second review): An unknown command: Redis answers "unknown command"; the proxy?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_error_text() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    let mut client = proxy.raw().await;
    let r = direct.cmd("NOSUCHCMD app:x").await;
    let p = client.cmd("NOSUCHCMD app:x").await;
    let calls = common::redis_calls(&mut direct, "command|info").await;
    for _ in 0..5 {
        client.cmd("NOSUCHCMD app:x").await;
    }
    let after = common::redis_calls(&mut direct, "command|info").await;
    assert_eq!(p, r);
    // Asked once, then remembered as unknown for a while.
    assert_eq!(after - calls, 0);
}

// Was (second review): Overlapping BCAST prefixes: Redis refuses them, the proxy drops one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_bcast_prefixes_are_refused_by_redis() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut redis = RawClient::connect(_server.addr()).await;
    assert!(redis.cmd("HELLO 3").await.starts_with('%'));
    let r = redis.cmd("CLIENT TRACKING ON BCAST PREFIX plain: PREFIX plain:1").await;
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    let p = client.cmd("CLIENT TRACKING ON BCAST PREFIX app: PREFIX app:1").await;
    assert!(r.starts_with("-ERR Prefix 'plain:"), "{r}");
    assert!(p.starts_with("-ERR Prefix 'app:"), "Redis's own refusal: {p}");
}

// Was (second review): migrate_on_read = false + compression: the answered read is decoded?
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_read_of_compressed_value() {
    let (_server, proxy, mut direct) = start(|config| {
        no_migrate(config);
        config.compression.enabled = true;
        config.compression.threshold = 8;
    })
    .await;
    let value = "a".repeat(200);
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd(&format!("SET app:z {value}")).await, "+OK\r\n");
    assert_eq!(client.cmd(&format!("SET app:y {value}")).await, "+OK\r\n");
    assert_eq!(direct.cmd("RENAME v2:app:z v1:app:z").await, "+OK\r\n");
    assert_eq!(direct.cmd("RENAME v2:app:y v1:app:y").await, "+OK\r\n");
    // As a freshly started proxy would see them: the writes above made this
    // one remember that app:z and app:y have no old versions left.
    proxy.handle().versions().unwrap().forget_all();
    let expected = format!("${}\r\n{value}\r\n", value.len());
    assert_eq!(client.cmd("GET app:z").await, expected);
    let mget = client.cmd("MGET app:z app:y").await;
    assert_eq!(mget, format!("*2\r\n{expected}{expected}"));
    let strlen = client.cmd("STRLEN app:z").await;
    let range = client.cmd("GETRANGE app:z 0 3").await;
    assert_eq!((strlen, range), (":200\r\n".to_string(), "$4\r\naaaa\r\n".to_string()));
}

// Was (second review): A second CLIENT TRACKING ON BCAST adds prefixes in Redis; the proxy
// replaces the client's list and drops the first prefix's invalidations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bcast_adds_its_prefixes() {
    let (server, proxy, _direct) = start(|_| {}).await;
    let mut redis = RawClient::connect(server.addr()).await;
    assert!(redis.cmd("HELLO 3").await.starts_with('%'));
    let r1 = redis.cmd("CLIENT TRACKING ON BCAST PREFIX plain:a").await;
    let r2 = redis.cmd("CLIENT TRACKING ON BCAST PREFIX plain:b").await;
    let mut w = RawClient::connect(server.addr()).await;
    w.cmd("SET plain:a1 1").await;
    let redis_push = reply_within(&mut redis, Duration::from_secs(2)).await;

    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    let p1 = client.cmd("CLIENT TRACKING ON BCAST PREFIX app:a").await;
    let p2 = client.cmd("CLIENT TRACKING ON BCAST PREFIX app:b").await;
    let mut writer = proxy.raw().await;
    writer.cmd("SET app:a1 1").await;
    let push = reply_within(&mut client, Duration::from_secs(2)).await;
    for reply in [&r1, &r2, &p1, &p2] {
        assert_eq!(reply, "+OK\r\n");
    }
    assert!(redis_push.is_some_and(|push| push.contains("plain:a1")));
    assert!(
        push.is_some_and(|push| push.contains("app:a1")),
        "no invalidation for app:a1"
    );
}

// Was (second review): RANDOMKEY with almost only hidden keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomkey_scan_fallback() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    for i in 0..300 {
        direct.cmd(&format!("SET v3:app:h{i} x")).await;
    }
    direct.cmd("SET v2:app:seen 1").await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("RANDOMKEY").await, "$8\r\napp:seen\r\n");
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(client.cmd("RANDOMKEY").await, "$8\r\napp:seen\r\n");
    direct.cmd("DEL v2:app:seen").await;
    let nil = client.cmd("RANDOMKEY").await;
    assert_eq!(nil, "_\r\n");
}

// Was (second review): PUBSUB mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_channels_and_numsub() {
    let (_server, proxy, _direct) = start(|_| {}).await;
    let mut sub = proxy.raw().await;
    assert!(sub.cmd("SUBSCRIBE __keyspace@0__:app:k").await.contains("subscribe"));
    let mut client = proxy.raw().await;
    let c = client.cmd("PUBSUB CHANNELS").await;
    let c2 = client.cmd("PUBSUB CHANNELS __keyspace@0__:app:*").await;
    let n = client.cmd("PUBSUB NUMSUB __keyspace@0__:app:k").await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    let n3 = client.cmd("PUBSUB NUMSUB __keyspace@0__:app:k plain").await;
    assert!(!c.contains("v2:") && !c2.contains("v2:") && !n.contains("v2:") && !n3.contains("v2:"));
}

// Was (second review): A dedicated client's migration runs before its own earlier (still
// unsent) commands: SWAPDB then GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_migration_runs_after_an_earlier_swapdb() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    direct.cmd("SELECT 1").await;
    assert_eq!(direct.cmd("SET v1:app:k one").await, "+OK\r\n");
    direct.cmd("SELECT 0").await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("CLIENT SETNAME me").await, "+OK\r\n");
    client.send_command(&[b"SWAPDB", b"0", b"1"]).await;
    client.send_command(&[b"GET", b"app:k"]).await;
    let a = client.read_reply().await;
    let b = client.read_reply().await;
    assert_eq!(
        (
            String::from_utf8_lossy(&a).to_string(),
            String::from_utf8_lossy(&b).to_string()
        ),
        ("+OK\r\n".to_string(), "$3\r\none\r\n".to_string())
    );
}

// Was (second review): Same, pooled earlier command then the first dedicated one (BLPOP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_dedicated_migration_runs_after_an_earlier_pooled_swapdb() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    direct.cmd("SELECT 1").await;
    assert_eq!(direct.cmd("RPUSH v1:app:l one").await, ":1\r\n");
    direct.cmd("SELECT 0").await;
    let mut client = proxy.raw().await;
    client.send_command(&[b"SWAPDB", b"0", b"1"]).await;
    client.send_command(&[b"BLPOP", b"app:l", b"1"]).await;
    let a = client.read_reply().await;
    let b = client.read_reply().await;
    assert_eq!(
        (
            String::from_utf8_lossy(&a).to_string(),
            String::from_utf8_lossy(&b).to_string()
        ),
        ("+OK\r\n".to_string(), "*2\r\n$5\r\napp:l\r\n$3\r\none\r\n".to_string())
    );
}

// The third review's findings: remembered keys and unversioned fallbacks.

fn enc(line: &str) -> Vec<u8> {
    let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
    common::encode(&args)
}

// Pipelined GET; SWAPDB: the GET's migration reply (result 3, about the
// pre-swap db 0) is remembered after SWAPDB's forget_all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_pipelined_get_then_swapdb_remembers_pre_swap_state() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v2:app:k new").await, "+OK\r\n");
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:k old").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    let mut batch = enc("GET app:k");
    batch.extend(enc("SWAPDB 0 1"));
    client.send(&batch).await;
    let first = String::from_utf8_lossy(&client.read_reply().await).into_owned();
    let second = String::from_utf8_lossy(&client.read_reply().await).into_owned();
    assert_eq!((first.as_str(), second.as_str()), ("$3\r\nnew\r\n", "+OK\r\n"));
    // db 0 now holds v1:app:k = old only: plain semantics (and a proxy
    // that does not remember) serve "old".
    assert_eq!(client.cmd("GET app:k").await, "$3\r\nold\r\n");
}

// SWAPDB queued in MULTI forgets at queue time; another client's read
// before EXEC is remembered, then EXEC swaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_swapdb_in_multi_forgets_too_early() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v2:app:k new").await, "+OK\r\n");
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:k old").await, "+OK\r\n");
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    assert_eq!(a.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(a.cmd("SWAPDB 0 1").await, "+QUEUED\r\n");
    assert_eq!(b.cmd("GET app:k").await, "$3\r\nnew\r\n");
    let exec = a.cmd("EXEC").await;
    assert_eq!(exec, "*1\r\n+OK\r\n");
    assert_eq!(b.cmd("GET app:k").await, "$3\r\nold\r\n");
}

// SWAPDB run by a script through the proxy is not seen.
// Suffix key pattern + fallback_unversioned: the unversioned name of the
// client key `app:k@v2` is the stored name of `app:k`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_suffix_pattern_unversioned_names_alias_other_keys() {
    let (_server, proxy, mut direct) = start(|config| {
        config.versioning.key_pattern = "{key}@v{version}".into();
        let app = config.namespaces.get_mut("app").unwrap();
        app.fallback_versions = Vec::new();
        app.fallback_unversioned = Some(true);
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:k mine").await, "+OK\r\n");
    assert_eq!(direct.cmd("EXISTS app:k@v2").await, ":1\r\n");
    // Plain Redis: app:k@v2 is another key, absent.
    let read = client.cmd("GET app:k@v2").await;
    let write = client.cmd("SET app:k@v2 other").await;
    let after = client.cmd("GET app:k").await;
    // Now refused: its unversioned name is app:k's stored one.
    assert!(
        read.starts_with("-ERR auracache: the key 'app:k@v2' has the form"),
        "{read}"
    );
    assert!(
        write.starts_with("-ERR auracache: the key 'app:k@v2' has the form"),
        "{write}"
    );
    assert_eq!(after, "$4\r\nmine\r\n");
}

// Prefix pattern, namespace with fallback_unversioned: KEYS exact name
// with both forms present lists it once; DEL removes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_unversioned_read_copy_then_del() {
    let (_server, proxy, mut direct) = start(|config| {
        config.namespaces.get_mut("app").unwrap().fallback_unversioned = Some(true);
    })
    .await;
    assert_eq!(direct.cmd("SET app:u U").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET app:u").await, "$1\r\nU\r\n");
    assert_eq!(client.cmd("KEYS app:u").await, "*1\r\n$5\r\napp:u\r\n");
    assert_eq!(client.cmd("DEL app:u").await, ":1\r\n");
    assert_eq!(client.cmd("GET app:u").await, "$-1\r\n");
    assert_eq!(direct.cmd("KEYS *").await, "*0\r\n");
}

// Control: the same without pipelining holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sequential_get_then_swapdb() {
    let (_server, proxy, mut direct) = start(|_| {}).await;
    assert_eq!(direct.cmd("SET v2:app:k new").await, "+OK\r\n");
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:k old").await, "+OK\r\n");
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET app:k").await, "$3\r\nnew\r\n");
    assert_eq!(client.cmd("SWAPDB 0 1").await, "+OK\r\n");
    assert_eq!(client.cmd("GET app:k").await, "$3\r\nold\r\n");
}

// Suffix pattern aliasing, DEL form: DEL of another client key removes app:k.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn was_suffix_pattern_del_of_alias_deletes_key() {
    let (_server, proxy, _direct) = start(|config| {
        config.versioning.key_pattern = "{key}@v{version}".into();
        let app = config.namespaces.get_mut("app").unwrap();
        app.fallback_versions = Vec::new();
        app.fallback_unversioned = Some(true);
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:k mine").await, "+OK\r\n");
    let del = client.cmd("DEL app:k@v2").await;
    let after = client.cmd("GET app:k").await;
    assert!(
        del.starts_with("-ERR auracache: the key 'app:k@v2' has the form"),
        "{del}"
    );
    assert_eq!(after, "$4\r\nmine\r\n");
}
