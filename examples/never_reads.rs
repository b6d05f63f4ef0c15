//! Clients that ask for replies and never read them, for the benchmark's
//! slow-reader section (`scripts/bench.sh`, SECTIONS=slowreaders): each
//! connection has a small receive buffer and sends `GETRANGE <key> 0 -1`
//! pipelines until the proxy cuts it off (`limits.max_output_bytes`), then
//! waits `pause_ms` (default 1000; 0 = a reconnect storm) and connects
//! again, until the process is killed.
//!
//! Usage: never_reads <host:port> <key> [connections] [pause_ms]
//!
//! Prints, every second, how many times its connections were cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: never_reads <host:port> <key> [connections] [pause_ms]";
    let address: std::net::SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let key = args.next().expect(usage);
    let connections: usize = args.next().map_or(4, |n| n.parse().expect(usage));
    let pause = Duration::from_millis(args.next().map_or(1000, |n| n.parse().expect(usage)));
    let mut command = Vec::new();
    for _ in 0..100 {
        let key_header = format!("*4\r\n$8\r\nGETRANGE\r\n${}\r\n", key.len());
        command.extend_from_slice(key_header.as_bytes());
        command.extend_from_slice(key.as_bytes());
        command.extend_from_slice(b"\r\n$1\r\n0\r\n$2\r\n-1\r\n");
    }
    let command = Arc::new(command);
    let cut_off = Arc::new(AtomicU64::new(0));
    for _ in 0..connections {
        let (command, cut_off) = (command.clone(), cut_off.clone());
        tokio::spawn(async move {
            loop {
                let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
                let _ = socket.set_recv_buffer_size(4096);
                let Ok(mut stream) = socket.connect(address).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // Writes go on until the proxy closes the connection (or
                // stops reading it, which a timeout notices).
                while let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&command)).await {}
                cut_off.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
            }
        });
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("cut off {}", cut_off.load(Ordering::Relaxed));
    }
}
