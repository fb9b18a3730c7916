//! The host collective over TCP: rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank
//! connects and says who it is. A sum goes in buckets: each rank sends its bucket to rank 0,
//! which adds them in rank order (0, 1, ..., N-1: the same f32 result whatever the arrival
//! order) and sends the sum back to every rank. A rank that dies closes its socket, and the
//! others fail with an error naming it instead of waiting forever.
//!
//! Wire format (little-endian): hello = magic `b"BMDP"`, u32 rank, u32 world; then per bucket a
//! u64 element count followed by the f32 values.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{Collective, RankEnv};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"BMDP";
/// Elements per bucket (16 MiB of f32).
const BUCKET: usize = 1 << 22;
/// How long ranks wait for each other to start.
const RENDEZVOUS: Duration = Duration::from_secs(300);

struct Peer {
    rank: usize,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Peer {
    fn new(rank: usize, stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true).map_err(|e| lost(rank, e))?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| lost(rank, e))?);
        Ok(Self { rank, reader, writer: BufWriter::new(stream) })
    }

    fn send(&mut self, buf: &[f32]) -> Result<()> {
        let r = self.rank;
        self.writer.write_all(&(buf.len() as u64).to_le_bytes()).map_err(|e| lost(r, e))?;
        let mut bytes = Vec::with_capacity(buf.len() * 4);
        for v in buf {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.writer.write_all(&bytes).map_err(|e| lost(r, e))?;
        self.writer.flush().map_err(|e| lost(r, e))
    }

    /// Reads one bucket of `n` values and hands each to `f`.
    fn recv(&mut self, n: usize, mut f: impl FnMut(usize, f32)) -> Result<()> {
        let r = self.rank;
        let mut len = [0u8; 8];
        self.reader.read_exact(&mut len).map_err(|e| lost(r, e))?;
        let got = u64::from_le_bytes(len);
        if got != n as u64 {
            return Err(Error::Config(format!(
                "data-parallel exchange: rank {r} sent {got} values where {n} were expected (the ranks run different models or configs)"
            )));
        }
        let mut bytes = vec![0u8; n * 4];
        self.reader.read_exact(&mut bytes).map_err(|e| lost(r, e))?;
        for (i, c) in bytes.chunks_exact(4).enumerate() {
            f(i, f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        }
        Ok(())
    }
}

fn lost(rank: usize, e: std::io::Error) -> Error {
    Error::Config(format!("data-parallel exchange with rank {rank} failed ({e}): that rank stopped or is unreachable"))
}

/// The TCP group (see the module documentation).
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: every other rank, in rank order. Other ranks: rank 0 only.
    peers: Vec<Peer>,
}

impl TcpCollective {
    /// Joins the group described by `env`; returns once every rank is connected.
    pub fn connect(env: &RankEnv) -> Result<Self> {
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        if env.rank == 0 {
            Self::host(env, &addr)
        } else {
            Self::join(env, &addr)
        }
    }

