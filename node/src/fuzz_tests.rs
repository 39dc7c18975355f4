//! The bounded run of the fuzz targets ([`crate::fuzz`]) in the test command: each target gets
//! the inputs kept in `fuzz/regressions/TARGET/` and `fuzz/corpus/TARGET/` (when a cargo-fuzz
//! run left one), valid encodings of what it decodes, and random mutations of all of these, for
//! a bounded number of runs with a fixed seed (`SIXFOLD_FUZZ_SEED` picks another,
//! `SIXFOLD_FUZZ_RUNS` the number). Coverage-guided fuzzing is `scripts/fuzz.sh`.

use std::path::Path;

use prost::Message;
use rand::{Rng, SeedableRng};
use sixfold_proto::wire;
use sixfold_proto::{record, Epoch, Lsn, PageId, PgId, PAGE_SIZE};

use crate::checkpoint::{Checkpoint, SegmentCheckpoint};
use crate::frame::{self, FrameBody};
use crate::fuzz::TARGETS;
use crate::index::SegmentKey;
use crate::pagestore::{self, PageImage};
use crate::segment::Truncation;

fn sample_record() -> wire::Record {
    record::seal(
        Lsn(7),
        Lsn(3),
        Epoch(2),
        PageId(5),
        vec![wire::ByteRange {
            offset: 100,
            data: vec![0xab; 64].into(),
        }],
    )
}

/// An Append of `rec` to PG 0 of volume "v".
fn sample_append(rec: wire::Record) -> wire::AppendRequest {
    wire::AppendRequest {
        segment: Some(wire::SegmentRef {
            volume: "v".into(),
            pg: 0,
        }),
        epoch: 2,
        records: vec![rec],
        ..Default::default()
    }
}

/// Valid inputs for `target`: the fuzzer's mutations start from what the decoder accepts.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let rec = sample_record();
    match target {
        "hot_log_frame" => {
            let frames = [
                frame::encode("v", PgId(0), &FrameBody::Record(rec)).bytes,
                frame::encode("v", PgId(1), &FrameBody::Epoch(Epoch(3))).bytes,
                frame::encode(
                    "vol",
                    PgId(2),
                    &FrameBody::History(vec![Truncation {
                        epoch: Epoch(2),
                        after: Lsn(9),
                    }]),
                )
                .bytes,
            ];
            // Whole frames, and their payloads (the target frames those with a right crc).
            let payloads: Vec<Vec<u8>> = frames.iter().map(|f| f[8..].to_vec()).collect();
            frames.into_iter().chain(payloads).collect()
        }
        "record" => {
            let mut out = Vec::new();
            record::encode_canonical(&rec, &mut out);
            vec![out]
        }
        "page_slot" => vec![vec![0u8; 64 + PAGE_SIZE], vec![1u8; 80]],
        "fold_journal" => vec![pagestore::encode_journal(
            Lsn(9),
            &[PageImage {
                page: PageId(1),
                lsn: Lsn(9),
                data: vec![3; PAGE_SIZE],
            }],
        )],
        "checkpoint" => {
            let mut checkpoint = Checkpoint::default();
            checkpoint.volumes.insert("v".into(), Epoch(4));
            checkpoint.segments.insert(
                SegmentKey {
                    volume: "v".into(),
                    pg: PgId(0),
                },
                SegmentCheckpoint {
                    folded: Lsn(12),
                    truncations: vec![Truncation {
                        epoch: Epoch(3),
                        after: Lsn(10),
                    }],
                    membership: None,
                },
            );
            let encoded = checkpoint.encode();
            // The target appends the crc itself for its second try.
            vec![encoded[..encoded.len() - 4].to_vec(), encoded]
        }
        "volume_meta" => vec![wire::VolumeMeta {
            name: "v".into(),
            size_bytes: 1 << 30,
            page_size: 4096,
            epoch: 2,
            version: 3,
            pgs: vec![wire::PgPlacement {
                pg: 0,
                nodes: vec!["127.0.0.1:7001".into()],
                membership_epoch: 0,
                membership: None,
            }],
            writer: 0,
            restoring: false,
        }
        .encode_to_vec()],
        "archive_object" => vec![sixfold_archive::format::encode_run(&wire::ArchiveRun {
            volume: "v".into(),
            pg: 0,
            start: 6,
            end: 7,
            records: vec![rec],
            marks: vec![wire::ArchiveMark { vdl: 7, time_us: 1 }],
        })
        .to_vec()],
        "append_wire" => {
            let append = sample_append(rec);
            let mut out = bytes::BytesMut::new();
            use sixfold_transport::frames::{encode, encode_message, Kind};
            encode_message(&mut out, Kind::Append, 1, &append);
            encode(&mut out, Kind::Ping, 2, &[]);
            encode_message(&mut out, Kind::Append, 3, &append);
            vec![out.to_vec()]
        }
        "request" => {
            let append = sample_append(rec);
            let mut first = vec![0u8];
            first.extend_from_slice(&append.encode_to_vec());
            vec![first]
        }
        "keys" => {
            let kek = sixfold_keys::Kek::from_hex(&"22".repeat(32)).expect("kek");
            let nonces = sixfold_keys::NonceSource::new(1).expect("nonces");
            let (wrapped, key) =
                sixfold_keys::WrappedKey::generate(&kek, "v", nonces).expect("a data key");
            vec![
                wrapped.encode(),
                key.seal(b"ctx", b"a sealed box").expect("seal"),
            ]
        }
        "segment_ops" => vec![vec![0, 1, 0, 0, 0, 2, 1, 0, 4, 9, 1, 2, 3, 5, 4]],
        _ => Vec::new(),
    }
}

/// Files kept for `target` under `fuzz/` (regressions are committed; a corpus is what a
/// cargo-fuzz run left behind).
fn kept(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["regressions", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                out.push(bytes);
            }
        }
    }
    out
}

fn mutate(rng: &mut impl Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..5) {
            0 if !out.is_empty() => {
                let at = rng.random_range(0..out.len());
                out[at] ^= 1 << rng.random_range(0..8);
            }
            1 if !out.is_empty() => {
                let at = rng.random_range(0..out.len());
                out[at] = rng.random();
            }
            2 => out.truncate(rng.random_range(0..=out.len())),
            3 => {
                let at = rng.random_range(0..=out.len());
                let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                out.splice(at..at, junk);
            }
            _ => {
                let at = rng.random_range(0..=out.len());
                let interesting = [0u8, 0xff, 0x7f, 0x80, 0xa5];
                out.insert(at, interesting[rng.random_range(0..interesting.len())]);
            }
        }
    }
    out
}

#[test]
fn fuzz_targets_survive_a_bounded_run() {
    let seed: u64 = std::env::var("SIXFOLD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let runs: usize = std::env::var("SIXFOLD_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for (name, target) in TARGETS {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut inputs = seeds(name);
        assert!(!inputs.is_empty(), "no seed for target {name}");
        inputs.extend(kept(name));
        for input in &inputs {
            target(input);
        }
        for run in 0..runs {
            let input = if run % 8 == 0 {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect()
            } else {
                let base = &inputs[rng.random_range(0..inputs.len())];
                mutate(&mut rng, base)
            };
            let outcome = std::panic::catch_unwind(|| target(&input));
            if outcome.is_err() {
                panic!(
                    "fuzz target {name} panicked (seed {seed}, run {run}) on input {}",
                    hex(&input)
                );
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
