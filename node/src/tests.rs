//! Store-level tests: the real hot log on disk, the appender thread, recovery after restart.

use crate::members::ChangeMode;
use std::path::Path;
use std::sync::atomic::Ordering;

use sixfold_proto::record;
use sixfold_proto::wire::{Record, VolumeMeta};
use sixfold_proto::{Epoch, Lsn, PageId, PgId, PAGE_SIZE, PG_PAGES};

use crate::appender::Source;
use crate::error::StoreError;
use crate::index::SegmentKey;
use crate::request::prepare_records;
use crate::segment::Truncation;
use crate::store::Store;
use crate::testutil::{full, partial, writer_source, TempDir};

fn key(volume: &str, pg: u32) -> SegmentKey {
    SegmentKey {
        volume: volume.into(),
        pg: PgId(pg),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir).expect("store opens").0
}

async fn append(
    store: &Store,
    key: &SegmentKey,
    epoch: u64,
    records: &[Record],
) -> Result<Lsn, StoreError> {
    let prepared = prepare_records(key, Some(Epoch(epoch)), records).expect("valid records");
    let source = writer_source(epoch, 0, 0, 0, crate::index::Mark::default());
    store.append(key.clone(), source, prepared).await
}

/// [`append`] with a writer's consistency point (VDL `vdl` reached at `time_us`).
async fn append_marked(
    store: &Store,
    key: &SegmentKey,
    records: &[Record],
    vdl: u64,
    time_us: u64,
) -> Result<Lsn, StoreError> {
    let prepared = prepare_records(key, Some(Epoch(1)), records).expect("valid records");
    let mark = crate::index::Mark {
        vdl: Lsn(vdl),
        pgcl: Lsn(vdl),
        time_us,
    };
    let source = writer_source(1, vdl, vdl, 0, mark);
    store.append(key.clone(), source, prepared).await
}

async fn gossip(store: &Store, key: &SegmentKey, records: &[Record]) -> Result<Lsn, StoreError> {
    let prepared = prepare_records(key, None, records).expect("valid records");
    store.append(key.clone(), Source::Gossip, prepared).await
}

async fn page(store: &Store, key: &SegmentKey, page: u64, read_lsn: u64) -> Vec<u8> {
    store
        .read_page(key, PageId(page), Lsn(read_lsn), Lsn(0))
        .await
        .expect("read")
        .0
}

/// The page as of `read_lsn` by brute force: every record of the page, in LSN order, from zeroes.
fn model(records: &[Record], page: u64, read_lsn: u64) -> Vec<u8> {
    let mut sorted: Vec<&Record> = records
        .iter()
        .filter(|r| r.page == page && r.lsn <= read_lsn)
        .collect();
    sorted.sort_by_key(|r| r.lsn);
    let mut data = vec![0u8; PAGE_SIZE];
    for r in sorted {
        record::apply(r, &mut data);
    }
    data
}

fn history() -> Vec<Record> {
    vec![
        partial(1, 0, 1, 7, 10, b"one"),
        full(2, 1, 1, 8, 0xaa),
        full(3, 2, 1, 7, 0x11),
        partial(4, 3, 1, 7, 100, b"four"),
        partial(5, 4, 1, 8, 4090, b"fivexx"),
        partial(6, 5, 1, 7, 12, b"SIX"),
        full(7, 6, 1, 7, 0x77),
        partial(8, 7, 1, 7, 0, b"eight"),
    ]
}

#[tokio::test]
async fn reads_as_of_lsn_with_full_and_partial_records() {
    let temp = TempDir::new("read-as-of");
    let store = open(temp.path());
    let k = key("v", 0);
    let records = history();
    // Out of order, in two batches.
    assert_eq!(
        append(&store, &k, 1, &records[4..]).await.expect("append"),
        Lsn(0)
    );
    assert_eq!(
        append(&store, &k, 1, &records[..4]).await.expect("append"),
        Lsn(8)
    );
    for page_id in [7, 8, 9] {
        for read_lsn in 0..=9 {
            assert_eq!(
                page(&store, &k, page_id, read_lsn).await,
                model(&records, page_id, read_lsn),
                "page {page_id} as of {read_lsn}"
            );
        }
    }
    store.close().await;
    // The same answers after a restart.
    let store = open(temp.path());
    for read_lsn in 0..=9 {
        assert_eq!(
            page(&store, &k, 7, read_lsn).await,
            model(&records, 7, read_lsn)
        );
    }
    store.close().await;
}

