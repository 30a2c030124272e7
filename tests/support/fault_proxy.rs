//! A fault-injecting TCP proxy between the bridge and a fake model: every
//! connection it accepts is forwarded to the target, and the test changes a
//! connection's fault at run time (added delay, a stall, a reset, a close in
//! the middle of a frame, slow reads that push back on the bridge).
//!
//! Connections are numbered in the order they were accepted, so a test that
//! opens its calls one after another knows which model socket is whose.
//! Everything held in flight is bounded: one read buffer and at most
//! [`MAX_CHUNKS_IN_FLIGHT`] chunks per direction.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// One read from a socket at most.
const CHUNK: usize = 16 << 10;
/// Chunks read but not yet written (a delay line), per direction.
pub const MAX_CHUNKS_IN_FLIGHT: usize = 64;

/// What one connection suffers; it applies to both directions unless said.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Forward as fast as the sockets allow.
    None,
    /// Every chunk is written this much after it was read (pipelined: the
    /// throughput is unchanged, the latency grows).
    Delay(Duration),
    /// Nothing is read or written either way; both sockets stay open, as
    /// when a NAT silently forgets a connection.
    Stall,
    /// Both sockets are closed with an RST (`SO_LINGER` 0).
    Reset,
    /// Both sockets are closed cleanly (FIN) once this many bytes (both
    /// directions together) have gone through; 0 or fewer than already
    /// forwarded: now. Set it mid-frame and the peer sees a torn frame.
    CloseMidStream { after_bytes: u64 },
    /// Bytes from the bridge are read at this rate only, so the bridge's
    /// writes back up (kernel buffers fill, then its socket stops taking
    /// data); the model's side is forwarded normally.
    SlowReads { bytes_per_sec: u32 },
}

/// Counters of one connection.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Bridge → model, written to the model's side.
    pub bytes_up: AtomicU64,
    /// Model → bridge, written to the bridge's side.
    pub bytes_down: AtomicU64,
    /// Bytes read from either side (what `CloseMidStream` counts).
    read_total: AtomicU64,
}

struct Conn {
    fault: watch::Sender<Fault>,
    stats: Arc<ConnStats>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<Conn>>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dir {
    /// From the bridge to the model.
    Up,
    /// From the model to the bridge.
    Down,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let (acc, list) = (accepted.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((bridge, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (fault, watch_rx) = watch::channel(Fault::None);
                let stats = Arc::new(ConnStats::default());
                list.lock().unwrap().push(Conn {
                    fault,
                    stats: stats.clone(),
                });
                tokio::spawn(connection(bridge, target, watch_rx, stats));
            }
        });
        FaultProxy {
            addr,
            accepted,
            conns,
        }
    }

    /// A `ws://` URL through the proxy, with `path_and_query` of the target.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Sets the fault of the `n`th connection (0-based, in accept order).
    pub fn set(&self, n: usize, fault: Fault) {
        let conns = self.conns.lock().unwrap();
        let conn = conns
            .get(n)
            .unwrap_or_else(|| panic!("no connection {n} yet"));
        conn.fault.send_replace(fault);
    }

    /// The `n`th connection's counters.
    pub fn stats(&self, n: usize) -> Arc<ConnStats> {
        self.conns.lock().unwrap()[n].stats.clone()
    }

    /// Bytes read from both sides of the `n`th connection so far.
    pub fn bytes_through(&self, n: usize) -> u64 {
        self.stats(n).read_total.load(Ordering::SeqCst)
    }
}

async fn connection(
    bridge: TcpStream,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    stats: Arc<ConnStats>,
) {
    let Ok(model) = TcpStream::connect(target).await else {
        return;
    };
    let _ = bridge.set_nodelay(true);
    let _ = model.set_nodelay(true);
    let (bridge_rx, bridge_tx) = bridge.into_split();
    let (model_rx, model_tx) = model.into_split();
    let up = pump(bridge_rx, model_tx, fault.clone(), Dir::Up, stats.clone());
    let down = pump(model_rx, bridge_tx, fault, Dir::Down, stats);
    // Each direction owns one half of each socket: both sockets close once
    // both directions are done (with an RST if `Reset` set the linger).
    tokio::join!(up, down);
}

/// One direction of one connection, obeying the current fault.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    dir: Dir,
    stats: Arc<ConnStats>,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut line: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    loop {
        let current = fault.borrow_and_update().clone();
        match current {
            Fault::Stall => {
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Reset => {
                let _ = to.as_ref().set_zero_linger();
                let _ = from.as_ref().set_zero_linger();
                return;
            }
            Fault::CloseMidStream { after_bytes }
                if stats.read_total.load(Ordering::SeqCst) >= after_bytes =>
            {
                for (_, chunk) in line.drain(..) {
                    if to.write_all(&chunk).await.is_err() {
                        return;
                    }
                    count(&stats, dir, chunk.len());
                }
                let _ = to.shutdown().await;
                // Whatever still comes is read and dropped (so that the
                // close stays a FIN, not an RST for unread data), briefly.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
            _ => {}
        }
        let delay = match current {
            Fault::Delay(d) => d,
            _ => Duration::ZERO,
        };
        let slow = match current {
            Fault::SlowReads { bytes_per_sec } if dir == Dir::Up => Some(bytes_per_sec.max(1)),
            _ => None,
        };
        let cap = match (&current, slow) {
            // A tenth of a second's worth per read.
            (_, Some(rate)) => (rate as usize / 10).clamp(1, CHUNK),
            (Fault::CloseMidStream { after_bytes }, _) => {
                let left = after_bytes.saturating_sub(stats.read_total.load(Ordering::SeqCst));
                usize::try_from(left).unwrap_or(CHUNK).clamp(1, CHUNK)
            }
            _ => CHUNK,
        };
        let due = line.front().map(|(at, _)| *at);
        tokio::select! {
            biased;
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep_until_opt(due) => {
                if let Some((_, chunk)) = line.pop_front() {
                    if to.write_all(&chunk).await.is_err() {
                        return;
                    }
                    count(&stats, dir, chunk.len());
                }
            }
            read = from.read(&mut buf[..cap]), if line.len() < MAX_CHUNKS_IN_FLIGHT => {
                let n = match read {
                    Ok(n) if n > 0 => n,
                    // The peer closed (or failed): pass the close on once
                    // what is in flight has gone.
                    _ => {
                        for (_, chunk) in line.drain(..) {
                            if to.write_all(&chunk).await.is_err() {
                                return;
                            }
                            count(&stats, dir, chunk.len());
                        }
                        let _ = to.shutdown().await;
                        return;
                    }
                };
                stats.read_total.fetch_add(n as u64, Ordering::SeqCst);
                line.push_back((Instant::now() + delay, buf[..n].to_vec()));
                if let Some(rate) = slow {
                    let secs = n as f64 / f64::from(rate);
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
            }
        }
    }
}

fn count(stats: &ConnStats, dir: Dir, n: usize) {
    let counter = match dir {
        Dir::Up => &stats.bytes_up,
        Dir::Down => &stats.bytes_down,
    };
    counter.fetch_add(n as u64, Ordering::SeqCst);
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The resident memory of this process (the test, the server, the fakes),
/// from `/proc/self/status`; None where there is no procfs.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
