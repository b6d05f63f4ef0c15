//! A real Redis Cluster on loopback for tests of a cluster-aware proxy:
//! `redis-server` processes on free ports joined by `redis-cli --cluster
//! create`, and the things that happen to a cluster while it serves,
//! done to it on demand: resharding, moving one slot by hand (or stopping
//! half-way, so a client meets `-ASK`), failover, killing and restarting a
//! node.
//!
//! Every operation returns once the cluster has settled
//! ([`RedisCluster::wait_ok`]): polled with a deadline, never after a fixed
//! sleep. The harness reads the cluster's state with the `redis` crate
//! (binary-safe, and cheap enough to poll); [`RedisCluster::cli`] and
//! [`RedisCluster::direct`] run `redis-cli`, as a person at a shell would.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{INSTALL_HINT, free_port, poll_until};

/// How long the cluster may take to settle after a change. Gossip, a
/// replica's first sync and an election take seconds, where
/// [`super::DEADLINE`] is sized for a single server.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);

/// Redis Cluster's slot count: a key's slot is its CRC16 modulo this.
pub const SLOTS: u16 = 16384;

/// Short, so that a failover after a node is killed takes seconds (a node
/// is suspected after this long without an answer).
const NODE_TIMEOUT_MS: &str = "2000";

/// Keys moved per `MIGRATE` by [`RedisCluster::finish_migration`].
const MIGRATE_BATCH: usize = 100;

/// Redis abandons a manual failover after 5 s (`CLUSTER_MF_TIMEOUT`);
/// [`RedisCluster::failover`] asks again after this long.
const FAILOVER_RETRY: Duration = Duration::from_secs(6);

const CLI_INSTALL_HINT: &str = "redis-cli is not installed: run scripts/test.sh (it installs it), \
     or `apt-get install -y redis-tools`";