#[tokio::test]
async fn read_refusals() {
    let temp = TempDir::new("read-refusals");
    let store = open(temp.path());
    let k = key("v", 1);
    let missing = store.read_page(&k, PageId(PG_PAGES), Lsn(1), Lsn(0)).await;
    assert!(
        matches!(missing, Err(StoreError::NotHosted { .. })),
        "{missing:?}"
    );
    append(
        &store,
        &k,
        1,
        &[
            partial(3, 0, 1, PG_PAGES, 0, b"x"),
            partial(9, 5, 1, PG_PAGES, 0, b"y"),
        ],
    )
    .await
    .expect("append");
    let behind = store.read_page(&k, PageId(PG_PAGES), Lsn(9), Lsn(9)).await;
    let error = behind.expect_err("behind");
    assert!(
        error
            .to_string()
            .contains("segment behind: scl 3 < required 9"),
        "{error}"
    );
    store.close().await;
}

#[tokio::test]
async fn duplicates_are_not_written_twice() {
    let temp = TempDir::new("dedup");
    let store = open(temp.path());
    let k = key("v", 0);
    let records = history();
    append(&store, &k, 1, &records).await.expect("append");
    let bytes = store.status().log_bytes;
    let syncs = store.shared_syncs();
    assert_eq!(
        append(&store, &k, 1, &records).await.expect("retransmit"),
        Lsn(8)
    );
    assert_eq!(store.status().log_bytes, bytes, "nothing new written");
    assert_eq!(store.shared_syncs(), syncs, "nothing to fsync");
    let state = store.segment_state(&k);
    assert_eq!(
        (state.scl, state.max_lsn, state.records),
        (Lsn(8), Lsn(8), 8)
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_share_fsyncs() {
    let temp = TempDir::new("group-commit");
    let store = open(temp.path());
    let mut tasks = Vec::new();
    for pg in 0..64u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let k = key("v", pg);
            let first = u64::from(pg) * PG_PAGES;
            append(&store, &k, 1, &[partial(1, 0, 1, first, 0, b"a")]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("append"), Lsn(1));
    }
    let syncs = store.shared_syncs();
    assert!((1..=64).contains(&syncs), "{syncs} fsyncs");
    assert_eq!(store.status().segments.len(), 64);
    store.close().await;
}

#[tokio::test]
async fn torn_tail_is_cut_on_restart() {
    let temp = TempDir::new("store-torn");
    let k = key("v", 0);
    let records = history();
    let store = open(temp.path());
    append(&store, &k, 1, &records[..7]).await.expect("append");
    append(&store, &k, 1, &records[7..]).await.expect("append");
    store.close().await;
    // kill -9 while the last batch was being written: its frame is torn.
    let log = temp.path().join("log").join("00000001.log");
    // The last 3 bytes of the frame never reached the disk (still the file's zeroes).
    let mut bytes = std::fs::read(&log).expect("log");
    let end = bytes.iter().rposition(|b| *b != 0).expect("data") + 1;
    bytes[end - 3..end].fill(0);
    std::fs::write(&log, &bytes).expect("tear");
    let store = open(temp.path());
    let state = store.segment_state(&k);
    assert_eq!((state.scl, state.records), (Lsn(7), 7));
    assert_eq!(page(&store, &k, 7, 100).await, model(&records[..7], 7, 100));
    // The writer resends the unacknowledged batch.
    assert_eq!(
        append(&store, &k, 1, &records[7..]).await.expect("append"),
        Lsn(8)
    );
    store.close().await;
    let store = open(temp.path());
    assert_eq!(store.segment_state(&k).scl, Lsn(8));
    assert_eq!(page(&store, &k, 7, 100).await, model(&records, 7, 100));
    store.close().await;
}

/// A membership change step is durable, fences a writer on the old membership (its Appends
/// and seals are refused as stale), refuses a rival step of the same epoch, and survives a
/// restart.
#[tokio::test]
async fn membership_steps_fence_old_members_across_restarts() {
    use sixfold_proto::membership::Membership;
    use sixfold_proto::NodeId;
    let temp = TempDir::new("membership");
    let k = key("v", 0);
    let store = open(temp.path());
    let base = Membership::new((1..=6).map(NodeId).collect()).expect("valid");
    // The writer that creates the PG hands its segments the first membership.
    store
        .open_segment(
            k.clone(),
            Epoch(1),
            Lsn(0),
            vec![],
            vec![],
            Some(base.clone()),
        )
        .await
        .expect("open");
    assert_eq!(store.membership(&k), Some(base.clone()));
    let writer = |membership: &Membership, lsn: u64| {
        let prepared = prepare_records(&k, Some(Epoch(1)), &[partial(lsn, lsn - 1, 1, 0, 0, b"x")])
            .expect("valid");
        let source = Source::Writer {
            epoch: Epoch(1),
            peers: vec![],
            writer_vcl: Lsn(0),
            writer_vdl: Lsn(0),
            pgcl: Lsn(0),
            fold_limit: Lsn(0),
            mark: crate::index::Mark::default(),
            addr: String::new(),
            membership: Some(membership.clone()),
        };
        store.append(k.clone(), source, prepared)
    };
    assert_eq!(writer(&base, 1).await.expect("current"), Lsn(1));
    let begun = base.begin(NodeId(6), NodeId(7)).expect("begin");
    store
        .change_membership(
            k.clone(),
            base.clone(),
            begun.clone(),
            vec!["a:1".into()],
            Lsn(0),
            ChangeMode::Step,
        )
        .await
        .expect("adopted");
    let stale = writer(&base, 2)
        .await
        .expect_err("the old membership no longer counts");
    assert!(
        matches!(
            stale,
            StoreError::StaleMembership {
                request: 1,
                held: 2,
                ..
            }
        ),
        "{stale}"
    );
    assert!(stale.to_string().contains("stale membership"));
    assert!(
        store
            .seal(k.clone(), Epoch(2), Some(base.clone()))
            .await
            .is_err(),
        "a recovering writer on the old membership is refused too"
    );
    let rival = base.begin(NodeId(6), NodeId(8)).expect("rival");
    assert!(matches!(
        store
            .change_membership(
                k.clone(),
                base.clone(),
                rival,
                vec![],
                Lsn(0),
                ChangeMode::Step
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    let skipped = begun
        .complete(NodeId(7))
        .and_then(|m| m.begin(NodeId(5), NodeId(9)))
        .expect("steps");
    assert!(
        matches!(
            store
                .change_membership(
                    k.clone(),
                    base.clone(),
                    skipped,
                    vec![],
                    Lsn(0),
                    ChangeMode::Step
                )
                .await,
            Err(StoreError::InvalidArgument(_))
        ),
        "a proposal that is not one step from its base"
    );
    assert_eq!(writer(&begun, 2).await.expect("the new membership"), Lsn(2));
    // A writer on a newer membership (the metadata's: established) brings a segment that
    // missed the step up to it.
    let done = begun.complete(NodeId(7)).expect("complete");
    assert_eq!(writer(&done, 3).await.expect("a newer membership"), Lsn(3));
    assert_eq!(store.membership(&k), Some(done.clone()));
    assert!(
        writer(&begun, 4).await.is_err(),
        "the older one is refused from then on"
    );
    store.close().await;
    let store = open(temp.path());
    assert_eq!(
        store.membership(&k),
        Some(done.clone()),
        "replayed from the hot log"
    );
    store.close().await;
}

/// A collision-recovery round on a real store: a promise refuses fast-round steps of its
/// epoch, an accept replaces the rival step the segment held (same epoch: the index and replay
/// must apply it, which they did not for same-epoch changes before), and both the promise and
/// the round survive a restart.
#[tokio::test]
async fn collision_rounds_are_durable_and_replace_a_rival_of_the_epoch() {
    use sixfold_proto::collision::Ballot;
    use sixfold_proto::membership::Membership;
    use sixfold_proto::NodeId;
    let temp = TempDir::new("collision");
    let k = key("v", 0);
    let store = open(temp.path());
    let base = Membership::new((1..=6).map(NodeId).collect()).expect("valid");
    store
        .open_segment(
            k.clone(),
            Epoch(1),
            Lsn(0),
            vec![],
            vec![],
            Some(base.clone()),
        )
        .await
        .expect("open");
    let low = base.begin(NodeId(6), NodeId(7)).expect("begin");
    let high = base.begin(NodeId(6), NodeId(8)).expect("rival");
    let step = |proposed: &Membership, mode: ChangeMode| {
        store.change_membership(
            k.clone(),
            base.clone(),
            proposed.clone(),
            vec![],
            Lsn(0),
            mode,
        )
    };
    step(&high, ChangeMode::Step).await.expect("a step");
    let round = Ballot {
        number: 2,
        driver: NodeId(3),
    };
    let vote = store
        .promise_membership(k.clone(), base.clone(), round)
        .await
        .expect("promised");
    assert_eq!(vote, Some((high.clone(), Ballot::FAST)), "reports its step");
    let earlier = Ballot {
        number: 1,
        driver: NodeId(9),
    };
    assert!(
        store
            .promise_membership(k.clone(), base.clone(), earlier)
            .await
            .is_err(),
        "an earlier round is refused"
    );
    assert!(
        matches!(
            step(&low, ChangeMode::Accept(earlier)).await,
            Err(StoreError::Conflict(_))
        ),
        "so is its accept"
    );
    step(&low, ChangeMode::Accept(round))
        .await
        .expect("the round's accept");
    assert_eq!(
        store.membership(&k),
        Some(low.clone()),
        "the rival is replaced"
    );
    store.close().await;
    let store = open(temp.path());
    let held = store.held_membership(&k).expect("held");
    assert_eq!(held.current, low, "replayed in order from the hot log");
    assert_eq!(held.accepted, round);
    assert_eq!(held.promise.map(|p| p.ballot), Some(round));
    let refused = store
        .change_membership(
            k.clone(),
            base.clone(),
            high,
            vec![],
            Lsn(0),
            ChangeMode::Step,
        )
        .await
        .expect_err("no fast-round step once promised, after a restart too");
    assert!(refused.to_string().contains("promised"), "{refused}");
    store.close().await;
}

/// A segment that was behind (it missed a step) promises a round for the next epoch; a writer
/// then brings it up to the base. The promise must survive that (and a restart): a round may
/// have counted on this segment's silence, and a fast-round step taken now could establish a
/// second membership for the epoch (found by review).
#[tokio::test]
async fn a_writer_catching_a_segment_up_keeps_its_promise() {
    use sixfold_proto::collision::Ballot;
    use sixfold_proto::membership::Membership;
    use sixfold_proto::NodeId;
    let temp = TempDir::new("promise-kept");
    let k = key("v", 0);
    let store = open(temp.path());
    let first = Membership::new((1..=6).map(NodeId).collect()).expect("valid");
    store
        .open_segment(
            k.clone(),
            Epoch(1),
            Lsn(0),
            vec![],
            vec![],
            Some(first.clone()),
        )
        .await
        .expect("open");
    // The PG moved on without this segment: the base of the contested epoch is a step ahead.
    let base = first.begin(NodeId(6), NodeId(7)).expect("begin");
    let round = Ballot {
        number: 1,
        driver: NodeId(2),
    };
    let vote = store
        .promise_membership(k.clone(), base.clone(), round)
        .await
        .expect("promised");
    assert_eq!(vote, None, "it holds nothing for the epoch");
    store
        .open_segment(
            k.clone(),
            Epoch(2),
            Lsn(0),
            vec![],
            vec![],
            Some(base.clone()),
        )
        .await
        .expect("a writer brings it up to the base");
    assert_eq!(store.membership(&k), Some(base.clone()));
    let step = base
        .complete(NodeId(7))
        .expect("a step for the promised epoch");
    for restart in [false, true] {
        let store = if restart {
            open(temp.path())
        } else {
            store.clone()
        };
        let refused = store
            .change_membership(
                k.clone(),
                base.clone(),
                step.clone(),
                vec![],
                Lsn(0),
                ChangeMode::Step,
            )
            .await
            .expect_err("no fast-round step for the promised epoch, after a restart neither");
        assert!(refused.to_string().contains("promised"), "{refused}");
        store.close().await;
    }
}

#[tokio::test]
async fn truncation_survives_restart() {
    let temp = TempDir::new("truncation");
    let k = key("v", 0);
    let store = open(temp.path());
    let old: Vec<Record> = (1..=10)
        .map(|lsn| partial(lsn, lsn - 1, 1, 0, 0, &[lsn as u8]))
        .collect();
    append(&store, &k, 1, &old).await.expect("append");
    // A new writer recovered the PG up to 6.
    assert_eq!(
        store
            .open_segment(k.clone(), Epoch(2), Lsn(6), vec![], vec![], None)
            .await
            .expect("open"),
        Lsn(6)
    );
    let new = [partial(20, 6, 2, 0, 1, b"n")];
    assert_eq!(append(&store, &k, 2, &new).await.expect("append"), Lsn(20));
    store.close().await;
    let store = open(temp.path());
    let state = store.segment_state(&k);
    assert_eq!(
        (state.scl, state.max_lsn, state.records, state.epoch),
        (Lsn(20), Lsn(20), 7, Epoch(2))
    );
    let mut expected = model(&old[..6], 0, 100);
    expected[1] = b'n';
    assert_eq!(page(&store, &k, 0, 100).await, expected);
    // A stale peer offers the truncated records again: refused.
    assert_eq!(
        gossip(&store, &k, &old[6..]).await.expect("gossip"),
        Lsn(20)
    );
    assert_eq!(store.segment_state(&k).records, 7);
    store.close().await;
}

#[tokio::test]
async fn epochs_fence_old_writers_across_restarts() {
    let temp = TempDir::new("fencing");
    let k = key("v", 0);
    let store = open(temp.path());
    append(&store, &k, 2, &[partial(1, 0, 2, 0, 0, b"a")])
        .await
        .expect("append");
    let error = append(&store, &k, 1, &[partial(2, 1, 1, 0, 0, b"b")])
        .await
        .expect_err("fenced");
    let text = error.to_string();
    assert!(
        text.contains("fenced") && text.contains('1') && text.contains('2'),
        "{text}"
    );
    assert!(store
        .open_segment(k.clone(), Epoch(1), Lsn(0), vec![], vec![], None)
        .await
        .is_err());
    let meta = VolumeMeta {
        name: "v".into(),
        size_bytes: 1 << 30,
        page_size: PAGE_SIZE as u32,
        epoch: 5,
        version: 1,
        pgs: Vec::new(),
        writer: 0,
        restoring: false,
    };
    assert_eq!(store.put_meta(meta.clone()).await.expect("put"), 1);
    assert!(matches!(
        append(&store, &k, 4, &[partial(2, 1, 4, 0, 0, b"b")]).await,
        Err(StoreError::Fenced {
            request: 4,
            known: 5,
            ..
        })
    ));
    store.close().await;
    let store = open(temp.path());
    assert_eq!(store.segment_state(&k).epoch, Epoch(5));
    assert!(append(&store, &k, 4, &[partial(2, 1, 4, 0, 0, b"b")])
        .await
        .is_err());
    assert_eq!(
        append(&store, &k, 5, &[partial(2, 1, 5, 0, 0, b"b")])
            .await
            .expect("append"),
        Lsn(2)
    );
    // Metadata keeps the highest version.
    let older = VolumeMeta {
        version: 0,
        epoch: 9,
        ..meta.clone()
    };
    assert_eq!(store.put_meta(older).await.expect("put"), 1);
    assert_eq!(store.get_meta("v"), Some(meta));
    assert_eq!(
        store.segment_state(&k).epoch,
        Epoch(5),
        "a stale put changes nothing"
    );
    store.close().await;
}

#[tokio::test]
async fn fetch_returns_the_complete_chain_only() {
    let temp = TempDir::new("fetch");
    let k = key("v", 0);
    let store = open(temp.path());
    let records = history();
    let mut held: Vec<Record> = records.clone();
    held.remove(5); // hole at 6: SCL 5
    append(&store, &k, 1, &held).await.expect("append");
    let (fetched, scl) = store.fetch_records(&k, Lsn(2), 0).await.expect("fetch");
    assert_eq!(scl, Lsn(5));
    assert_eq!(fetched, records[2..5].to_vec());
    let (fetched, _) = store.fetch_records(&k, Lsn(0), 1).await.expect("fetch");
    assert_eq!(fetched.len(), 1, "at least one record");
    assert!(store.segment_has_gap(&k));
    store.close().await;
}

#[tokio::test]
async fn corrupt_record_on_disk_is_never_served() {
    let temp = TempDir::new("corrupt");
    let k = key("v", 0);
    let store = open(temp.path());
    append(&store, &k, 1, &[full(1, 0, 1, 3, 0x5a)])
        .await
        .expect("append");
    // Bit rot in the page data, behind the store's back.
    let log = temp.path().join("log").join("00000001.log");
    let mut bytes = std::fs::read(&log).expect("read");
    let at = bytes.iter().rposition(|b| *b != 0).expect("data") - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&log, &bytes).expect("write");
    let read = store.read_page(&k, PageId(3), Lsn(1), Lsn(0)).await;
    assert!(
        matches!(read, Err(StoreError::Corrupt { lsn: 1, .. })),
        "{read:?}"
    );
    let fetch = store.fetch_records(&k, Lsn(0), 0).await;
    assert!(
        matches!(fetch, Err(StoreError::Corrupt { .. })),
        "{fetch:?}"
    );
    store.close().await;
}

impl Store {
    fn shared_syncs(&self) -> u64 {
        self.shared_for_tests().syncs.load(Ordering::Relaxed)
    }
}

/// Back-pressure: over the hot-log limit a writer's append waits (at most APPEND_HOLD_MAX) and the
/// wait is counted; gap-fill appends and heartbeats never wait.
#[tokio::test]
async fn writer_appends_wait_while_the_hot_log_is_over_its_limit() {
    use std::time::{Duration, Instant};
    let temp = TempDir::new("hold");
    let store = open(temp.path());
    let shared = store.shared_for_tests();
    shared.hot_log_limit.store(64 << 10, Ordering::Relaxed);
    let k = key("v", 0);
    let records: Vec<Record> = (1..=40u64).map(|l| full(l, l - 1, 1, l, 0x42)).collect();
    // Under the limit: no wait.
    let started = Instant::now();
    append(&store, &k, 1, &records[..20]).await.expect("append");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(shared.log_bytes.load(Ordering::Relaxed) > 64 << 10);
    // Over it, and nothing can fold (no hints): a writer's append waits its longest.
    let started = Instant::now();
    append(&store, &k, 1, &records[20..21])
        .await
        .expect("append");
    assert!(started.elapsed() >= crate::store::APPEND_HOLD_MAX);
    assert!(shared.appends_held_ms.load(Ordering::Relaxed) >= 2000);
    // Gap-fill and heartbeats pass at once.
    let started = Instant::now();
    assert_eq!(
        gossip(&store, &k, &records[21..30]).await.expect("gossip"),
        Lsn(30)
    );
    append(&store, &k, 1, &[]).await.expect("heartbeat");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Room again: no wait.
    shared.hot_log_limit.store(1 << 30, Ordering::Relaxed);
    let started = Instant::now();
    assert_eq!(
        append(&store, &k, 1, &records[30..]).await.expect("append"),
        Lsn(40)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    store.close().await;
}

/// Issue 16, defensive reads: a segment that missed a recovery still holds the records that
/// recovery truncated; a reader that names the truncation is refused (it reads elsewhere) instead
/// of being served a record that is no longer part of the PG. Fails with a read path that ignores
/// the reader's history (it serves record 6 of epoch 1).
#[tokio::test]
async fn a_segment_that_missed_a_recovery_serves_no_read_of_a_reader_that_knows_it() {
    let temp = TempDir::new("read-history");
    let store = open(temp.path());
    let k = key("v", 0);
    let records: Vec<Record> = (1..=6u64)
        .map(|lsn| full(lsn, lsn - 1, 1, 0, lsn as u8))
        .collect();
    append(&store, &k, 1, &records).await.expect("append");
    let recovery = [Truncation {
        epoch: Epoch(2),
        after: Lsn(3),
    }];
    let refused = store
        .read_page_for(&k, PageId(0), Lsn(6), Lsn(0), &recovery)
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::HistoryBehind {
                epoch: 2,
                after: 3,
                ..
            })
        ),
        "expected a refusal, got {:?}",
        refused.map(|(_, scl)| format!("a page (SCL {scl})"))
    );
    // A reader that knows no truncation is served, as before.
    assert_eq!(page(&store, &k, 0, 6).await, vec![6u8; PAGE_SIZE]);
    store.close().await;
}

/// A node holds at most so many segments: an OpenSegment or Append that would create one more
/// is refused as from a full node, naming the count; the segments it holds go on.
#[tokio::test]
async fn a_node_refuses_segments_beyond_its_limit() {
    let temp = TempDir::new("segments-max");
    let store = open(temp.path());
    store
        .shared_for_tests()
        .segments_max
        .store(2, Ordering::Relaxed);
    for volume in ["a", "b"] {
        store
            .open_segment(key(volume, 0), Epoch(1), Lsn(0), vec![], vec![], None)
            .await
            .expect("room");
    }
    let refused = store
        .open_segment(key("c", 0), Epoch(1), Lsn(0), vec![], vec![], None)
        .await
        .expect_err("a third segment");
    assert!(
        matches!(&refused, StoreError::Full(m) if m.contains("holds 2 segments")),
        "{refused}"
    );
    let refused = append(&store, &key("d", 0), 1, &[partial(1, 0, 1, 0, 0, b"x")])
        .await
        .expect_err("an append creating a segment");
    assert!(matches!(refused, StoreError::Full(_)), "{refused}");
    assert_eq!(
        append(&store, &key("a", 0), 1, &[partial(1, 0, 1, 0, 0, b"x")])
            .await
            .expect("a held segment"),
        Lsn(1)
    );
    assert!(!store.segment_exists(&key("c", 0)) && !store.segment_exists(&key("d", 0)));
    store.close().await;
}

/// A writer's records that would wait above a segment's SCL (a hole before them) beyond the
/// bound are left out (not stored, so not acknowledged), per segment and per node; the append's
/// records that extend the chain and its hints always go in, and gap-fill is always taken; once
/// the hole is closed the writer's records go in again.
#[tokio::test]
async fn records_waiting_above_the_scl_are_bounded() {
    let temp = TempDir::new("waiting-max");
    let store = open(temp.path());
    // Room for about three full-page records per segment (six on the node).
    store
        .shared_for_tests()
        .waiting_max
        .store(3 * PAGE_SIZE as u64 + 1024, Ordering::Relaxed);
    let holds = |k: &SegmentKey, lsn: u64| {
        let index = crate::lock(&store.shared_for_tests().index);
        index.segment(k).is_some_and(|s| s.get(Lsn(lsn)).is_some())
    };
    let left_out = || {
        store
            .shared_for_tests()
            .waiting_records_left_out
            .load(Ordering::Relaxed)
    };
    let k = key("v", 0);
    let chain: Vec<Record> = (1..=8).map(|lsn| full(lsn, lsn - 1, 1, lsn, 7)).collect();
    // LSN 1 is missing: 2..=4 wait.
    assert_eq!(
        append(&store, &k, 1, &chain[1..4])
            .await
            .expect("under the bound"),
        Lsn(0)
    );
    assert!((2..=4).all(|lsn| holds(&k, lsn)));
    // 5 and 6 would wait beyond the segment's bound: left out. The append's hints go in.
    assert_eq!(
        append_marked(&store, &k, &chain[4..6], 9, crate::now_us())
            .await
            .expect("taken"),
        Lsn(0)
    );
    assert!(
        !holds(&k, 5) && !holds(&k, 6),
        "records beyond the bound were stored"
    );
    assert_eq!(left_out(), 2);
    let pgcl = crate::lock(&store.shared_for_tests().index)
        .slot(&k)
        .map(|slot| slot.pgcl_hint);
    assert_eq!(
        pgcl,
        Some(Lsn(9)),
        "the hints of an append whose records were left out"
    );
    // Other segments of the node: each its own bound, and the node's (twice it) for all.
    let other = key("w", 0);
    assert_eq!(
        append(&store, &other, 1, &chain[1..4]).await.expect("room"),
        Lsn(0)
    );
    assert!((2..=4).all(|lsn| holds(&other, lsn)));
    let third = key("x", 0);
    assert_eq!(
        append(&store, &third, 1, &chain[1..2])
            .await
            .expect("taken"),
        Lsn(0)
    );
    assert!(
        !holds(&third, 2),
        "a record beyond the node's bound was stored"
    );
    assert_eq!(left_out(), 3);
    // Records that extend the chain are taken whatever waits.
    assert_eq!(
        append(&store, &third, 1, &chain[..1])
            .await
            .expect("extends"),
        Lsn(1)
    );
    assert_eq!(
        append(&store, &other, 1, &chain[..1])
            .await
            .expect("extends"),
        Lsn(4)
    );
    // Gap-fill is never refused; then the writer's records go in again.
    assert_eq!(
        gossip(&store, &k, &chain[..1]).await.expect("gap-fill"),
        Lsn(4)
    );
    assert_eq!(
        append(&store, &k, 1, &chain[4..])
            .await
            .expect("after the fill"),
        Lsn(8)
    );
    store.close().await;
}

/// A writer's consistency points carry the writer's clock; the node keeps each within the mark
/// skew of its own clock and never before the previous one. A writer whose clock is far behind
/// would otherwise date recent points into the past, and retention (which keeps every point of
/// its window) would delete archived runs the window still needs.
#[tokio::test]
async fn a_writer_clock_cannot_date_consistency_points_into_the_past() {
    let temp = TempDir::new("mark-skew");
    let store = open(temp.path());
    store.set_mark_skew(std::time::Duration::from_secs(5));
    let k = key("v", 0);
    let before = crate::now_us();
    // A clock at the Unix epoch, then one a day ahead, then one a day behind.
    append_marked(&store, &k, &[partial(1, 0, 1, 0, 0, b"a")], 1, 1)
        .await
        .expect("append");
    append_marked(
        &store,
        &k,
        &[partial(2, 1, 1, 0, 0, b"b")],
        2,
        before + 86_400_000_000,
    )
    .await
    .expect("append");
    append_marked(
        &store,
        &k,
        &[partial(3, 2, 1, 0, 0, b"c")],
        3,
        before - 86_400_000_000,
    )
    .await
    .expect("append");
    let after = crate::now_us();
    let marks = store.marks_between(&k, Lsn(0), Lsn(3));
    assert_eq!(marks.len(), 3, "{marks:?}");
    for mark in &marks {
        assert!(
            mark.time_us >= before - 5_000_000 && mark.time_us <= after + 5_000_000,
            "a point dated outside the skew: {mark:?} (node clock {before}..{after})"
        );
    }
    assert!(
        marks.windows(2).all(|w| w[0].time_us <= w[1].time_us),
        "points out of time order: {marks:?}"
    );
    store.close().await;
}

/// A node holds the metadata of at most so many volumes: a PutVolumeMeta of one more is refused
/// as from a full node, naming the count; the volumes it holds are still updated.
#[tokio::test]
async fn a_node_refuses_volumes_beyond_its_limit() {
    let temp = TempDir::new("volumes-max");
    let store = open(temp.path());
    store
        .shared_for_tests()
        .volumes_max
        .store(2, Ordering::Relaxed);
    let meta = |name: &str, version: u64| VolumeMeta {
        name: name.into(),
        size_bytes: 1 << 30,
        page_size: PAGE_SIZE as u32,
        epoch: 1,
        version,
        pgs: Vec::new(),
        writer: 0,
        restoring: false,
    };
    for name in ["a", "b"] {
        assert_eq!(store.put_meta(meta(name, 1)).await.expect("room"), 1);
    }
    let refused = store
        .put_meta(meta("c", 1))
        .await
        .expect_err("a third volume");
    assert!(
        matches!(&refused, StoreError::Full(m) if m.contains("metadata of 2 volumes")),
        "{refused}"
    );
    assert_eq!(
        store.put_meta(meta("a", 2)).await.expect("a held volume"),
        2
    );
    assert!(store.get_meta("c").is_none());
    store.close().await;
}

/// A key command (a KMS) that fails when a new volume's first data key is made fails that
/// volume's request only: the key is made before the job reaches the appender, so the appender
/// (which hardens every volume's writes) never sees the failure, and the other volumes' writes
/// go on. (Made on the appender thread, the failure stopped every write until a restart.)
#[tokio::test]
async fn a_failing_kms_fails_only_the_new_volumes_request() {
    let temp = TempDir::new("kms-fails");
    let flag = temp.path().join("kms-down");
    let command = format!(
        r#"case "$1" in id) echo kms-test:1;; wrap) if [ -e {f} ]; then echo down >&2; exit 1; fi; cat;; unwrap) cat;; esac"#,
        f = flag.display()
    );
    let kek = sixfold_keys::Kek::load(&sixfold_keys::KekSource::Command(command)).expect("kek");
    let store = Store::open_with_key(&temp.path().join("node"), Some(kek))
        .expect("store")
        .0;
    let a = key("a", 0);
    assert_eq!(
        append(&store, &a, 1, &[partial(1, 0, 1, 0, 0, b"x")])
            .await
            .expect("a"),
        Lsn(1)
    );
    std::fs::write(&flag, b"").expect("flag");
    let refused = append(&store, &key("b", 0), 1, &[partial(1, 0, 1, 0, 0, b"y")])
        .await
        .expect_err("no key for b");
    assert!(refused.to_string().contains("data key"), "{refused}");
    assert_eq!(
        append(&store, &a, 1, &[partial(2, 1, 1, 0, 0, b"z")])
            .await
            .expect("a's writes go on"),
        Lsn(2)
    );
    std::fs::remove_file(&flag).expect("flag");
    assert_eq!(
        append(&store, &key("b", 0), 1, &[partial(1, 0, 1, 0, 0, b"y")])
            .await
            .expect("b once the KMS is back"),
        Lsn(1)
    );
    store.close().await;
}

/// Changing the key-encryption key: a node started with the new KEK and the previous one
/// rewraps its data keys (the data stays as it is) and reads everything written before; then
/// it starts with the new KEK alone, and the previous one alone is refused, naming the new.
/// A key another node published under the previous KEK still opens while it is given.
#[tokio::test]
async fn the_key_encryption_key_changes_without_rewriting_data() {
    let temp = TempDir::new("kek-change");
    let dir = temp.path().join("node");
    let old_hex = sixfold_keys::Kek::generate_hex().expect("kek");
    let new_hex = sixfold_keys::Kek::generate_hex().expect("kek");
    let kek = |hex: &str| sixfold_keys::Kek::from_hex(hex).expect("kek");
    let k = key("v", 0);
    let records = history();
    let published = {
        let store = Store::open_with_key(&dir, Some(kek(&old_hex)))
            .expect("store")
            .0;
        append(&store, &k, 1, &records).await.expect("append");
        // Another node's key, as it would publish it beside archived objects.
        let other = TempDir::new("kek-change-other");
        let other_ring =
            crate::keyring::Keyring::open(other.path(), Some(kek(&old_hex))).expect("ring");
        other_ring.sealer("v").expect("a key");
        let mut published = other_ring.wrapped_all();
        published.retain(|w| w.scope == "v");
        store.close().await;
        published
    };
    let store = Store::open_changing_key(&dir, Some(kek(&new_hex)), Some(kek(&old_hex)))
        .expect("the change")
        .0;
    for read_lsn in [4, 8] {
        assert_eq!(
            page(&store, &k, 7, read_lsn).await,
            model(&records, 7, read_lsn)
        );
    }
    store
        .keys()
        .adopt(&published[0])
        .expect("a key published under the previous KEK opens");
    store.close().await;
    let store = Store::open_with_key(&dir, Some(kek(&new_hex)))
        .expect("the new KEK alone")
        .0;
    assert_eq!(page(&store, &k, 8, 8).await, model(&records, 8, 8));
    assert!(
        store.keys().adopt(&published[0]).is_err(),
        "no previous KEK given"
    );
    store.close().await;
    let Err(refused) = Store::open_with_key(&dir, Some(kek(&old_hex))) else {
        panic!("the previous KEK alone opened the store");
    };
    let new_id = kek(&new_hex).id().to_string();
    assert!(refused.to_string().contains(&new_id), "{refused}");
}
