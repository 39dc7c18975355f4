//! Fuzz targets: every decoder of the node that takes bytes from outside (its own disk, peers,
//! writers, admins, the object store), and a stateful target that drives [`Segment`] with
//! arbitrary operations. Each function takes arbitrary bytes and must never panic; where it
//! decodes something, it encodes it again and checks the round trip; the stateful target checks
//! the segment's invariants after every step.
//!
//! Driven two ways: by cargo-fuzz (`fuzz/`, coverage-guided, `scripts/fuzz.sh`), and by a
//! bounded run over random and mutated inputs in the node's unit tests (`fuzz_tests`), which
//! also replays every input kept in `fuzz/corpus/` (crashes found once stay there as
//! regressions). A decoder wrapped in a checksum is fed twice: as the bytes are, and with the
//! checksum made right, so that the fuzzer reaches the structure behind it.

use std::sync::{Arc, OnceLock};

use prost::Message;
use sixfold_proto::wire::{self, Record, VolumeMeta};
use sixfold_proto::{record, Epoch, Lsn, PageId, PgId, PAGE_SIZE};

use crate::checkpoint::Checkpoint;
use crate::frame::{self, Decoded};
use crate::keyring::Keyring;
use crate::pagestore::{self, PageImage, Stored};
use crate::request;
use crate::segment::{Admission, Location, RecordMeta, Segment, Truncation};

/// A keyring with a KEK (in a directory of its own under the system's temp dir), the same for
/// every call of the process: sealed units are fuzzed too.
fn sealed_keys() -> &'static Arc<Keyring> {
    static KEYS: OnceLock<Arc<Keyring>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sixfold-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kek = sixfold_keys::Kek::from_hex(&"11".repeat(32)).expect("a fixed test KEK");
        let keys = Arc::new(Keyring::open(&dir, Some(kek)).expect("a keyring for fuzzing"));
        // Make the volume key now (a file write): not on every input.
        keys.sealer("v").expect("a data key");
        keys
    })
}

fn plain_keys() -> &'static Arc<Keyring> {
    static KEYS: OnceLock<Arc<Keyring>> = OnceLock::new();
    KEYS.get_or_init(Keyring::plaintext)
}

/// `len | crc | payload` around `payload`, as the hot log stores it.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Hot-log frames ([`frame::decode`]): raw, and as the payload of a frame with a right crc,
/// with and without keys. A decoded frame names a valid volume and encodes back to itself.
pub fn hot_log_frame(data: &[u8]) {
    for keys in [plain_keys(), sealed_keys()] {
        for bytes in [data.to_vec(), framed(data)] {
            let Decoded::Frame {
                frame, len, sealed, ..
            } = frame::decode(&bytes, keys)
            else {
                continue;
            };
            assert!(len <= bytes.len());
            assert!(
                request::volume_name(&frame.volume).is_ok(),
                "replay accepted a frame for volume {:?}",
                frame.volume
            );
            let encoded = frame::encode(&frame.volume, frame.pg, &frame.body);
            let stored = if sealed {
                frame::seal(&encoded, keys)
                    .expect("sealing")
                    .expect("keys on")
                    .bytes
            } else {
                encoded.bytes
            };
            match frame::decode(&stored, keys) {
                Decoded::Frame { frame: again, .. } => assert_eq!(again, frame),
                other => panic!("a frame re-encoded does not decode: {other:?}"),
            }
        }
    }
}

/// A record's canonical encoding ([`record::decode_canonical`]), then what the node does with a
/// record it accepts: validate it, and apply a valid one to a page.
pub fn record(data: &[u8]) {
    let Ok(decoded) = record::decode_canonical(data) else {
        return;
    };
    let mut encoded = Vec::new();
    record::encode_canonical(&decoded, &mut encoded);
    assert_eq!(record::decode_canonical(&encoded).as_ref(), Ok(&decoded));
    record_checks(&decoded);
}

fn record_checks(decoded: &Record) {
    let pg = PgId(u32::try_from(decoded.page / sixfold_proto::PG_PAGES).unwrap_or(u32::MAX));
    if record::validate(decoded, pg).is_ok() {
        let mut page = vec![0u8; PAGE_SIZE];
        record::apply(decoded, &mut page);
        let _ = record::is_full_page(decoded);
    }
}