/// A Redis Cluster of `redis-server` processes, each with its own port,
/// cluster bus port and temporary directory. Every process is killed and
/// every directory removed when it is dropped.
///
/// Nodes are named by their client port. Who is master of what is always
/// asked of the cluster, so it is right after a failover or a reshard.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts `masters` masters (at least 3, as `redis-cli --cluster
    /// create` requires) with `replicas_per_master` replicas each, and
    /// returns once every node reports `cluster_state:ok`, all agree on
    /// who serves which slots, and every replica's link to its master is up.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters (redis-cli --cluster create refuses fewer), asked for {masters}"
        );
        let mut taken = BTreeSet::new();
        let mut nodes: Vec<Node> = (0..masters * (1 + replicas_per_master))
            .map(|_| Node::new(&mut taken))
            .collect();
        // All spawned first, then waited for: they start side by side.
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_until_serving_or_move(&mut taken);
        }
        let cluster = RedisCluster { nodes };
        let addresses: Vec<String> = cluster.ports().iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let replicas = replicas_per_master.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        if let Err(output) = redis_cli(&args) {
            panic!("redis-cli --cluster create failed:\n{}", last_lines(&output, 20));
        }
        cluster.wait_ok();
        cluster
    }

    /// `redis-cluster://127.0.0.1:p1,127.0.0.1:p2,...`: the current
    /// masters, as the proxy's `upstream`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.masters().iter().map(|port| format!("127.0.0.1:{port}")).collect();
        format!("redis-cluster://{}", seeds.join(","))
    }

    /// Every node's port, running or not, in the order they were started.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The masters the cluster has now (not failing), by port.
    pub fn masters(&self) -> Vec<u16> {
        self.view()
            .nodes
            .iter()
            .filter(|node| node.is_master() && !node.is_failing())
            .map(|node| node.port)
            .collect()
    }

    /// The replicas (not failing) of the master on `master_port`, by port.
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let view = self.view();
        let master = view.node(master_port).id.clone();
        view.nodes
            .iter()
            .filter(|node| node.is_replica() && node.master.as_ref() == Some(&master) && !node.is_failing())
            .map(|node| node.port)
            .collect()
    }

    /// The node's cluster id (40 hex digits), as the others know it: also
    /// for a node that is not running.
    pub fn node_id(&self, port: u16) -> String {
        self.view().node(port).id.clone()
    }

    /// The slot ranges (inclusive) the master on `master_port` serves.
    pub fn slots_of(&self, master_port: u16) -> Vec<(u16, u16)> {
        self.view().node(master_port).slots.clone()
    }

    /// `redis-cli -p <port> <args...>`: its output, trimmed. Panics with
    /// redis-cli's message when it fails, an error reply included (`-e`).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.try_cli(port, args)
            .unwrap_or_else(|error| panic!("redis-cli -p {port} {}: {error}", args.join(" ")))
    }

    /// Like [`RedisCluster::cli`], with an error reply (`MOVED 1 ...`,
    /// `ERR ...`) or a failure to connect as `Err`.
    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let port = port.to_string();
        let mut all = vec!["-e", "-p", &port];
        all.extend_from_slice(args);
        redis_cli(&all)
    }

    /// What the cluster itself answers: `redis-cli -c` (following `-MOVED`
    /// and `-ASK`) against a master. An error reply is returned as its
    /// text, as redis-cli prints it (`WRONGTYPE ...`), since it is an answer
    /// to compare with the proxy's; panics only if redis-cli fails.
    pub fn direct(&self, args: &[&str]) -> String {
        let port = self.masters().first().expect("the cluster has a master").to_string();
        let mut all = vec!["-c", "-p", &port];
        all.extend_from_slice(args);
        redis_cli(&all).unwrap_or_else(|error| panic!("redis-cli -c {}: {error}", args.join(" ")))
    }

    /// The slot Redis Cluster puts `key` in: the proxy's own
    /// `key_slot` (CRC16-XMODEM of the key or its hash tag, mod 16384), so
    /// `tests/cluster_harness.rs` checks it against `CLUSTER KEYSLOT`.
    pub fn slot_of(key: &[u8]) -> u16 {
        auracache::upstream::cluster::key_slot(key)
    }

    /// The port of the master serving `slot` (even one that is failing:
    /// until a replica takes over, the slot is still its).
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        self.view().owner_of(slot)
    }

    /// `redis-cli --cluster reshard`: moves `slots` slots, keys included,
    /// from one master to another, and waits until every node agrees.
    pub fn reshard(&self, from_port: u16, to_port: u16, slots: usize) {
        // redis-cli refuses a cluster whose nodes disagree.
        let before = self.settled_view().slot_count(to_port);
        let (from, to) = (self.node_id(from_port), self.node_id(to_port));
        let (seed, slots_arg) = (format!("127.0.0.1:{from_port}"), slots.to_string());
        let args = [
            "--cluster",
            "reshard",
            &seed,
            "--cluster-from",
            &from,
            "--cluster-to",
            &to,
            "--cluster-slots",
            &slots_arg,
            "--cluster-yes",
        ];
        match redis_cli(&args) {
            Ok(output) if !output.contains("[ERR]") => {}
            Ok(output) | Err(output) => panic!("redis-cli --cluster reshard failed:\n{}", last_lines(&output, 20)),
        }
        let expected = before + slots;
        poll_cluster(&format!("{to_port} to serve {expected} slots after resharding"), || {
            let view = self.settled()?;
            let serves = view.slot_count(to_port);
            if serves == expected {
                Ok(())
            } else {
                Err(format!("{to_port} serves {serves} slots"))
            }
        });
    }

    /// Moves one slot by hand, as an operator (or redis-cli) does:
    /// [`RedisCluster::begin_migration`], then
    /// [`RedisCluster::finish_migration`].
    pub fn migrate_slot(&self, slot: u16, from_port: u16, to_port: u16) {
        self.begin_migration(slot, from_port, to_port);
        self.finish_migration(slot, from_port, to_port);
    }

    /// The first half of moving a slot: the target is IMPORTING it and the
    /// source MIGRATING it, no key moved yet. From now on the source
    /// answers `-ASK` for a key of the slot it lacks, and the target serves
    /// the slot only to a client that sent `ASKING`.
    pub fn begin_migration(&self, slot: u16, from_port: u16, to_port: u16) {
        let (from, to) = (self.node_id(from_port), self.node_id(to_port));
        self.setslot(to_port, slot, "IMPORTING", &from);
        self.setslot(from_port, slot, "MIGRATING", &to);
    }

    /// The second half: `MIGRATE`s the slot's keys from the source in
    /// batches (`CLUSTER GETKEYSINSLOT`), then assigns the slot to the
    /// target on every master and waits until every node agrees. The
    /// target is told first, as Redis's docs advise, so that the source
    /// never sends a client to a target that does not know the slot is its.
    pub fn finish_migration(&self, slot: u16, from_port: u16, to_port: u16) {
        loop {
            let keys: Vec<Vec<u8>> = query(
                from_port,
                redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(MIGRATE_BATCH),
            )
            .unwrap_or_else(|error| panic!("{error}"));
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS");
            for key in &keys {
                migrate.arg(key.as_slice());
            }
            let reply: String = query(from_port, &migrate).unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(
                reply,
                "OK",
                "MIGRATE of {} keys of slot {slot} to {to_port}",
                keys.len()
            );
        }
        let to = self.node_id(to_port);
        let others = self
            .masters()
            .into_iter()
            .filter(|&port| port != to_port && port != from_port);
        for port in [to_port, from_port].into_iter().chain(others) {
            self.setslot(port, slot, "NODE", &to);
        }
        poll_cluster(&format!("every node to see slot {slot} on {to_port}"), || {
            let owner = self.settled()?.owner_of(slot);
            if owner == to_port {
                Ok(())
            } else {
                Err(format!("slot {slot} is still on {owner}"))
            }
        });
    }

    /// A planned failover: `CLUSTER FAILOVER` on a replica of the master
    /// (`FORCE` if the master is not running), which waits for the replica
    /// to have every write the master acknowledged. Returns the replica's
    /// port once it is master, the old master (if running) its replica, and
    /// the cluster settled.
    pub fn failover(&self, master_port: u16) -> u16 {
        let replica = self
            .replicas_of(master_port)
            .into_iter()
            .find(|&port| self.is_running(port))
            .unwrap_or_else(|| panic!("{master_port} has no running replica to fail over to"));
        let mut command = vec!["CLUSTER", "FAILOVER"];
        if !self.is_running(master_port) {
            command.push("FORCE");
        }
        let mut asked: Option<Instant> = None;
        poll_cluster(&format!("{replica} to take over from {master_port}"), || {
            let promoted = View::of(replica)?.node(replica).is_master();
            if !promoted {
                if asked.is_none_or(|at| at.elapsed() > FAILOVER_RETRY) {
                    self.cli(replica, &command);
                    asked = Some(Instant::now());
                }
                return Err(format!("{replica} is still a replica"));
            }
            let view = self.settled()?;
            let old = view.node(master_port);
            if self.is_running(master_port) && old.master.as_deref() != Some(view.node(replica).id.as_str()) {
                return Err(format!("{master_port} is not yet a replica of {replica}"));
            }
            Ok(())
        });
        replica
    }

    /// SIGKILLs the node (no chance to save or say goodbye) and waits
    /// until its port refuses connections.
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts the node again (killing it first if it runs) on the same
    /// ports, directory and configuration (its `nodes.conf` and append-only
    /// file), and returns once it answers PING. The cluster may not have
    /// settled yet: [`RedisCluster::wait_ok`] waits for that.
    pub fn restart(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.kill();
        node.spawn();
        if let Err(log) = node.wait_until_serving() {
            panic!("redis-server on {port} exited on restart; its log ends:\n{log}");
        }
    }

    /// Whether the node's process runs (it was not killed).
    pub fn is_running(&self, port: u16) -> bool {
        self.node(port).child.is_some()
    }

    /// Waits until every running node reports `cluster_state:ok`, knows
    /// every node, agrees with the others on who is master of which slots
    /// and who replicates whom, sees every killed node as failed and no
    /// running one as failing, and every running replica's link to its
    /// master is up.
    pub fn wait_ok(&self) {
        self.settled_view();
    }

    fn settled_view(&self) -> View {
        poll_cluster("the cluster to settle", || self.settled())
    }

    /// The agreed view if the cluster has settled (see
    /// [`RedisCluster::wait_ok`]), else what it still lacks.
    fn settled(&self) -> Result<View, String> {
        let mut agreed: Option<(u16, View)> = None;
        for port in self.running_ports() {
            let info: String = query(port, redis::cmd("CLUSTER").arg("INFO"))?;
            if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
                return Err(format!("{port} does not report cluster_state:ok"));
            }
            let view = View::of(port)?;
            if view.nodes.len() != self.nodes.len() {
                return Err(format!(
                    "{port} knows {} of the {} nodes",
                    view.nodes.len(),
                    self.nodes.len()
                ));
            }
            for node in &view.nodes {
                if node.has_flag("handshake") || node.has_flag("noaddr") {
                    return Err(format!("{port} sees {} as {}", node.port, node.flags.join(",")));
                }
                match (self.is_running(node.port), node.is_failing()) {
                    (true, true) => return Err(format!("{port} sees running {} as failing", node.port)),
                    (false, _) if !node.has_flag("fail") => {
                        return Err(format!("{port} does not yet see killed {} as failed", node.port));
                    }
                    _ => {}
                }
            }
            if view.node(port).is_replica() {
                let replication: String = query(port, redis::cmd("INFO").arg("replication"))?;
                if !replication.lines().any(|line| line.trim() == "master_link_status:up") {
                    return Err(format!("replica {port}'s link to its master is not up"));
                }
            }
            match &agreed {
                None => agreed = Some((port, view)),
                Some((first, seen)) if *seen != view => {
                    return Err(format!("{port} and {first} disagree: {}", view.difference(seen)));
                }
                Some(_) => {}
            }
        }
        agreed
            .map(|(_, view)| view)
            .ok_or_else(|| "no node is running".to_string())
    }

    /// The cluster as the first running node that answers sees it.
    fn view(&self) -> View {
        let mut errors = Vec::new();
        for port in self.running_ports() {
            match View::of(port) {
                Ok(view) => return view,
                Err(error) => errors.push(error),
            }
        }
        panic!("no running node answers CLUSTER NODES: {errors:?}");
    }

    fn setslot(&self, port: u16, slot: u16, subcommand: &str, id: &str) {
        let reply: String = query(
            port,
            redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(subcommand).arg(id),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(reply, "OK", "CLUSTER SETSLOT {slot} {subcommand} {id} on {port}");
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster is on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster is on port {port}"))
    }
}

