//! L1 is never shared across upstream identities Redis keeps apart
//! (issue #10): databases (SELECT, the upstream URL's database, SWAPDB), and
//! ACL users a client authenticates as to Redis itself. A cached reply is
//! only ever served to a client that Redis would have given the same reply.

mod common;

use common::{Proxy, RawClient, RedisServer, l1_hits, read_until_cached};

async fn proxy_with_l1(url: &str) -> Proxy {
    let proxy = Proxy::start_with(url, common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 enabled").clone();
    common::poll_until("L1 to be ready (tracking on, command table known)", || l1.ready());
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_has_its_own_entries_even_across_swapdb() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SET k zero").await, "+OK\r\n");
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET k one").await, "+OK\r\n");
    let proxy = proxy_with_l1(&server.url()).await;
    let mut zero = proxy.raw().await;
    let mut one = proxy.raw().await;
    assert_eq!(one.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(read_until_cached(&proxy, &mut zero, "k").await, "$4\r\nzero\r\n");
    assert_eq!(read_until_cached(&proxy, &mut one, "k").await, "$3\r\none\r\n");
    // Both cached, each served to its own database only.
    let before = l1_hits(&proxy);
    assert_eq!(zero.cmd("GET k").await, "$4\r\nzero\r\n");
    assert_eq!(one.cmd("GET k").await, "$3\r\none\r\n");
    assert_eq!(l1_hits(&proxy), before + 2);
    // A proxy whose upstream URL names database 1 serves database 1.
    let in_one = proxy_with_l1(&format!("{}/1", server.url())).await;
    let mut client = in_one.raw().await;
    assert_eq!(read_until_cached(&in_one, &mut client, "k").await, "$3\r\none\r\n");
    drop(in_one);
    // SWAPDB through the proxy swaps what each database holds, and L1
    // follows. (Sent straight to Redis it is not seen: Redis sends no
    // invalidation for SWAPDB, to the proxy or any client-side cache, and
    // so neither is one sent through another proxy; see the README's
    // limitations.)
    let mut swapper = proxy.raw().await;
    assert_eq!(swapper.cmd("SWAPDB 0 1").await, "+OK\r\n");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while zero.cmd("GET k").await != "$3\r\none\r\n" || one.cmd("GET k").await != "$4\r\nzero\r\n" {
        assert!(std::time::Instant::now() < deadline, "L1 never saw the SWAPDB");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Redis gives different users different answers for the same key (an ACL
/// refuses it): a client that authenticated as a limited user gets Redis's
/// refusal, never the value L1 holds for the proxy's own identity, and
/// what it reads fills nothing another client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_its_own_acl_user_never_reads_what_l1_holds() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(
        direct.cmd("ACL SETUSER limited on >pw ~allowed:* +@all").await,
        "+OK\r\n"
    );
    assert_eq!(direct.cmd("SET secret:1 hunter2").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET allowed:1 fine").await, "+OK\r\n");
    let proxy = proxy_with_l1(&server.url()).await;
    let mut owner = proxy.raw().await;
    assert_eq!(
        read_until_cached(&proxy, &mut owner, "secret:1").await,
        "$7\r\nhunter2\r\n"
    );
    assert_eq!(
        read_until_cached(&proxy, &mut owner, "allowed:1").await,
        "$4\r\nfine\r\n"
    );

    let mut limited = proxy.raw().await;
    assert_eq!(limited.cmd("AUTH limited pw").await, "+OK\r\n");
    let mut resp3 = proxy.raw().await;
    assert!(resp3.cmd("HELLO 3 AUTH limited pw").await.starts_with('%'));
    let hits = l1_hits(&proxy);
    for client in [&mut limited, &mut resp3] {
        assert_eq!(client.cmd("ACL WHOAMI").await, "$7\r\nlimited\r\n");
        for _ in 0..3 {
            let refused = client.cmd("GET secret:1").await;
            assert!(
                refused.starts_with("-NOPERM"),
                "Redis's refusal, not L1's value: {refused}"
            );
            let refused = client.cmd("MGET allowed:1 secret:1").await;
            assert!(refused.starts_with("-NOPERM"), "{refused}");
            assert_eq!(client.cmd("GET allowed:1").await, "$4\r\nfine\r\n");
        }
    }
    assert_eq!(l1_hits(&proxy), hits, "L1 answered none of the limited user's reads");
    // The owner's entries are unchanged by them.
    assert_eq!(owner.cmd("GET secret:1").await, "$7\r\nhunter2\r\n");
    assert_eq!(l1_hits(&proxy), hits + 1);
    // A client that logs out of the limited user (RESET) is the proxy's
    // identity again, and L1 serves it again.
    assert_eq!(limited.cmd("RESET").await, "+RESET\r\n");
    assert_eq!(limited.cmd("ACL WHOAMI").await, "$7\r\ndefault\r\n");
    assert_eq!(limited.cmd("GET secret:1").await, "$7\r\nhunter2\r\n");
}
