//! Folding property tests: for random record sequences, a page read at any read point at or
//! above the fold point gives the same bytes before folding, after folding, after a restart, and
//! after a crash in the middle of a fold (torn in-place page writes, a lost checkpoint).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sixfold_proto::wire::Record;
use sixfold_proto::{record, Epoch, Lsn, PageId, PgId, PAGE_SIZE};

use crate::error::StoreError;
use crate::folder;
use crate::index::SegmentKey;
use crate::request::prepare_records;
use crate::store::Store;
use crate::testutil::{full, partial, writer_source, TempDir};

const PAGES: u64 = 6;

fn key() -> SegmentKey {
    SegmentKey {
        volume: "fold".into(),
        pg: PgId(0),
    }
}

/// `count` records on a chain after `after` (LSNs with gaps), on a few pages, some full-page.
fn random_records(rng: &mut StdRng, after: u64, count: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut backlink = after;
    for _ in 0..count {
        let lsn = backlink + rng.random_range(1..4);
        let page = rng.random_range(0..PAGES);
        let r = if rng.random_bool(0.15) {
            full(lsn, backlink, 1, page, rng.random())
        } else {
            let len = rng.random_range(1..64);
            let offset = rng.random_range(0..(PAGE_SIZE - len)) as u32;
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            partial(lsn, backlink, 1, page, offset, &bytes)
        };
        out.push(r);
        backlink = lsn;
    }
    out
}

fn model(records: &[Record], page: u64, read_lsn: u64) -> Vec<u8> {
    let mut data = vec![0u8; PAGE_SIZE];
    for r in records
        .iter()
        .filter(|r| r.page == page && r.lsn <= read_lsn)
    {
        record::apply(r, &mut data);
    }
    data
}

/// Appends as the writer, telling the node that everything up to `fold_limit` may be folded.
async fn append(store: &Store, records: &[Record], fold_limit: u64) {
    let prepared = prepare_records(&key(), Some(Epoch(1)), records).expect("valid");
    let source = writer_source(1, fold_limit, fold_limit, fold_limit, Default::default());
    store.append(key(), source, prepared).await.expect("append");
}

/// Every page at every LSN from `from` to the last one reads as the model says; reads below the
/// fold point may be refused (never wrong).
async fn check_reads(store: &Store, records: &[Record], from: u64, seed: u64, when: &str) {
    let last = records.last().map_or(0, |r| r.lsn);
    for read_lsn in from..=last {
        for page in 0..PAGES {
            let got = store
                .read_page(&key(), PageId(page), Lsn(read_lsn), Lsn(0))
                .await;
            match got {
                Ok((data, _)) => assert!(
                    data == model(records, page, read_lsn),
                    "seed {seed}, {when}: page {page} at {read_lsn} differs"
                ),
                Err(StoreError::Folded { .. }) => {}
                Err(e) => panic!("seed {seed}, {when}: page {page} at {read_lsn}: {e}"),
            }
        }
    }
}

fn folded(store: &Store) -> Lsn {
    let index = crate::lock(&store.shared_for_tests().index);
    index.segment(&key()).map_or(Lsn::ZERO, |s| s.folded())
}

/// Opens the store of `dir`, sealed under the KEK `kek` (hex) if given.
fn reopen(dir: &Path, kek: Option<&str>) -> Store {
    let kek = kek.map(|hex| sixfold_keys::Kek::from_hex(hex).expect("kek"));
    Store::open_with_key(dir, kek).expect("reopen").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_agree_before_and_after_folding_and_restarts() {
    fold_property(None).await;
}

/// The same with encryption at rest: sealed frames, page slots, journals and checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_agree_before_and_after_folding_and_restarts_sealed() {
    let kek = sixfold_keys::Kek::generate_hex().expect("kek");
    fold_property(Some(&kek)).await;
}

