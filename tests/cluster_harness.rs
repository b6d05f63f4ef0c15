//! The Redis Cluster harness (tests/common/cluster.rs) itself: the cluster
//! it starts serves, its slot hashing is Redis's, and resharding, slot
//! migration and failover leave the cluster as a cluster-aware proxy's
//! tests will expect it (keys where they belong, `-ASK` mid-migration, no
//! acknowledged write lost).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::RawClient;
use common::cluster::{RedisCluster, SLOTS};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `commands` to the node on `port` as one pipeline; the replies, in order.
async fn pipeline(port: u16, commands: &[Vec<Vec<u8>>]) -> Vec<String> {
    let mut client = RawClient::connect(addr(port)).await;
    let mut bytes = Vec::new();
    for command in commands {
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        bytes.extend(common::encode(&args));
    }
    client.send(&bytes).await;
    let mut replies = Vec::with_capacity(commands.len());
    for _ in commands {
        replies.push(String::from_utf8_lossy(&client.read_reply().await).into_owned());
    }
    replies
}

fn command(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|word| word.as_bytes().to_vec()).collect()
}

/// `key -> value` written on each key's master; the masters' replicas
/// have acknowledged them (`WAIT`) when this returns.
async fn write_acknowledged(cluster: &RedisCluster, keys: &BTreeMap<String, String>) {
    let mut by_owner: BTreeMap<u16, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
    for (key, value) in keys {
        let owner = cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes()));
        by_owner.entry(owner).or_default().push(command(&["SET", key, value]));
    }
    for (owner, mut commands) in by_owner {
        let writes = commands.len();
        commands.push(command(&["WAIT", "1", "5000"]));
        let replies = pipeline(owner, &commands).await;
        assert!(replies[..writes].iter().all(|reply| reply == "+OK\r\n"), "{replies:?}");
        assert_eq!(replies[writes], ":1\r\n", "{owner}'s replica acknowledged the writes");
    }
}

/// Reads every key from the master that serves it now.
async fn assert_all_readable(cluster: &RedisCluster, keys: &BTreeMap<String, String>) {
    let mut by_owner: BTreeMap<u16, Vec<(&String, &String)>> = BTreeMap::new();
    for (key, value) in keys {
        let owner = cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes()));
        by_owner.entry(owner).or_default().push((key, value));
    }
    for (owner, entries) in by_owner {
        let commands: Vec<_> = entries.iter().map(|(key, _)| command(&["GET", key])).collect();
        let replies = pipeline(owner, &commands).await;
        for ((key, value), reply) in entries.iter().zip(replies) {
            assert_eq!(
                reply,
                format!("${}\r\n{value}\r\n", value.len()),
                "GET {key} on {owner}"
            );
        }
    }
}

/// One key for each slot in `ranges` (`k0`, `k1`, ... tried in turn).
fn key_per_slot(ranges: &[(u16, u16)]) -> BTreeMap<u16, String> {
    let wanted: usize = ranges.iter().map(|&(start, end)| usize::from(end - start) + 1).sum();
    let mut keys = BTreeMap::new();
    for i in 0.. {
        let key = format!("k{i}");
        let slot = RedisCluster::slot_of(key.as_bytes());
        if ranges.iter().any(|&(start, end)| (start..=end).contains(&slot)) {
            keys.entry(slot).or_insert(key);
            if keys.len() == wanted {
                break;
            }
        }
    }
    keys
}

fn slot_count(ranges: &[(u16, u16)]) -> usize {
    ranges.iter().map(|&(start, end)| usize::from(end - start) + 1).sum()
}

#[test]
fn three_masters_start_and_serve_reads_and_writes() {
    let cluster = RedisCluster::start(3, 0);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.ports().len(), 3);
    let seeds: Vec<String> = masters.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    assert_eq!(cluster.url(), format!("redis-cluster://{}", seeds.join(",")));
    let covered: usize = masters.iter().map(|&port| slot_count(&cluster.slots_of(port))).sum();
    assert_eq!(covered, usize::from(SLOTS));

    for &master in &masters {
        let id = cluster.node_id(master);
        assert_eq!(id.len(), 40, "{id:?}");
        assert_eq!(cluster.cli(master, &["CLUSTER", "MYID"]), id);
        // A key this master serves: written and read through the cluster,
        // it lives here, and another master redirects to here.
        let (start, _) = cluster.slots_of(master)[0];
        let key = key_per_slot(&[(start, start)])[&start].clone();
        assert_eq!(cluster.owner_of_slot(start), master);
        assert_eq!(cluster.direct(&["SET", &key, &format!("on {master}")]), "OK");
        assert_eq!(cluster.direct(&["GET", &key]), format!("on {master}"));
        assert_eq!(cluster.cli(master, &["GET", &key]), format!("on {master}"));
        let other = *masters.iter().find(|&&port| port != master).unwrap();
        assert_eq!(
            cluster.try_cli(other, &["GET", &key]),
            Err(format!("MOVED {start} 127.0.0.1:{master}"))
        );
    }
}