/// A page-store slot: a 64-byte meta entry and the page's stored bytes
/// ([`pagestore::decode_slot`]), with and without keys; and a slot written by the store reads
/// back as its image.
pub fn page_slot(data: &[u8]) {
    let meta_len = pagestore::META_BYTES as usize;
    let mut meta = [0u8; 64];
    let n = data.len().min(meta_len);
    meta[..n].copy_from_slice(&data[..n]);
    let mut stored = data.get(meta_len..).unwrap_or_default().to_vec();
    stored.resize(PAGE_SIZE, 0);
    let page = PageId(u64::from(data.first().copied().unwrap_or(0)));
    for keys in [plain_keys(), sealed_keys()] {
        let _ = pagestore::decode_slot("v", page, &meta, stored.clone(), keys);
        let _ = pagestore::decode_slot("v", page, &meta, data.to_vec(), keys);
        let image = PageImage {
            page,
            lsn: Lsn(u64::from_le_bytes(meta[..8].try_into().expect("8 bytes"))),
            data: stored.clone(),
        };
        let sealer = keys.sealer("v").expect("sealer");
        let (entry, bytes) =
            pagestore::stored_form("v", &image, sealer.as_deref()).expect("store a page");
        let read = pagestore::decode_slot("v", page, &entry, bytes.into_owned(), keys);
        if image.lsn == Lsn::ZERO && entry.iter().all(|b| *b == 0) {
            continue;
        }
        assert_eq!(
            read,
            Stored::Page {
                lsn: image.lsn,
                data: image.data
            }
        );
    }
}

/// The fold journal ([`pagestore::decode_journal`]): raw, and with a right magic, count and
/// crc around the bytes; what decodes is encoded back.
pub fn fold_journal(data: &[u8]) {
    let pg = PgId(u32::from(data.first().copied().unwrap_or(0) % 4));
    let mut fixed = data.to_vec();
    if fixed.len() >= 20 {
        let entry = 16 + PAGE_SIZE;
        let count = (fixed.len() - 20) / entry;
        fixed.truncate(20 + count * entry);
        fixed[..8].copy_from_slice(&pagestore::JOURNAL_MAGIC.to_le_bytes());
        fixed[16..20].copy_from_slice(&(count as u32).to_le_bytes());
        let crc = crc32c::crc32c(&fixed);
        fixed.extend_from_slice(&crc.to_le_bytes());
    }
    // A journal whose entries come from the input's 16-byte chunks (page, LSN), each with a
    // page of zeros: entries (4 KiB each) without inputs of that size.
    let mut synthesized = Vec::new();
    if data.len() >= 20 {
        let chunks: Vec<&[u8]> = data[20..].chunks_exact(16).take(4).collect();
        synthesized.extend_from_slice(&pagestore::JOURNAL_MAGIC.to_le_bytes());
        synthesized.extend_from_slice(&data[8..16]);
        synthesized.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for chunk in chunks {
            synthesized.extend_from_slice(chunk);
            synthesized.extend(std::iter::repeat_n(0u8, PAGE_SIZE));
        }
        let crc = crc32c::crc32c(&synthesized);
        synthesized.extend_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &fixed[..], &synthesized[..]] {
        let Some((to, images)) = pagestore::decode_journal(bytes, pg) else {
            continue;
        };
        for image in &images {
            assert!(pg.contains(image.page) && image.data.len() == PAGE_SIZE);
        }
        let again = pagestore::encode_journal(to, &images);
        assert_eq!(pagestore::decode_journal(&again, pg), Some((to, images)));
    }
}

/// The checkpoint ([`Checkpoint::decode`]): raw, and with its crc made right.
pub fn checkpoint(data: &[u8]) {
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    for bytes in [data, &fixed[..]] {
        if let Some(decoded) = Checkpoint::decode(bytes) {
            assert_eq!(Checkpoint::decode(&decoded.encode()), Some(decoded));
        }
    }
}

/// Volume metadata as a node stores it (crc | sealed box or protobuf), with and without keys,
/// and as a writer or admin sends it (the name check `PutVolumeMeta` makes).
pub fn volume_meta(data: &[u8]) {
    let mut fixed = crc32c::crc32c(data).to_le_bytes().to_vec();
    fixed.extend_from_slice(data);
    for keys in [plain_keys(), sealed_keys()] {
        for bytes in [data, &fixed[..]] {
            if let Ok(Some(meta)) = crate::meta::decode(bytes, "v", keys) {
                let _ = request::volume_name(&meta.name);
                for placement in &meta.pgs {
                    let _ = crate::meta::membership_epoch(placement);
                }
            }
        }
    }
    if let Ok(meta) = VolumeMeta::decode(data) {
        let _ = request::volume_meta(&meta);
        assert_eq!(
            VolumeMeta::decode(meta.encode_to_vec().as_slice()),
            Ok(meta)
        );
    }
}