async fn fold_property(kek: Option<&str>) {
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let temp = TempDir::new("fold-prop");
        let store = reopen(temp.path(), kek);
        let n = rng.random_range(5..60);
        let first = random_records(&mut rng, 0, n);
        let first_last = first.last().map_or(0, |r| r.lsn);
        // Some records are not yet foldable: the limit is in the middle.
        let limit = first[first.len() / 2].lsn;
        append(&store, &first, limit).await;
        check_reads(&store, &first, 1, seed, "before folding").await;
        folder::round(store.shared_for_tests());
        let point = folded(&store);
        assert!(
            point > Lsn::ZERO && point.0 <= limit,
            "seed {seed}: folded to {point}"
        );
        check_reads(&store, &first, point.0, seed, "after folding").await;
        // More records, a higher limit, another fold.
        let n = rng.random_range(5..60);
        let second = random_records(&mut rng, first_last, n);
        let mut all = first.clone();
        all.extend(second.iter().cloned());
        let all_last = all.last().map_or(0, |r| r.lsn);
        append(&store, &second, all_last).await;
        folder::round(store.shared_for_tests());
        let point = folded(&store);
        assert_eq!(
            point.0, all_last,
            "seed {seed}: everything foldable was folded"
        );
        check_reads(&store, &all, point.0, seed, "after the second fold").await;
        store.close().await;
        drop(store);
        // Restart: the checkpoint and the page store, with the log replayed on top.
        let store = reopen(temp.path(), kek);
        assert_eq!(
            folded(&store),
            point,
            "seed {seed}: fold point survives restart"
        );
        check_reads(&store, &all, point.0, seed, "after restart").await;
        // More records, then a crash in the middle of the next fold: the journal is complete,
        // the in-place writes are torn, the checkpoint was not written.
        let n = rng.random_range(5..30);
        let third = random_records(&mut rng, all_last, n);
        all.extend(third.iter().cloned());
        let all_last = all.last().map_or(0, |r| r.lsn);
        append(&store, &third, all_last).await;
        std::fs::copy(
            temp.path().join("checkpoint"),
            temp.path().join("checkpoint.before"),
        )
        .expect("save checkpoint");
        folder::round(store.shared_for_tests());
        store.close().await;
        drop(store);
        std::fs::rename(
            temp.path().join("checkpoint.before"),
            temp.path().join("checkpoint"),
        )
        .expect("lose the newest checkpoint");
        let written: Vec<u64> = third.iter().map(|r| r.page).collect();
        tear_pages(temp.path(), &written, &mut rng);
        let store = reopen(temp.path(), kek);
        assert_eq!(
            folded(&store).0,
            all_last,
            "seed {seed}: the journal redo restores the fold point"
        );
        check_reads(&store, &all, all_last, seed, "after a crash mid-fold").await;
        store.close().await;
    }
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .expect("read")
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// With a key, no file of the node holds a record's bytes in the clear (hot log, page store,
/// journal, checkpoint); without one the same search finds them (it can fail); a sealed store
/// refuses to open without its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_store_writes_no_plaintext() {
    const MARKER: &[u8] = b"sixfold-marker-7f3e19a2c4";
    let records: Vec<Record> = (1..=20u64)
        .map(|lsn| partial(lsn, lsn - 1, 1, lsn % PAGES, 100, MARKER))
        .collect();
    let kek = sixfold_keys::Kek::generate_hex().expect("kek");
    for sealed in [false, true] {
        let temp = TempDir::new("sealed");
        let kek = sealed.then_some(kek.as_str());
        let store = reopen(temp.path(), kek);
        append(&store, &records[..10], 10).await;
        folder::round(store.shared_for_tests());
        append(&store, &records[10..], 10).await;
        check_reads(&store, &records, 10, 0, "before restart").await;
        store.close().await;
        drop(store);
        let found = files_containing(temp.path(), MARKER);
        if sealed {
            assert!(found.is_empty(), "plaintext in {found:?}");
        } else {
            assert!(
                found.len() >= 2,
                "the search finds the log and the pages: {found:?}"
            );
        }
        let store = reopen(temp.path(), kek);
        check_reads(&store, &records, 10, 0, "after restart").await;
        store.close().await;
        drop(store);
        if sealed {
            match Store::open_with_key(temp.path(), None) {
                Ok(_) => panic!("a sealed store opened without its key"),
                Err(err) => assert!(err.to_string().contains("kek-"), "{err}"),
            }
        }
    }
}

