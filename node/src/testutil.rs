//! Test helpers: temporary directories and records.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use sixfold_proto::record;
use sixfold_proto::wire::{ByteRange, Record};
use sixfold_proto::{Epoch, Lsn, PageId, PAGE_SIZE};

/// What a writer's append carries besides its records (tests): its epoch, its VDL (and VCL),
/// PGCL and fold limit, and a consistency point.
pub fn writer_source(
    epoch: u64,
    vdl: u64,
    pgcl: u64,
    fold_limit: u64,
    mark: crate::index::Mark,
) -> crate::appender::Source {
    crate::appender::Source::Writer {
        epoch: Epoch(epoch),
        peers: vec!["127.0.0.1:1".into()],
        writer_vcl: Lsn(vdl),
        writer_vdl: Lsn(vdl),
        pgcl: Lsn(pgcl),
        fold_limit: Lsn(fold_limit),
        mark,
        addr: String::new(),
        membership: None,
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sixfold-node-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A record writing `bytes` at `offset` of `page`.
pub fn partial(
    lsn: u64,
    backlink: u64,
    epoch: u64,
    page: u64,
    offset: u32,
    bytes: &[u8],
) -> Record {
    record::seal(
        Lsn(lsn),
        Lsn(backlink),
        Epoch(epoch),
        PageId(page),
        vec![ByteRange {
            offset,
            data: Bytes::copy_from_slice(bytes),
        }],
    )
}

/// A record rewriting all of `page` with `fill`.
pub fn full(lsn: u64, backlink: u64, epoch: u64, page: u64, fill: u8) -> Record {
    record::seal(
        Lsn(lsn),
        Lsn(backlink),
        Epoch(epoch),
        PageId(page),
        vec![ByteRange {
            offset: 0,
            data: Bytes::from(vec![fill; PAGE_SIZE]),
        }],
    )
}