/// One `redis-server --cluster-enabled yes`; killed when dropped (its
/// directory goes with it).
struct Node {
    port: u16,
    /// The cluster bus's port, chosen like the client port (`cluster-port`)
    /// rather than port + 10000, which may be taken or past 65535.
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    fn new(taken: &mut BTreeSet<u16>) -> Node {
        Node {
            port: fresh_port(taken),
            bus_port: fresh_port(taken),
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let (port, bus_port) = (self.port.to_string(), self.bus_port.to_string());
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--cluster-port", &bus_port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            // Every acknowledged write is on disk: a killed node comes back with it.
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            // A replica's first sync starts at once, not after Redis's 5 s
            // wait for more replicas to share it.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(error) => panic!("cannot start redis-server: {error}"),
        };
        self.child = Some(child);
    }

    /// Waits until the node answers PING; Err with its log's end if the
    /// process exits first.
    fn wait_until_serving(&mut self) -> Result<(), String> {
        let port = self.port;
        let child = self.child.as_mut().expect("spawned");
        let exited = poll_cluster(&format!("redis-server on {port} to answer PING"), || {
            if child.try_wait().ok().flatten().is_some() {
                return Ok(true);
            }
            match query::<String>(port, &redis::cmd("PING")) {
                // Still running after answering: the answer was its own,
                // not that of another process that took the port.
                Ok(pong) if pong == "PONG" && child.try_wait().ok().flatten().is_none() => Ok(false),
                Ok(other) => Err(format!("PING answered {other:?}")),
                Err(error) => Err(error),
            }
        });
        if !exited {
            return Ok(());
        }
        self.child = None;
        Err(last_lines(
            &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
            10,
        ))
    }