/// A rotation cut short (the node stopped after its keys rotated, before the appender and the
/// folder re-sealed anything) finishes after the restart: the start-up pass writes the
/// metadata, the log, the checkpoint and every page again under the current keys, so no file
/// outside the keyring still names the older keys, and the data reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_by_a_restart_is_finished_after_it() {
    let records: Vec<Record> = (1..=20u64)
        .map(|lsn| partial(lsn, lsn - 1, 1, lsn % PAGES, 100, b"rotate"))
        .collect();
    let kek = sixfold_keys::Kek::generate_hex().expect("kek");
    let temp = TempDir::new("rotation-restart");
    let store = reopen(temp.path(), Some(&kek));
    append(&store, &records[..10], 10).await;
    folder::round(store.shared_for_tests());
    append(&store, &records[10..], 10).await;
    store
        .put_meta(sixfold_proto::wire::VolumeMeta {
            name: "fold".into(),
            size_bytes: 1 << 30,
            page_size: PAGE_SIZE as u32,
            epoch: 1,
            version: 1,
            pgs: Vec::new(),
            writer: 0,
            restoring: false,
        })
        .await
        .expect("metadata");
    let old: Vec<sixfold_keys::KeyId> = store
        .shared_for_tests()
        .keys
        .current_keys()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(old.len(), 2, "a volume key and the node's");
    // The keyring rotates (durably) and the node stops before anything is re-sealed.
    store.shared_for_tests().keys.rotate().expect("rotate");
    store.close().await;
    drop(store);

    let store = reopen(temp.path(), Some(&kek));
    // The writer comes back and lets the rest fold (its fold limit is soft state): the log files
    // under the older key go once their records are folded.
    append(&store, &records[10..], 20).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = store.encryption_status().expect("encryption on");
        let done = status.stores_left == 0
            && status.log_files_left == 0
            && status.meta_left == 0
            && !status.checkpoint_left;
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the re-seal pass did not finish: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check_reads(&store, &records, 10, 0, "after the re-seal").await;
    store.close().await;
    drop(store);
    let outside_keyring = |found: Vec<std::path::PathBuf>| -> Vec<std::path::PathBuf> {
        found
            .into_iter()
            .filter(|p| !p.starts_with(temp.path().join("keys")))
            .collect()
    };
    for id in &old {
        let found = outside_keyring(files_containing(temp.path(), &id.0));
        assert!(found.is_empty(), "{id} still seals {found:?}");
    }
}

/// Zeroes the second half of some of the slots the last fold wrote in place, as a crash in the
/// middle of those writes would (slots of earlier folds were fsync'd before it began).
fn tear_pages(data_dir: &Path, written: &[u64], rng: &mut StdRng) {
    use std::os::unix::fs::FileExt;
    let path = data_dir.join("pages/fold/pg-0/pages.dat");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open page data");
    for page in 0..PAGES {
        if written.contains(&page) && rng.random_bool(0.5) {
            let offset = page * PAGE_SIZE as u64 + PAGE_SIZE as u64 / 2;
            file.write_all_at(&[0u8; PAGE_SIZE / 2], offset)
                .expect("tear");
        }
    }
}