    fn host(env: &RankEnv, addr: &str) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::Config(format!("rank 0 cannot listen on {addr} (MASTER_ADDR:MASTER_PORT): {e}")))?;
        listener.set_nonblocking(true).map_err(|e| Error::Config(format!("{addr}: {e}")))?;
        let mut slots: Vec<Option<Peer>> = (0..env.world).map(|_| None).collect();
        let deadline = Instant::now() + RENDEZVOUS;
        let mut joined = 1;
        while joined < env.world {
            match listener.accept() {
                Ok((stream, from)) => {
                    stream.set_nonblocking(false).map_err(|e| Error::Config(format!("{from}: {e}")))?;
                    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    let (rank, world) = read_hello(&stream)
                        .map_err(|e| Error::Config(format!("a connection from {from} is not a bimamba rank: {e}")))?;
                    stream.set_read_timeout(None).ok();
                    if world != env.world {
                        return Err(Error::Config(format!(
                            "rank {rank} (from {from}) was started with WORLD_SIZE {world}, rank 0 with {}",
                            env.world
                        )));
                    }
                    if rank == 0 || rank >= env.world || slots[rank].is_some() {
                        return Err(Error::Config(format!(
                            "a second rank {rank} joined from {from} (ranks must be 1..{} once each)",
                            env.world - 1
                        )));
                    }
                    slots[rank] = Some(Peer::new(rank, stream)?);
                    joined += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> =
                            (1..env.world).filter(|&r| slots[r].is_none()).map(|r| r.to_string()).collect();
                        return Err(Error::Config(format!(
                            "rank 0 waited {} s on {addr} for ranks {} to join",
                            RENDEZVOUS.as_secs(),
                            missing.join(", ")
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::Config(format!("rank 0 on {addr}: {e}"))),
            }
        }
        let peers = slots.into_iter().flatten().collect();
        Ok(Self { rank: 0, world: env.world, peers })
    }

    fn join(env: &RankEnv, addr: &str) -> Result<Self> {
        let deadline = Instant::now() + RENDEZVOUS;
        let stream = loop {
            let attempt = addr.to_socket_addrs().map_err(|e| {
                Error::Config(format!("rank {}: MASTER_ADDR:MASTER_PORT {addr} does not resolve: {e}", env.rank))
            })?;
            let mut last = None;
            let mut connected = None;
            for a in attempt {
                match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(s) = connected {
                break s;
            }
            if Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "rank {} could not reach rank 0 at {addr} within {} s: {}",
                    env.rank,
                    RENDEZVOUS.as_secs(),
                    last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut hello = Vec::with_capacity(12);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&(env.rank as u32).to_le_bytes());
        hello.extend_from_slice(&(env.world as u32).to_le_bytes());
        let mut peer = Peer::new(0, stream)?;
        peer.writer.write_all(&hello).map_err(|e| lost(0, e))?;
        peer.writer.flush().map_err(|e| lost(0, e))?;
        Ok(Self { rank: env.rank, world: env.world, peers: vec![peer] })
    }
}

fn read_hello(mut stream: &TcpStream) -> std::io::Result<(usize, usize)> {
    let mut b = [0u8; 12];
    stream.read_exact(&mut b)?;
    if &b[..4] != MAGIC {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "wrong greeting"));
    }
    let rank = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let world = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    Ok((rank, world))
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        for bucket in buf.chunks_mut(BUCKET) {
            if self.rank == 0 {
                // Rank order, so the rounding does not depend on who answered first.
                for peer in &mut self.peers {
                    peer.recv(bucket.len(), |i, v| bucket[i] += v)?;
                }
                for peer in &mut self.peers {
                    peer.send(bucket)?;
                }
            } else {
                let root = &mut self.peers[0];
                root.send(bucket)?;
                root.recv(bucket.len(), |i, v| bucket[i] = v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three ranks as threads: every rank gets the same sums, in rank order, over several buckets.
    #[test]
    fn three_ranks_get_identical_sums() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let n = BUCKET + 17;
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let env = RankEnv {
                        world: 3,
                        rank,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    let mut c = TcpCollective::connect(&env).expect("connect");
                    let mut buf: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.1 + rank as f32).collect();
                    c.all_reduce_sum(&mut buf).expect("sum");
                    let mut one = [rank as f32 + 0.5];
                    c.all_reduce_sum(&mut one).expect("sum");
                    (buf, one[0])
                })
            })
            .collect();
        let out: Vec<_> = handles.into_iter().map(|h| h.join().expect("rank thread")).collect();
        for (buf, one) in &out {
            assert_eq!(buf, &out[0].0);
            assert_eq!(*one, 4.5);
        }
        for (i, v) in out[0].0.iter().enumerate().step_by(9973) {
            let x = (i % 1000) as f32 * 0.1;
            assert_eq!(*v, ((x + 0.0) + (x + 1.0)) + (x + 2.0));
        }
    }

    /// A rank that leaves makes the others fail with its rank named, not hang.
    #[test]
    fn a_lost_rank_is_an_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let env =
            |rank| RankEnv { world: 2, rank, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port };
        let leaver = std::thread::spawn(move || {
            let env = RankEnv { world: 2, rank: 1, local_rank: 1, master_addr: "127.0.0.1".into(), master_port: port };
            drop(TcpCollective::connect(&env).expect("connect"))
        });
        let mut root = TcpCollective::connect(&env(0)).expect("connect");
        leaver.join().expect("thread");
        let msg = root.all_reduce_sum(&mut [1.0]).expect_err("lost").to_string();
        assert!(msg.contains("rank 1"), "{msg}");
    }
}