#[tokio::test]
async fn slot_of_is_cluster_keyslot() {
    let cluster = RedisCluster::start(3, 0);
    // Redis Cluster's specification gives CRC16("123456789") = 0x31C3.
    assert_eq!(RedisCluster::slot_of(b"123456789"), 0x31C3 % SLOTS);

    let mut keys: Vec<Vec<u8>> = [
        "",
        "{user1}:a",
        "{user1}:b",
        "user1",
        "{}x",
        "x{}",
        "{}",
        "a{b}c{d}",
        "a{}{b}",
        "{",
        "}",
        "}{",
        "}{x}",
        "{{x}}",
        "{x}}",
        "x{",
        "x}",
        "{ }",
        "{user1}",
    ]
    .iter()
    .map(|key| key.as_bytes().to_vec())
    .collect();
    keys.extend((0..=255u8).map(|byte| vec![byte]));
    keys.extend([
        b"\0{\xff}\r\n".to_vec(),
        b"{\r\n}tail".to_vec(),
        b"\xff\xfe{\0}".to_vec(),
    ]);
    keys.extend((0..2000).map(|i| format!("key:{i}").into_bytes()));
    // Bytes from a fixed linear congruential sequence: keys of 0..31 bytes,
    // braces among them.
    let mut state: u32 = 12345;
    for length in 0..500 {
        let key = (0..length % 32)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                [b'{', b'}', b'a', (state >> 16) as u8][(state >> 8) as usize % 4]
            })
            .collect();
        keys.push(key);
    }

    let commands: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .map(|key| vec![b"CLUSTER".to_vec(), b"KEYSLOT".to_vec(), key.clone()])
        .collect();
    let replies = pipeline(cluster.masters()[0], &commands).await;
    for (key, reply) in keys.iter().zip(replies) {
        assert_eq!(
            reply,
            format!(":{}\r\n", RedisCluster::slot_of(key)),
            "CLUSTER KEYSLOT {:?}",
            String::from_utf8_lossy(key)
        );
    }
}

#[tokio::test]
async fn reshard_moves_100_slots_with_their_keys() {
    let cluster = RedisCluster::start(3, 0);
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let from_slots = cluster.slots_of(from);
    let to_before = slot_count(&cluster.slots_of(to));
    // One key in every slot the source serves.
    let keys: BTreeMap<String, String> = key_per_slot(&from_slots)
        .into_values()
        .map(|key| {
            let value = format!("value of {key}");
            (key, value)
        })
        .collect();
    let writes: Vec<_> = keys.iter().map(|(key, value)| command(&["SET", key, value])).collect();
    assert!(pipeline(from, &writes).await.iter().all(|reply| reply == "+OK\r\n"));

    cluster.reshard(from, to, 100);

    assert_eq!(slot_count(&cluster.slots_of(from)), slot_count(&from_slots) - 100);
    assert_eq!(slot_count(&cluster.slots_of(to)), to_before + 100);
    let moved: Vec<&String> = keys
        .keys()
        .filter(|key| cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes())) == to)
        .collect();
    assert_eq!(moved.len(), 100, "one key per moved slot");
    assert_all_readable(&cluster, &keys).await;
    for key in moved.iter().take(5) {
        assert_eq!(cluster.direct(&["GET", key]), keys[*key]);
    }
}