/// Hydration's store steps (what `hydrate` does over gRPC): B is behind A, whose records are
/// folded; B folds its own prefix, copies A's pages changed after its SCL, starts at A's fold
/// point, and then reads as A does, also after more records and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_from_a_peers_pages_gives_the_same_reads() {
    for seed in 100..112u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (temp_a, temp_b) = (TempDir::new("hydrate-a"), TempDir::new("hydrate-b"));
        let a = Store::open(temp_a.path()).expect("open a").0;
        let b = Store::open(temp_b.path()).expect("open b").0;
        let n = rng.random_range(10..80);
        let mut all = random_records(&mut rng, 0, n);
        let last = all.last().map_or(0, |r| r.lsn);
        append(&a, &all, last).await;
        folder::round(a.shared_for_tests());
        assert_eq!(folded(&a).0, last, "seed {seed}: A folded everything");
        // B has only a prefix (it was away), unfolded.
        let held = rng.random_range(0..n / 2);
        if held > 0 {
            append(&b, &all[..held], 0).await;
        }
        let scl = b.fold_to_scl(&key()).await.expect("fold to scl");
        let mut cursor = 0;
        let point = loop {
            let (f, pages, next) = a
                .fetch_pages(&key(), scl, cursor, 3)
                .await
                .expect("fetch pages");
            b.store_hydrated_pages(&key(), pages)
                .await
                .expect("store pages");
            if next >= sixfold_proto::PG_PAGES {
                break f;
            }
            cursor = next;
        };
        assert_eq!(point.0, last);
        let scl = b.finish_hydration(&key(), point).await.expect("finish");
        assert_eq!(scl, point, "seed {seed}: B starts at A's fold point");
        check_reads(&b, &all, last, seed, "after hydration").await;
        // The writer goes on with both.
        let n = rng.random_range(5..40);
        let more = random_records(&mut rng, last, n);
        all.extend(more.iter().cloned());
        let last = all.last().map_or(0, |r| r.lsn);
        append(&b, &more, last).await;
        folder::round(b.shared_for_tests());
        check_reads(&b, &all, folded(&b).0, seed, "after more records").await;
        b.close().await;
        drop(b);
        let b = Store::open(temp_b.path()).expect("reopen b").0;
        check_reads(&b, &all, folded(&b).0, seed, "after restart").await;
        b.close().await;
        a.close().await;
    }
}

/// A peer's fold point is its claim: a segment adopts it only up to the PG's commit point it
/// knows, so that a wrong or hostile peer cannot make it count records it never stored as held
/// (and acknowledge later writes at or below that point without storing them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_fold_point_is_adopted_only_up_to_the_known_commit_point() {
    let mut rng = StdRng::seed_from_u64(7);
    let temp = TempDir::new("hydrate-bound");
    let b = Store::open(temp.path()).expect("open").0;
    let records = random_records(&mut rng, 0, 10);
    let last = records.last().map_or(0, |r| r.lsn);
    append(&b, &records, last).await;
    let scl = b.segment_state(&key()).scl;
    assert_eq!(scl.0, last);
    let refused = b
        .finish_hydration_from_peer(&key(), Lsn(last + 1_000_000))
        .await
        .expect_err("a fold point beyond the known commit point is refused");
    assert!(refused.to_string().contains("beyond the PG's commit point"));
    assert_eq!(b.segment_state(&key()).scl, scl, "the SCL did not move");
    // At or below the commit point it knows, the peer's fold point is taken.
    let adopted = b
        .finish_hydration_from_peer(&key(), Lsn(last))
        .await
        .expect("within the commit point");
    assert_eq!(adopted.0, last);
    b.close().await;
}

/// A writer's fold limit and PGCL above the VDL it reports with them fold nothing past that
/// VDL: the node holds the hints to each other (a record above the VDL may be one a recovery
/// truncates, and folding makes it permanent).
#[tokio::test]
async fn hints_above_the_writers_vdl_fold_nothing_past_it() {
    let temp = TempDir::new("fold-hints");
    let store = reopen(temp.path(), None);
    let records: Vec<Record> = (1..=10u64)
        .map(|lsn| full(lsn, lsn - 1, 1, lsn % 3, 9))
        .collect();
    let prepared = prepare_records(&key(), Some(Epoch(1)), &records).expect("valid");
    // VDL 4, PGCL and fold limit 10.
    let source = writer_source(1, 4, 10, 10, Default::default());
    store.append(key(), source, prepared).await.expect("append");
    folder::round(store.shared_for_tests());
    assert_eq!(folded(&store), Lsn(4), "folded past the writer's VDL");
    store.close().await;
}