    /// [`Node::wait_until_serving`], moving to other ports if someone took
    /// one of them between `free_port` and the bind (only before the
    /// cluster is created: after that the others know the node's ports).
    fn wait_until_serving_or_move(&mut self, taken: &mut BTreeSet<u16>) {
        for _ in 0..3 {
            match self.wait_until_serving() {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") => {
                    (self.port, self.bus_port) = (fresh_port(taken), fresh_port(taken));
                    self.spawn();
                }
                Err(log) => panic!("redis-server on {} exited; its log ends:\n{log}", self.port),
            }
        }
        panic!("redis-server found no free port in 3 tries (last {})", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let port = self.port;
        poll_until(&format!("the node on {port} to stop"), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One node's picture of the cluster, from its `CLUSTER NODES`, keeping
/// only what every node must agree on: two settled nodes' views are equal.
#[derive(Debug, PartialEq, Eq)]
struct View {
    /// By port.
    nodes: Vec<ViewNode>,
}

#[derive(Debug, PartialEq, Eq)]
struct ViewNode {
    id: String,
    port: u16,
    /// `master` or `slave`, `fail?` (suspected by this viewer), `fail`
    /// (agreed), `handshake`, ...; without `myself`, which differs by viewer.
    flags: Vec<String>,
    /// A replica's master's id.
    master: Option<String>,
    /// Inclusive ranges, without the viewer's own `[slot->-id]` migration
    /// marks (only the two nodes moving a slot have them).
    slots: Vec<(u16, u16)>,
}

impl View {
    fn of(port: u16) -> Result<View, String> {
        let text: String = query(port, redis::cmd("CLUSTER").arg("NODES"))?;
        View::parse(&text).map_err(|error| format!("CLUSTER NODES of {port}: {error}"))
    }

    /// Lines of `<id> <ip:port@bus[,hostname]> <flags> <master|-> <ping>
    /// <pong> <epoch> <link> <slot>...`.
    fn parse(text: &str) -> Result<View, String> {
        let mut nodes = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, address, flags, master, _ping, _pong, _epoch, _link, slots @ ..] = fields.as_slice() else {
                return Err(format!("unexpected line {line:?}"));
            };
            let port = address
                .split(['@', ','])
                .next()
                .and_then(|host_port| host_port.rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .ok_or_else(|| format!("no port in {line:?}"))?;
            let slots = slots
                .iter()
                .filter(|range| !range.starts_with('['))
                .map(|range| {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    Ok((parse_slot(start, line)?, parse_slot(end, line)?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            nodes.push(ViewNode {
                id: id.to_string(),
                port,
                flags: flags
                    .split(',')
                    .filter(|flag| *flag != "myself")
                    .map(str::to_string)
                    .collect(),
                master: (*master != "-").then(|| master.to_string()),
                slots,
            });
        }
        nodes.sort_by_key(|node| node.port);
        Ok(View { nodes })
    }

    fn find(&self, port: u16) -> Option<&ViewNode> {
        self.nodes.iter().find(|node| node.port == port)
    }

    fn node(&self, port: u16) -> &ViewNode {
        self.find(port)
            .unwrap_or_else(|| panic!("the cluster does not know a node on port {port}"))
    }

    fn owner_of(&self, slot: u16) -> u16 {
        self.nodes
            .iter()
            .find(|node| node.is_master() && node.serves(slot))
            .map(|node| node.port)
            .unwrap_or_else(|| panic!("slot {slot} is served by no master"))
    }

    fn slot_count(&self, port: u16) -> usize {
        let node = self.node(port);
        node.slots
            .iter()
            .map(|&(start, end)| usize::from(end - start) + 1)
            .sum()
    }

    /// The nodes this view and `other` see differently, for a message.
    fn difference(&self, other: &View) -> String {
        let ports: BTreeSet<u16> = self.nodes.iter().chain(&other.nodes).map(|node| node.port).collect();
        ports
            .into_iter()
            .filter(|&port| self.find(port) != other.find(port))
            .map(|port| format!("{port}: {:?} versus {:?}", self.find(port), other.find(port)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl ViewNode {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|own| own == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    fn is_failing(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?")
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(start, end)| (start..=end).contains(&slot))
    }
}

fn parse_slot(text: &str, line: &str) -> Result<u16, String> {
    text.parse().map_err(|_| format!("bad slot {text:?} in {line:?}"))
}

/// One command on a fresh connection to the node on `port`; Err names the
/// node, the command and what went wrong.
fn query<T: redis::FromRedisValue>(port: u16, command: &redis::Cmd) -> Result<T, String> {
    let describe = |error: redis::RedisError| {
        let args: Vec<String> = command
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".to_string(),
            })
            .collect();
        format!("127.0.0.1:{port} {}: {error}", args.join(" "))
    };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(describe)?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .map_err(describe)?;
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(describe)?;
    command.query(&mut connection).map_err(describe)
}

/// Runs `redis-cli` with `args`: Ok(stdout, trimmed) if it exits 0, else
/// Err(what it printed).
fn redis_cli(args: &[&str]) -> Result<String, String> {
    let output = match Command::new("redis-cli").args(args).stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!("{CLI_INSTALL_HINT}"),
        Err(error) => panic!("cannot run redis-cli: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err([stdout, stderr]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A free port not in `taken` (which it joins).
fn fresh_port(taken: &mut BTreeSet<u16>) -> u16 {
    loop {
        let port = free_port();
        if taken.insert(port) {
            return port;
        }
    }
}

/// Like [`super::poll_until`], with [`CLUSTER_DEADLINE`] and the reason
/// `check` last gave for not being done in the failure message.
fn poll_cluster<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match check() {
            Ok(done) => return done,
            Err(last) => assert!(
                start.elapsed() < CLUSTER_DEADLINE,
                "timed out after {CLUSTER_DEADLINE:?} waiting for {what}; last: {last}"
            ),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
