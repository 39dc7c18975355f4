//! Issue 17: no stall when an AZ goes silent. Six nodes, each in its own network namespace
//! (2 per AZ); the writer in the test's namespace writes 4 KiB and fsyncs, in a loop, while the
//! test cuts whole AZs off the network the way a real cut does (packets dropped, no RST): first
//! one AZ for a while, then a different AZ every 2-5 s for a minute. Four segments of six are
//! always reachable, so the volume must keep committing: no fsync may wait more than 1.5 s. The
//! test prints p50/p99/max fsync latency per phase, and reads every block back at the end.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sixfold_tests::netns::Net;
use sixfold_tests::{latency_summary, pattern, require_fuse, test_dir, Cluster, Mount};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 4096; // a 16 MiB region of the volume
/// The longest an fsync may take while an AZ is cut or the cuts move.
const FSYNC_MAX: Duration = Duration::from_millis(1500);
const SEED: u64 = 0x5117_e4ce;

/// The time of day, UTC, as the processes' logs print it (HH:MM:SS.mmm).
fn clock() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (seconds, millis) = (now.as_secs() % 86_400, now.subsec_millis());
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Healthy,
    OneAzCut,
    Rotating,
    Healed,
}

const PHASES: [Phase; 4] = [
    Phase::Healthy,
    Phase::OneAzCut,
    Phase::Rotating,
    Phase::Healed,
];

fn nodes_of(az: usize) -> [usize; 2] {
    [2 * az, 2 * az + 1]
}

#[test]
fn fsync_does_not_stall_when_an_az_goes_silent() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("az_silence");
    let net = Arc::new(Net::create(6)?);
    let cluster = Cluster::start_in(&dir, &net)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "silent", "1G", &mountpoint)?;
    let volume = mount.open_volume()?;

    // The cuts, on their own thread: the phase each fsync starts in is what it is judged by.
    let phase = Arc::new(AtomicUsize::new(0));
    let schedule = {
        let net = net.clone();
        let phase = phase.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
            let mut log = Vec::new();
            let started = Instant::now();
            let cut = |az: usize, on: bool, log: &mut Vec<String>| -> anyhow::Result<()> {
                for node in nodes_of(az) {
                    if on {
                        net.cut(node)?;
                    } else {
                        net.heal(node)?;
                    }
                }
                let what = if on { "cut" } else { "healed" };
                log.push(format!(
                    "{:6.2}s ({} UTC) AZ {} {what}",
                    started.elapsed().as_secs_f64(),
                    clock(),
                    ["a", "b", "c"][az]
                ));
                Ok(())
            };
            std::thread::sleep(Duration::from_secs(5));
            phase.store(1, Ordering::SeqCst);
            cut(0, true, &mut log)?;
            std::thread::sleep(Duration::from_secs(10));
            phase.store(2, Ordering::SeqCst);
            let rotating_until = Instant::now() + Duration::from_secs(60);
            let mut current = 0;
            while Instant::now() < rotating_until {
                let next = (current + rng.random_range(1..3)) % 3;
                cut(current, false, &mut log)?;
                cut(next, true, &mut log)?;
                current = next;
                std::thread::sleep(Duration::from_millis(rng.random_range(2000..5000)));
            }
            cut(current, false, &mut log)?;
            phase.store(3, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(5));
            phase.store(4, Ordering::SeqCst);
            Ok(log)
        })
    };

    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); PHASES.len()];
    let mut slowest: Vec<(Duration, String)> = vec![(Duration::ZERO, String::new()); PHASES.len()];
    let mut written = vec![None::<u64>; BLOCKS as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 1);
    let mut sequence = 0u64;
    loop {
        let now_phase = phase.load(Ordering::SeqCst);
        // The cut thread ends after the last phase, or early on an error (reported below).
        if now_phase >= PHASES.len() || schedule.is_finished() {
            break;
        }
        let block = rng.random_range(0..BLOCKS);
        sequence += 1;
        volume.write_all_at(&pattern(sequence, BLOCK), block * BLOCK as u64)?;
        let (started, at) = (Instant::now(), clock());
        volume.sync_data()?;
        let took = started.elapsed();
        latencies[now_phase].push(took);
        if took > slowest[now_phase].0 {
            slowest[now_phase] = (took, at);
        }
        written[block as usize] = Some(sequence);
    }
    let cuts = schedule.join().expect("cut thread")?;
    eprintln!("cuts:\n  {}", cuts.join("\n  "));

    let mut slow = Vec::new();
    for ((phase, samples), (_, slowest_at)) in PHASES.iter().zip(&mut latencies).zip(&slowest) {
        let Some((p50, p99, max)) = latency_summary(samples) else {
            panic!("no fsync in phase {phase:?}");
        };
        eprintln!(
            "{phase:?}: {} fsyncs, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (from {slowest_at} UTC)",
            samples.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
        if max > FSYNC_MAX {
            slow.push(format!("{phase:?}: an fsync waited {max:?}"));
        }
    }

    // Everything written reads back, through the mount's cache and then from the nodes.
    let verify = |file: &std::fs::File, when: &str| -> anyhow::Result<()> {
        for (block, sequence) in written.iter().enumerate() {
            if let Some(sequence) = sequence {
                let mut read = vec![0u8; BLOCK];
                file.read_exact_at(&mut read, block as u64 * BLOCK as u64)?;
                assert!(
                    read == pattern(*sequence, BLOCK),
                    "block {block} does not hold write {sequence} ({when})"
                );
            }
        }
        Ok(())
    };
    verify(&volume, "before unmounting")?;
    drop(volume);
    mount.unmount()?;
    let mount = Mount::start(&cluster, "silent", "1G", &mountpoint)?;
    let volume = mount.open_volume()?;
    verify(&volume, "after mounting again")?;
    drop(volume);
    mount.unmount()?;
    assert!(
        slow.is_empty(),
        "fsync stalled while an AZ was silent:\n{}",
        slow.join("\n")
    );
    drop(cluster);
    drop(net);
    Ok(())
}