/// Archived objects ([`sixfold_archive::format`]): runs and page chunks, plain and sealed
/// envelopes, raw and with a right checksum; what restore does with a run's records.
pub fn archive_object(data: &[u8]) {
    use sixfold_archive::format;
    let _ = format::split_sealed(data);
    let _ = format::clear_part(data);
    // A right header and checksum around the bytes as an lz4 block of some length.
    let mut fixed = Vec::new();
    fixed.extend_from_slice(b"SXFA");
    let kind = if data.first().is_some_and(|b| b & 1 == 1) {
        sixfold_archive::format::PAGES
    } else {
        sixfold_archive::format::RUN
    };
    fixed.extend_from_slice(kind);
    let rest = {
        let mut rest = (data.len() as u64 * 4).to_le_bytes().to_vec();
        rest.extend_from_slice(data);
        rest
    };
    fixed.extend_from_slice(&crc32c::crc32c(&rest).to_le_bytes());
    fixed.extend_from_slice(&rest);
    for bytes in [data, &fixed[..]] {
        if let Ok(run) = format::decode_run(bytes) {
            assert_eq!(
                format::decode_run(&format::encode_run(&run)).as_ref(),
                Ok(&run)
            );
            for record in &run.records {
                record_checks(record);
            }
        }
        if let Ok(pages) = format::decode_pages(bytes) {
            assert_eq!(
                format::decode_pages(&format::encode_pages(&pages)).as_ref(),
                Ok(&pages)
            );
            for image in pages.pages {
                let _ = PageImage::from_wire(image, PgId(0), Lsn(u64::MAX));
            }
        }
    }
}

/// Wrapped data keys and sealed boxes ([`sixfold_keys`]): decode, encode back, open.
pub fn keys(data: &[u8]) {
    if let Ok(wrapped) = sixfold_keys::WrappedKey::decode(data) {
        let again = sixfold_keys::WrappedKey::decode(&wrapped.encode());
        assert!(again.is_ok_and(|again| again == wrapped));
        let _ = sealed_keys().adopt(&wrapped);
    }
    let _ = sealed_keys().open_box(b"ctx", data.to_vec());
}

/// Requests as the service receives them: the first byte picks the message, the rest is its
/// protobuf; each runs through the checks the service makes before anything reaches the store.
/// The append wire ([`sixfold_transport::frames`]) as a node reads it: the decoder over the
/// bytes (each frame encodes back to itself; Append payloads and refusals decode or fail
/// cleanly), then the node's connection loop ([`crate::append_server`]) over the same bytes
/// after the preface, with a store that acknowledges everything: it never panics, and every
/// frame it sends back is a valid one.
pub fn append_wire(data: &[u8]) {
    use bytes::BytesMut;
    use sixfold_transport::frames::{self, Kind};
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(frame)) = frames::decode(&mut buffer) {
        let mut again = BytesMut::new();
        frames::encode(&mut again, frame.kind, frame.stream, &frame.payload);
        assert_eq!(frames::decode(&mut again), Ok(Some(frame.clone())));
        match frame.kind {
            Kind::Append => {
                let _ = wire::AppendRequest::decode(frame.payload);
            }
            Kind::Refused => {
                let _ = frames::decode_refusal(frame.payload);
            }
            _ => {}
        }
    }
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime for the fuzz target");
    }
    let input = [&frames::APPEND_PREFACE[..], data].concat();
    RUNTIME.with(|runtime| {
        runtime.block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (client, server) = tokio::io::duplex(64 << 10);
            let peer = sixfold_transport::Peer {
                addr: None,
                tls: false,
                role: None,
            };
            let append = |request: wire::AppendRequest| async move {
                Ok(wire::AppendResponse {
                    scl: request.writer_vcl,
                })
            };
            let timing = crate::append_server::Timing {
                preface: std::time::Duration::from_secs(5),
                idle: std::time::Duration::from_secs(5),
                stall: std::time::Duration::from_secs(5),
            };
            let served = tokio::spawn(crate::append_server::serve_connection(
                server, peer, append, timing,
            ));
            let (mut read, mut write) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                let _ = write.write_all(&input).await;
                let _ = write.shutdown().await;
            });
            let mut answers = Vec::new();
            let _ = read.read_to_end(&mut answers).await;
            let _ = writer.await;
            served.await.expect("the connection loop never panics");
            let mut answers = BytesMut::from(&answers[..]);
            while let Some(frame) =
                frames::decode(&mut answers).expect("the node sends valid frames")
            {
                assert!(
                    matches!(frame.kind, Kind::Ack | Kind::Refused | Kind::Pong),
                    "the node sent {:?}",
                    frame.kind
                );
            }
        });
    });
}

