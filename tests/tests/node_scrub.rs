//! Issue 4, test 2: bytes flipped on the disk of a stopped node, in its page store and in its
//! hot log. After the restart, replay cuts the damaged log where the damage starts (and gap-fill
//! or hydration brings those records back from peers), the scrubber finds the damaged page,
//! counts it and repairs it from a peer; nothing wrong is ever served, and every page read
//! straight from the node matches what was written.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sixfold_proto::PAGE_SIZE;
use sixfold_tests::probe::NodeProbe;
use sixfold_tests::{pattern, require_fuse, test_dir, Cluster, Mount};

const CHUNK: u64 = 1 << 20;
/// The page whose stored image is damaged (in chunk 3).
const DAMAGED_PAGE: u64 = 3 * 256 + 17;

fn flip(path: &std::path::Path, offset: u64) -> anyhow::Result<()> {
    let file = std::fs::File::options().read(true).write(true).open(path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset)?;
    file.sync_all()?;
    Ok(())
}

#[test]
fn flipped_bytes_are_found_repaired_and_never_served() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_scrub");
    let mut cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "scrub", "16G", &mountpoint)?;
    let volume = mount.open_volume()?;
    let chunks = 48u64;
    for i in 0..chunks {
        volume.write_all_at(&pattern(i, CHUNK as usize), i * CHUNK)?;
        if i % 8 == 7 {
            volume.sync_all()?;
        }
    }
    volume.sync_all()?;
    let victim = 1;
    let addr = cluster.nodes[victim].addr.to_string();
    // Wait for the victim to fold the early chunks into its page store.
    let pages = cluster.nodes[victim]
        .data
        .join("pages/scrub/pg-0/pages.slots");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&pages).map_or(0, |m| m.len()) < (DAMAGED_PAGE + 1) * 64 {
        assert!(Instant::now() < deadline, "node {victim} never folded");
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.stop_node(victim);
    // One byte of the damaged page's image, and one byte in the middle of the hot log's data.
    let data = cluster.nodes[victim].data.clone();
    flip(
        &data.join("pages/scrub/pg-0/pages.dat"),
        DAMAGED_PAGE * PAGE_SIZE as u64 + 1234,
    )?;
    let mut logs: Vec<_> = std::fs::read_dir(data.join("log"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    logs.sort();
    let newest = logs.last().ok_or_else(|| anyhow::anyhow!("no hot log"))?;
    let bytes = std::fs::read(newest)?;
    let data_end = bytes.iter().rposition(|b| *b != 0).unwrap_or(0) as u64;
    assert!(data_end > 1 << 20, "the newest hot-log file holds data");
    flip(newest, data_end / 2)?;

    cluster.start_node(victim)?;
    // Writes go on; the writer names the PGCL to the node in every batch.
    for i in chunks..chunks + 8 {
        volume.write_all_at(&pattern(i, CHUNK as usize), i * CHUNK)?;
    }
    volume.sync_all()?;
    let status = cluster.status("scrub")?;
    let pgcl = status["pgs"][0]["pgcl"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let node = cluster.node_report("scrub", &addr)?;
        let found = node["corrupt_found"].as_u64().unwrap_or(0);
        let repaired = node["corrupt_repaired"].as_u64().unwrap_or(0);
        if found >= 1 && repaired >= 1 {
            eprintln!("node {victim}: corrupt found {found}, repaired {repaired}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the damaged page was not found and repaired: {node}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(cluster
        .status_text("scrub")?
        .contains("pages repaired from peers"));

    let mut probe = NodeProbe::connect(cluster.nodes[victim].addr, "scrub")?;
    let scl = probe.wait_for_scl(0, pgcl, Duration::from_secs(60))?;
    for page in 0..(chunks + 8) * 256 {
        let expected = pattern(page / 256, CHUNK as usize);
        let at = (page % 256) as usize * PAGE_SIZE;
        let served = probe
            .page(0, page, scl)
            .map_err(|e| anyhow::anyhow!("node {victim} cannot serve page {page}: {e}"))?;
        assert!(
            served[..] == expected[at..at + PAGE_SIZE],
            "node {victim} serves wrong bytes for page {page}"
        );
    }
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}

/// Flips a byte of the hot-log record holding `page` (found by its bytes) in `log_dir`.
fn flip_record_of(log_dir: &std::path::Path, page: &[u8]) -> anyhow::Result<()> {
    let needle = &page[1000..1064];
    for entry in std::fs::read_dir(log_dir)? {
        let path = entry?.path();
        let bytes = std::fs::read(&path)?;
        if let Some(found) = bytes.windows(needle.len()).position(|w| w == needle) {
            return flip(&path, found as u64 + 10);
        }
    }
    anyhow::bail!("the page is not in the hot log")
}

/// Reads `page` from the victim until it serves `expected` and has repaired `repairs` pieces of
/// damage; a read that answers must never answer wrong bytes.
fn wait_until_repaired(
    cluster: &Cluster,
    victim: usize,
    probe: &mut NodeProbe,
    page: u64,
    expected: &[u8],
    repairs: u64,
) -> anyhow::Result<()> {
    let addr = cluster.nodes[victim].addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scl = probe.scl(0)?;
        let served = probe.page(0, page, scl);
        let repaired = cluster.node_report("rot", &addr)?["corrupt_repaired"]
            .as_u64()
            .unwrap_or(0);
        if let Ok(served) = &served {
            assert!(served == expected, "the node served a damaged page {page}");
            if repaired >= repairs {
                return Ok(());
            }
        }
        assert!(
            Instant::now() < deadline,
            "damage in page {page}'s record was not repaired (last read: {:?}, repaired {repaired})",
            served.err()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A byte flipped in a hot-log record of a running node (bit rot under a live process): the read
/// that meets it gets an error, never the bytes; the node fetches a good copy of the record from
/// a peer, writes it again, and then serves the page right. Counted in `sixfold status`.
#[test]
fn a_damaged_hot_log_record_is_refetched_while_the_node_runs() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("node_record_repair");
    let cluster = Cluster::start(&dir, 6)?;
    let mountpoint = dir.join("mnt");
    let mount = Mount::start(&cluster, "rot", "16G", &mountpoint)?;
    let volume = mount.open_volume()?;
    let chunk = pattern(777, CHUNK as usize);
    volume.write_all_at(&chunk, 0)?;
    volume.sync_all()?;
    let pgcl = cluster.status("rot")?["pgs"][0]["pgcl"]
        .as_u64()
        .unwrap_or(0);

    // Page 5's record in the victim's hot log (folding waits seconds; this takes milliseconds).
    let victim = 2;
    let log_dir = cluster.nodes[victim].data.join("log");
    let page_bytes = |page: u64| chunk[page as usize * PAGE_SIZE..][..PAGE_SIZE].to_vec();
    flip_record_of(&log_dir, &page_bytes(5))?;
    let mut probe = NodeProbe::connect(cluster.nodes[victim].addr, "rot")?;
    let scl = probe.wait_for_scl(0, pgcl, Duration::from_secs(30))?;
    match probe.page(0, 5, scl) {
        Err(e) => eprintln!("first read after the damage refused, as it must be: {e}"),
        Ok(served) => assert!(served == page_bytes(5), "the node served a damaged page"),
    }
    wait_until_repaired(&cluster, victim, &mut probe, 5, &page_bytes(5), 1)?;

    // Damage found late: the node stalls (SIGSTOP) right after the damage while its peers fold
    // every record away. When it goes on, its own fold meets the damaged record, no peer holds
    // the record any more, and the page is repaired from a peer's image over it.
    flip_record_of(&log_dir, &page_bytes(9))?;
    cluster.pause_node(victim);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, node) in cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
    {
        let mut peer = NodeProbe::connect(node.addr, "rot")?;
        while peer.status()?.segments.iter().any(|s| s.records > 0) {
            assert!(
                Instant::now() < deadline,
                "node {i} never folded its records"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    cluster.resume_node(victim);
    wait_until_repaired(&cluster, victim, &mut probe, 9, &page_bytes(9), 2)?;
    drop(volume);
    mount.unmount()?;
    drop(cluster);
    sixfold_tests::remove_test_dir(&dir);
    Ok(())
}