#[tokio::test]
async fn half_done_migration_answers_ask_for_a_key_the_source_lacks() {
    let cluster = RedisCluster::start(3, 0);
    let slot = RedisCluster::slot_of(b"{moving}");
    let from = cluster.owner_of_slot(slot);
    let to = *cluster.masters().iter().find(|&&port| port != from).unwrap();
    assert_eq!(cluster.direct(&["SET", "{moving}:kept", "here"]), "OK");

    cluster.begin_migration(slot, from, to);
    let mut source = RawClient::connect(addr(from)).await;
    let mut target = RawClient::connect(addr(to)).await;
    // The source serves the keys it still has, and sends the client to the
    // target for the others; the target serves them only after ASKING.
    assert_eq!(source.cmd("GET {moving}:kept").await, "$4\r\nhere\r\n");
    assert_eq!(
        source.cmd("GET {moving}:new").await,
        format!("-ASK {slot} 127.0.0.1:{to}\r\n")
    );
    assert_eq!(
        target.cmd("GET {moving}:new").await,
        format!("-MOVED {slot} 127.0.0.1:{from}\r\n")
    );
    assert_eq!(target.cmd("ASKING").await, "+OK\r\n");
    assert_eq!(target.cmd("GET {moving}:new").await, "$-1\r\n");
    assert_eq!(
        cluster.owner_of_slot(slot),
        from,
        "the slot is the source's until assigned"
    );

    cluster.finish_migration(slot, from, to);
    assert_eq!(cluster.owner_of_slot(slot), to);
    assert_eq!(target.cmd("GET {moving}:kept").await, "$4\r\nhere\r\n");
    assert_eq!(
        source.cmd("GET {moving}:kept").await,
        format!("-MOVED {slot} 127.0.0.1:{to}\r\n")
    );
    assert_eq!(cluster.direct(&["GET", "{moving}:kept"]), "here");
}

#[tokio::test]
async fn migrate_slot_moves_every_key_of_the_slot_in_batches() {
    let cluster = RedisCluster::start(3, 0);
    // 250 keys in one slot: three batches of MIGRATE.
    let keys: BTreeMap<String, String> = (0..250).map(|i| (format!("{{batch}}:{i}"), format!("v{i}"))).collect();
    let slot = RedisCluster::slot_of(b"{batch}");
    let from = cluster.owner_of_slot(slot);
    let to = *cluster.masters().iter().find(|&&port| port != from).unwrap();
    let writes: Vec<_> = keys.iter().map(|(key, value)| command(&["SET", key, value])).collect();
    assert!(pipeline(from, &writes).await.iter().all(|reply| reply == "+OK\r\n"));

    cluster.migrate_slot(slot, from, to);

    assert_eq!(cluster.owner_of_slot(slot), to);
    let slot = slot.to_string();
    assert_eq!(cluster.cli(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot]), "0");
    assert_eq!(cluster.cli(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot]), "250");
    assert_all_readable(&cluster, &keys).await;
}

#[tokio::test]
async fn failover_promotes_a_replica_with_every_acknowledged_write() {
    let cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.ports().len(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for &master in &masters {
        assert_eq!(cluster.replicas_of(master).len(), 1, "{master}'s replicas");
    }
    let keys: BTreeMap<String, String> = (0..200).map(|i| (format!("failover:{i}"), format!("v{i}"))).collect();
    write_acknowledged(&cluster, &keys).await;

    let old = masters[0];
    let replica = cluster.replicas_of(old)[0];
    let new = cluster.failover(old);

    assert_eq!(new, replica);
    let now = cluster.masters();
    assert!(now.contains(&new) && !now.contains(&old), "masters now {now:?}");
    assert_eq!(cluster.replicas_of(new), vec![old]);
    assert_all_readable(&cluster, &keys).await;
    let (start, _) = cluster.slots_of(new)[0];
    assert_eq!(cluster.owner_of_slot(start), new);
}

#[tokio::test]
async fn killed_master_is_replaced_by_its_replica_and_rejoins_as_one() {
    let mut cluster = RedisCluster::start(3, 1);
    let keys: BTreeMap<String, String> = (0..200).map(|i| (format!("crash:{i}"), format!("v{i}"))).collect();
    write_acknowledged(&cluster, &keys).await;
    let old = cluster.masters()[0];
    let replica = cluster.replicas_of(old)[0];

    cluster.kill(old);
    assert!(!cluster.is_running(old));
    // The replica takes over once the others have given up on its master
    // (cluster-node-timeout).
    cluster.wait_ok();
    let now = cluster.masters();
    assert!(now.contains(&replica) && !now.contains(&old), "masters now {now:?}");
    assert_all_readable(&cluster, &keys).await;

    cluster.restart(old);
    cluster.wait_ok();
    assert_eq!(cluster.replicas_of(replica), vec![old]);
    // It has caught up with its new master: it serves the old keys to a
    // client that reads from replicas.
    let mut reader = RawClient::connect(addr(old)).await;
    assert_eq!(reader.cmd("READONLY").await, "+OK\r\n");
    for (key, value) in keys
        .iter()
        .filter(|(key, _)| cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes())) == replica)
    {
        assert_eq!(
            reader.cmd(&format!("GET {key}")).await,
            format!("${}\r\n{value}\r\n", value.len())
        );
    }
}