pub fn request(data: &[u8]) {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(r) = wire::AppendRequest::decode(body) {
                if let Ok(key) = request::segment_key(r.segment.as_ref()) {
                    let _ = request::prepare_records(&key, Some(Epoch(r.epoch)), &r.records);
                }
                if let Ok(list) = request::truncations(&r.truncations) {
                    let _ = request::history_not_newer(&list, Epoch(r.epoch));
                }
                let _ = request::peers(&r.peers);
            }
        }
        1 => {
            if let Ok(r) = wire::OpenSegmentRequest::decode(body) {
                let _ = request::segment_key(r.segment.as_ref());
                let _ = request::truncations(&r.history);
                let _ = request::membership(r.membership.as_ref());
                let _ = request::peers(&r.peers);
            }
        }
        2 => {
            if let Ok(r) = wire::ChangeMembershipRequest::decode(body) {
                let _ = request::segment_key(r.segment.as_ref());
                let _ = request::membership(r.base.as_ref());
                let _ = request::membership(r.proposed.as_ref());
                let _ = request::membership(r.superseded.as_ref());
            }
        }
        _ => {
            if let Ok(r) = wire::ReadPageRequest::decode(body) {
                let _ = request::segment_key(r.segment.as_ref());
                let _ = request::truncations(&r.truncations);
            }
        }
    }
}

/// Reads operations from the fuzzer's bytes.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
}

/// The segment driven as the store drives it: inserts (retransmits, gaps, old epochs),
/// truncations, adopted histories, folds, hydration; [`Segment::check_invariants`] after every
/// step, and what each step promises: the SCL rises only through inserts and hydration and
/// falls only through a truncation; a record admitted is held until folded, truncated or
/// stepped over; nothing at or below the fold point is held.
pub fn segment_ops(data: &[u8]) {
    let mut ops = Ops(data);
    let mut segment = Segment::default();
    let location = Location {
        file: 1,
        offset: 0,
        len: 100,
        sealed: false,
    };
    while let Some(op) = ops.byte() {
        let before = segment.scl();
        let arg = |ops: &mut Ops<'_>| u64::from(ops.byte().unwrap_or(0));
        match op % 6 {
            0 | 1 => {
                let lsn = 1 + arg(&mut ops) % 64;
                let backlink = arg(&mut ops) % lsn;
                let flags = arg(&mut ops);
                let meta = RecordMeta {
                    location,
                    page: PageId(flags % 4),
                    backlink: Lsn(backlink),
                    epoch: Epoch(1 + (flags >> 2) % 4),
                    full_page: flags & 0x80 != 0,
                };
                let admission = segment.insert(Lsn(lsn), meta);
                assert!(segment.scl() >= before, "an insert lowered the SCL");
                if admission == Admission::New && Lsn(lsn) > segment.scl() {
                    assert!(
                        segment.get(Lsn(lsn)).is_some(),
                        "admitted {lsn} is not held"
                    );
                }
            }
            2 => {
                let epoch = Epoch(1 + arg(&mut ops) % 5);
                let after = Lsn(arg(&mut ops) % 64);
                segment.truncate(epoch, after);
            }
            3 => {
                let count = arg(&mut ops) % 4;
                let list: Vec<Truncation> = (0..count)
                    .map(|i| Truncation {
                        epoch: Epoch(1 + i + arg(&mut ops) % 3),
                        after: Lsn(arg(&mut ops) % 64),
                    })
                    .collect();
                if segment.adopt(&list).is_none() {
                    assert_eq!(
                        segment.scl(),
                        before,
                        "a history not adopted changed the SCL"
                    );
                }
            }
            4 => {
                let limit = Lsn(arg(&mut ops) % 64);
                let pages_max = 1 + (arg(&mut ops) % 4) as usize;
                let plan = segment.fold_plan(limit, pages_max);
                if let Some((last, _)) = plan.last() {
                    assert!(*last <= segment.scl() && *last <= limit.max(segment.folded()));
                    segment.forget_folded(*last);
                    assert_eq!(segment.folded(), *last);
                    assert_eq!(segment.scl(), before, "folding moved the SCL");
                }
            }
            _ => {
                let to = Lsn(arg(&mut ops) % 64);
                segment.hydrated(to);
                assert!(segment.scl() >= before, "hydration lowered the SCL");
            }
        }
        segment.check_invariants();
        assert!(segment.folded() <= segment.scl());
    }
}

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by name (the cargo-fuzz targets and the bounded run use this list).
pub const TARGETS: &[(&str, Target)] = &[
    ("hot_log_frame", hot_log_frame),
    ("record", record),
    ("page_slot", page_slot),
    ("fold_journal", fold_journal),
    ("checkpoint", checkpoint),
    ("volume_meta", volume_meta),
    ("archive_object", archive_object),
    ("keys", keys),
    ("request", request),
    ("segment_ops", segment_ops),
    ("append_wire", append_wire),
];
