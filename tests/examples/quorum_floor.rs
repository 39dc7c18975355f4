//! The cheapest quorum round this machine can do, with no sixfold code: a floor under every
//! flush that sixfold makes, and so a ceiling over what `scripts/bench-sqlite.sh` can show.
//!
//! Usage: `quorum_floor DIR [ROUNDS]`. Six node processes (this program again, started with
//! `node`) each own a zero-filled file in DIR and a TCP connection on loopback to the writer (this
//! process). Each round the writer sends 8 KiB to all six; each node writes it (`pwrite`),
//! fdatasyncs and answers one byte; the round ends at the fourth answer, as a sixfold flush does.
//! There is nothing else: no gRPC, no async runtime, no FUSE, no record format, one thread per
//! process. Prints the mean round time in microseconds three ways: writes through the page cache
//! (as sixfold's nodes write their hot logs), O_DIRECT writes, and no disk at all (the network and
//! scheduling part alone).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const NODES: usize = 6;
const QUORUM: usize = 4;
const BATCH: usize = 8192;
const FILE_BYTES: u64 = 8 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("node") {
        let [_, _, path, port, rounds, disk] = &args[..] else {
            bail!("usage: quorum_floor node PATH PORT ROUNDS none|buffered|direct");
        };
        let disk = match disk.as_str() {
            "none" => Disk::None,
            "buffered" => Disk::Buffered,
            "direct" => Disk::Direct,
            other => bail!("unknown disk mode {other}"),
        };
        return node(Path::new(path), port.parse()?, rounds.parse()?, disk);
    }
    let dir = PathBuf::from(args.get(1).context("usage: quorum_floor DIR [ROUNDS]")?);
    let rounds: usize = args.get(2).map(|r| r.parse()).transpose()?.unwrap_or(2000);
    let buffered = writer(&dir, rounds, Disk::Buffered)?;
    let direct = writer(&dir, rounds, Disk::Direct)?;
    let none = writer(&dir, rounds, Disk::None)?;
    println!(
        "{buffered:.0} us per round ({QUORUM} of {NODES} answers: 8 KiB sent over loopback, pwrite \
         + fdatasync); {direct:.0} us with O_DIRECT writes; {none:.0} us without the disk"
    );
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Disk {
    None,
    Buffered,
    Direct,
}

impl Disk {
    fn arg(self) -> &'static str {
        match self {
            Disk::None => "none",
            Disk::Buffered => "buffered",
            Disk::Direct => "direct",
        }
    }
}

/// One node: for each batch, write it and fdatasync (unless `Disk::None`), then answer.
fn node(path: &Path, port: u16, rounds: usize, disk: Disk) -> Result<()> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all_at(&vec![0u8; FILE_BYTES as usize], 0)?;
    file.sync_all()?;
    let direct = match disk {
        Disk::Direct => Some(
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .context("O_DIRECT open")?,
        ),
        _ => None,
    };
    let mut socket = TcpStream::connect(("127.0.0.1", port))?;
    socket.set_nodelay(true)?;
    // Aligned for O_DIRECT: the batch starts at a 4 KiB boundary of a larger buffer.
    let mut buffer = vec![0u8; BATCH + 4096];
    let start = (4096 - buffer.as_ptr() as usize % 4096) % 4096;
    let batch = &mut buffer[start..start + BATCH];
    for round in 0..rounds {
        if socket.read_exact(batch).is_err() {
            break;
        }
        let offset = (round * BATCH) as u64 % FILE_BYTES;
        match (disk, &direct) {
            (Disk::None, _) => {}
            (_, Some(direct)) => {
                direct.write_all_at(batch, offset)?;
                direct.sync_data()?;
            }
            (_, None) => {
                file.write_all_at(batch, offset)?;
                file.sync_data()?;
            }
        }
        if socket.write_all(b"k").is_err() {
            break; // the writer has its quorum for the last round and has gone
        }
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(())
}

/// Runs `rounds` rounds against six fresh nodes; returns the mean round time in microseconds.
fn writer(dir: &Path, rounds: usize, disk: Disk) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = (0..NODES)
        .map(|i| {
            Command::new(&exe)
                .arg("node")
                .arg(dir.join(format!("floor-{i}")))
                .arg(port.to_string())
                .arg(rounds.to_string())
                .arg(disk.arg())
                .spawn()
                .context("start a node process")
        })
        .collect::<Result<_>>()?;
    let mut conns = Vec::new();
    for _ in 0..NODES {
        let (conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        conns.push(conn);
    }
    // Answers each node still owes; a node counts for a round once it owes none.
    let mut owed = [0usize; NODES];
    let batch = vec![7u8; BATCH];
    let mut answers = [0u8; 64];
    let started = Instant::now();
    for _ in 0..rounds {
        for (conn, owed) in conns.iter_mut().zip(owed.iter_mut()) {
            conn.write_all(&batch)?;
            *owed += 1;
        }
        let mut answered = [false; NODES];
        while answered.iter().filter(|a| **a).count() < QUORUM {
            let mut polls: Vec<libc::pollfd> = conns
                .iter()
                .zip(owed)
                .map(|(c, owed)| libc::pollfd {
                    // A negative descriptor is skipped: only nodes that owe answers are polled.
                    fd: if owed > 0 { c.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs for the call.
            let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
            if ready < 0 {
                return Err(std::io::Error::last_os_error()).context("poll");
            }
            for (i, poll) in polls.iter().enumerate() {
                // A node that owes nothing may have finished and hung up: nothing to read.
                if poll.revents & (libc::POLLIN | libc::POLLHUP) != 0 && owed[i] > 0 {
                    let n = conns[i].read(&mut answers[..owed[i].min(64)])?;
                    if n == 0 {
                        bail!("node {i} hung up");
                    }
                    owed[i] -= n;
                    answered[i] = owed[i] == 0;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    drop(conns);
    for child in &mut children {
        child.wait()?;
    }
    Ok(elapsed.as_secs_f64() / rounds as f64 * 1e6)
}
