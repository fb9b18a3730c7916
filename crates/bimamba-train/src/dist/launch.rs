//! `--nproc N`: starts N ranks of this executable on this host, as `torchrun --nproc-per-node N`
//! does: the same arguments, and the launcher environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
//! `MASTER_ADDR` = 127.0.0.1, `MASTER_PORT` = a free port). When one rank fails, the others are
//! stopped and the launcher reports which rank failed.

use std::ffi::OsString;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

use crate::error::{Error, Result};

/// Runs `n` ranks of the current executable with `args` and waits for all of them.
pub fn local(n: usize, args: &[OsString]) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Config(format!("cannot find this executable to start ranks: {e}")))?;
    // A port the system just handed out: free, unless another program takes it in between.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Config(format!("no free local port for the ranks to meet on: {e}")))?
        .port();
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(n);
    for rank in 0..n {
        let child = Command::new(&exe)
            .args(args)
            .env("WORLD_SIZE", n.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop(&mut children);
                return Err(Error::Config(format!("could not start rank {rank}: {e}")));
            }
        }
    }
    loop {
        let mut running = 0;
        for i in 0..children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    let rank = *rank;
                    children.remove(i);
                    stop(&mut children);
                    return Err(Error::Config(format!(
                        "rank {rank} of {n} failed ({status}); the other ranks were stopped"
                    )));
                }
                Ok(None) => running += 1,
                Err(e) => {
                    let rank = *rank;
                    stop(&mut children);
                    return Err(Error::Config(format!("lost track of rank {rank}: {e}")));
                }
            }
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills and reaps the ranks still running.
fn stop(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
}
