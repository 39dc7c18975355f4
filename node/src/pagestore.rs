//! The page store of one segment: the PG's pages as of its folded LSN, materialized on disk, so
//! that reads need only the records above it and the hot log can be garbage-collected.
//!
//! Files, in `data_dir/pages/<volume>/pg-<N>/`:
//! - `pages.dat`: page slot `i` (the i-th page of the PG) at byte `i * PAGE_SIZE`; sparse, so an
//!   unwritten page costs nothing;
//! - `pages.slots`: [`META_BYTES`] per slot: the LSN of the newest record folded into the page and
//!   a crc32c over page bytes as stored, LSN and page id; an all-zero entry means "never written"
//!   (zeros). `lsn u64 | crc u32 | magic u32 | key id [16] | nonce [12] | tag [16] | 0 u32`;
//! - `fold.journal`: the page images of the newest fold, checksummed (a double-write buffer).
//!
//! With encryption at rest on ([`crate::keyring`]), a slot holds its page sealed in place under
//! the volume's data key (AES-256-GCM, same length), and its meta entry the key id, nonce and tag
//! (magic [`META_MAGIC_SEALED`]); the page id and LSN are authenticated with it, so an image moved
//! to another slot or given another LSN does not open. Every rewrite of a slot is a new seal with
//! a new nonce. The journal is one sealed box (`"SFJS" | len u32 | box`). Plaintext slots and
//! journals (written with encryption off) still read.
//!
//! A fold writes its page images to the journal and fsyncs it, then overwrites the slots in place
//! and fsyncs them. A crash during the in-place writes can tear a page; the journal, complete and
//! durable before the first in-place write, is applied again at open ([`PageStore::open`]). Only
//! the newest fold's journal can be valid on disk (each fold replaces it, durably, before touching
//! a slot), so redoing it never takes a page back to an older image.
//!
//! Invariants:
//! - a slot's meta entry and data agree (crc) except while a fold is writing it in place, which
//!   readers never see (the fold holds `io` for writing, readers for reading);
//! - a page's image is the page's state as of its LSN, and that LSN only rises (an older image
//!   is never written over a newer one); whoever applies records to an image applies only those
//!   above its LSN (the page-LSN rule), so images from a peer (hydration) and from a redone
//!   journal compose with the records of the log.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sixfold_proto::{Lsn, PageId, PgId, PAGE_SIZE};

use sixfold_keys::{DataKey, Detached, KeyId, NONCE_BYTES, TAG_BYTES};

use crate::keyring::Keyring;
use crate::pagewrite::{SlotWriter, RUN_PAGES_MAX};

pub(crate) const META_BYTES: u64 = 64;
/// The slots' meta entries. (`pages.meta`, 16 bytes per slot, was the layout before
/// encryption at rest; a store that still has one is refused at open, never misread.)
const META_FILE: &str = "pages.slots";
const OLD_META_FILE: &str = "pages.meta";
const META_MAGIC: u32 = 0x5346_5047; // "SFPG"
const META_MAGIC_SEALED: u32 = 0x5346_5045; // "SFPE"
const JOURNAL_SEALED_MAGIC: &[u8; 4] = b"SFJS";
pub(crate) const JOURNAL_MAGIC: u64 = 0x5346_464f_4c44_4a31; // "SFFOLDJ1"
const JOURNAL_HEADER_BYTES: usize = 8 + 8 + 4;
const JOURNAL_ENTRY_BYTES: usize = 8 + 8 + PAGE_SIZE;

/// One page image to store: the page, the LSN of the newest record in it, its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageImage {
    pub page: PageId,
    pub lsn: Lsn,
    pub data: Vec<u8>,
}

impl PageImage {
    /// A page image from the network or the archive, checked: a page of `pg`, whole, and no
    /// newer than `at_most` (the fold point or base image it claims to be part of). The error
    /// says what is wrong; callers name where it came from.
    pub fn from_wire(
        image: sixfold_proto::wire::PageImage,
        pg: sixfold_proto::PgId,
        at_most: Lsn,
    ) -> Result<PageImage, String> {
        let page = PageId(image.page);
        if !pg.contains(page) || image.data.len() != PAGE_SIZE || image.lsn > at_most.0 {
            return Err(format!(
                "a bad page image ({page}, {} bytes, LSN {} with the image at {at_most})",
                image.data.len(),
                image.lsn
            ));
        }
        Ok(PageImage {
            page,
            lsn: Lsn(image.lsn),
            data: image.data.to_vec(),
        })
    }
}

/// Which stored image a write may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replace {
    /// Only an older one (folds, hydration, journal redo).
    OlderOnly,
    /// Any (repair of a damaged slot).
    Any,
}

/// What one step of the re-seal pass did ([`PageStore::reseal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResealStep {
    /// Pages sealed again under the current key.
    pub resealed: usize,
    /// Pages under an older key (or in the clear) that do not read back intact: left to the
    /// scrubber's repair; the pass sweeps their store again.
    pub unreadable: usize,
    /// The slot to go on from (`None`: the end of the store).
    pub next: Option<u64>,
}

/// What reading a slot found.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Never written: the page is zeros as far as the store knows.
    Absent,
    Page {
        lsn: Lsn,
        data: Vec<u8>,
    },
    /// Meta and data disagree, or the meta entry is malformed: damaged on disk.
    Corrupt(String),
}

#[derive(Debug)]
pub struct PageStore {
    dir: PathBuf,
    pg: PgId,
    /// The volume the PG belongs to (names its data key and is authenticated with each page).
    volume: String,
    keys: Arc<Keyring>,
    io: RwLock<Files>,
    /// The directory was fsync'd after the journal file existed, in this process.
    journal_dir_synced: AtomicBool,
}

#[derive(Debug)]
struct Files {
    data: File,
    meta: File,
    writer: SlotWriter,
}

fn page_checksum(page: PageId, lsn: Lsn, data: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(data);
    crc = crc32c::crc32c_append(crc, &lsn.0.to_le_bytes());
    crc32c::crc32c_append(crc, &page.0.to_le_bytes())
}

/// The meta entry of a slot that stores `stored` (the page, or its ciphertext with `sealed`).
fn meta_entry(
    page: PageId,
    lsn: Lsn,
    stored: &[u8],
    sealed: Option<(KeyId, Detached)>,
) -> [u8; META_BYTES as usize] {
    let mut meta = [0u8; META_BYTES as usize];
    meta[0..8].copy_from_slice(&lsn.0.to_le_bytes());
    meta[8..12].copy_from_slice(&page_checksum(page, lsn, stored).to_le_bytes());
    match sealed {
        None => meta[12..16].copy_from_slice(&META_MAGIC.to_le_bytes()),
        Some((key, detached)) => {
            meta[12..16].copy_from_slice(&META_MAGIC_SEALED.to_le_bytes());
            meta[16..32].copy_from_slice(&key.0);
            meta[32..32 + NONCE_BYTES].copy_from_slice(&detached.nonce);
            meta[44..44 + TAG_BYTES].copy_from_slice(&detached.tag);
        }
    }
    meta
}

/// What a slot's meta entry and its stored bytes (one page) hold: the image, checked (and
/// opened, if sealed), or what is wrong with them. Pure apart from the keys; never panics on
/// any bytes (fuzzed: [`crate::fuzz`]).
pub(crate) fn decode_slot(
    volume: &str,
    page: PageId,
    meta: &[u8; META_BYTES as usize],
    mut data: Vec<u8>,
    keys: &Keyring,
) -> Stored {
    if meta.iter().all(|b| *b == 0) {
        return Stored::Absent;
    }
    let word = |at: usize| u32::from_le_bytes([meta[at], meta[at + 1], meta[at + 2], meta[at + 3]]);
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&meta[0..8]);
    let lsn = Lsn(u64::from_le_bytes(lsn));
    let (crc, magic) = (word(8), word(12));
    if magic != META_MAGIC && magic != META_MAGIC_SEALED {
        return Stored::Corrupt(format!("bad meta entry for {page} (magic {magic:#x})"));
    }
    if data.len() != PAGE_SIZE {
        return Stored::Corrupt(format!("{page}: {} bytes stored, not a page", data.len()));
    }
    if page_checksum(page, lsn, &data) != crc {
        return Stored::Corrupt(format!("checksum mismatch for {page} (image of {lsn})"));
    }
    if magic == META_MAGIC_SEALED {
        let mut key = [0u8; 16];
        key.copy_from_slice(&meta[16..32]);
        let mut detached = Detached {
            nonce: [0; NONCE_BYTES],
            tag: [0; TAG_BYTES],
        };
        detached.nonce.copy_from_slice(&meta[32..32 + NONCE_BYTES]);
        detached.tag.copy_from_slice(&meta[44..44 + TAG_BYTES]);
        let opened = keys.key(KeyId(key)).and_then(|key| {
            key.open_detached(&page_context(volume, page, lsn), &detached, &mut data)
        });
        if let Err(e) = opened {
            return Stored::Corrupt(format!("{page} (image of {lsn}): {e}"));
        }
    }
    Stored::Page { lsn, data }
}

/// The meta entry and the bytes to store in the slot for `image`: sealed under `sealer`, or in
/// the clear.
pub(crate) fn stored_form<'a>(
    volume: &str,
    image: &'a PageImage,
    sealer: Option<&DataKey>,
) -> Result<([u8; META_BYTES as usize], Cow<'a, [u8]>), sixfold_keys::KeyError> {
    match sealer {
        Some(key) => {
            let mut data = image.data.clone();
            let context = page_context(volume, image.page, image.lsn);
            let detached = key.seal_detached(&context, &mut data)?;
            let meta = meta_entry(image.page, image.lsn, &data, Some((key.id(), detached)));
            Ok((meta, Cow::Owned(data)))
        }
        None => Ok((
            meta_entry(image.page, image.lsn, &image.data, None),
            Cow::Borrowed(&image.data),
        )),
    }
}

/// True when a meta entry is of an intact-looking image stored in the clear or under a key that
/// no longer seals new data (with encryption on): the re-seal pass rewrites it.
fn stale_entry(entry: &[u8], keys: &Keyring) -> bool {
    let magic = u32::from_le_bytes(entry[12..16].try_into().expect("4 bytes"));
    match magic {
        META_MAGIC => keys.enabled(),
        META_MAGIC_SEALED => !keys.is_current(KeyId(entry[16..32].try_into().expect("16 bytes"))),
        _ => false,
    }
}

/// What a sealed page's authenticated data says: which page of which volume, at which LSN.
fn page_context(volume: &str, page: PageId, lsn: Lsn) -> Vec<u8> {
    format!("sixfold page {volume} {} {}", page.0, lsn.0).into_bytes()
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl PageStore {
    /// Opens (creating) the store in `dir` and redoes the newest fold if its journal is valid.
    /// Returns the store and the fold LSN the journal brought the pages to, if any.
    pub fn open(
        dir: &Path,
        pg: PgId,
        volume: &str,
        keys: Arc<Keyring>,
    ) -> io::Result<(PageStore, Option<Lsn>)> {
        std::fs::create_dir_all(dir)?;
        if dir.join(OLD_META_FILE).exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds a page store of an older format ({OLD_META_FILE}); this version \
                     cannot read it: wipe the node's data directory and let repair copy its \
                     segments back from their peers",
                    dir.display()
                ),
            ));
        }
        let files = Files {
            data: open_rw(&dir.join("pages.dat"))?,
            meta: open_rw(&dir.join(META_FILE))?,
            writer: SlotWriter::open(&dir.join("pages.dat")),
        };
        if let Some(parent) = dir.parent() {
            crate::hotlog::sync_dir(parent)?;
        }
        crate::hotlog::sync_dir(dir)?;
        let store = PageStore {
            dir: dir.to_owned(),
            pg,
            volume: volume.to_owned(),
            keys,
            io: RwLock::new(files),
            journal_dir_synced: AtomicBool::new(false),
        };
        let redone = match std::fs::read(store.journal_path()) {
            Ok(bytes) => match store
                .open_journal(bytes)
                .and_then(|b| decode_journal(&b, pg))
            {
                Some((to_lsn, images)) => {
                    let sealer = store.sealer()?;
                    store.write_in_place(&images, Replace::OlderOnly, sealer.as_deref())?;
                    Some(to_lsn)
                }
                None => None,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok((store, redone))
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("fold.journal")
    }

    fn journal_context(&self) -> Vec<u8> {
        format!("sixfold fold journal {} {}", self.volume, self.pg.0).into_bytes()
    }

    /// A journal's plaintext: itself, or the box it is sealed in opened (`None`: torn, damaged
    /// or not openable, which is a journal not to redo).
    fn open_journal(&self, bytes: Vec<u8>) -> Option<Vec<u8>> {
        if bytes.get(..4) != Some(JOURNAL_SEALED_MAGIC) {
            return Some(bytes);
        }
        let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        let sealed = bytes.get(8..8usize.checked_add(len)?)?.to_vec();
        match self.keys.open_box(&self.journal_context(), sealed) {
            Ok(plain) => Some(plain),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "fold journal does not open: {e}");
                None
            }
        }
    }

    fn slot(&self, page: PageId) -> io::Result<u64> {
        if !self.pg.contains(page) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{page} is not in {}", self.pg),
            ));
        }
        Ok(page.0 - self.pg.first_page().0)
    }

    /// The LSN of the stored image of `page` (meta entry only, not verified), if there is one.
    pub fn lsn_of(&self, page: PageId) -> io::Result<Option<Lsn>> {
        let slot = self.slot(page)?;
        let files = self.io.read().unwrap_or_else(|p| p.into_inner());
        let mut meta = [0u8; META_BYTES as usize];
        if !read_fully_or_zero(&files.meta, &mut meta, slot * META_BYTES)?
            || meta.iter().all(|b| *b == 0)
        {
            return Ok(None);
        }
        Ok(Some(Lsn(u64::from_le_bytes(
            meta[0..8].try_into().expect("8 bytes"),
        ))))
    }

    /// Reads the stored image of `page`, verifying its checksum.
    pub fn read(&self, page: PageId) -> io::Result<Stored> {
        let slot = self.slot(page)?;
        let files = self.io.read().unwrap_or_else(|p| p.into_inner());
        let mut meta = [0u8; META_BYTES as usize];
        if !read_fully_or_zero(&files.meta, &mut meta, slot * META_BYTES)? {
            return Ok(Stored::Absent);
        }
        if meta.iter().all(|b| *b == 0) {
            return Ok(Stored::Absent);
        }
        let mut data = vec![0u8; PAGE_SIZE];
        read_fully_or_zero(&files.data, &mut data, slot * PAGE_SIZE as u64)?;
        drop(files);
        Ok(decode_slot(&self.volume, page, &meta, data, &self.keys))
    }

    /// Images newer than `after` from page slot `cursor` on, at most `max_pages` of them, and the
    /// slot to resume at (`None` once the scan reached the last slot ever written).
    pub fn scan(
        &self,
        after: Lsn,
        cursor: u64,
        max_pages: usize,
    ) -> io::Result<(Vec<PageImage>, Option<u64>)> {
        const META_CHUNK: u64 = 4096;
        let meta_len = {
            let files = self.io.read().unwrap_or_else(|p| p.into_inner());
            files.meta.metadata()?.len()
        };
        let slots = meta_len / META_BYTES;
        let mut out = Vec::new();
        let mut slot = cursor;
        while slot < slots {
            let count = META_CHUNK.min(slots - slot);
            let mut meta = vec![0u8; (count * META_BYTES) as usize];
            {
                let files = self.io.read().unwrap_or_else(|p| p.into_inner());
                read_fully_or_zero(&files.meta, &mut meta, slot * META_BYTES)?;
            }
            for (i, entry) in meta.chunks_exact(META_BYTES as usize).enumerate() {
                let lsn = Lsn(u64::from_le_bytes(entry[0..8].try_into().expect("8 bytes")));
                if entry.iter().all(|b| *b == 0) || lsn <= after {
                    continue;
                }
                if out.len() >= max_pages {
                    return Ok((out, Some(slot + i as u64)));
                }
                let page = PageId(self.pg.first_page().0 + slot + i as u64);
                match self.read(page)? {
                    Stored::Page { lsn, data } => out.push(PageImage { page, lsn, data }),
                    Stored::Absent => {}
                    Stored::Corrupt(detail) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, detail))
                    }
                }
            }
            slot += count;
        }
        Ok((out, None))
    }

    /// Verifies up to `count` slots from `cursor` on (scrub): returns the pages whose stored
    /// image is damaged, and the slot to go on from (`None` at the end: start over).
    pub fn verify(&self, cursor: u64, count: u64) -> io::Result<(Vec<PageId>, Option<u64>)> {
        let meta_len = {
            let files = self.io.read().unwrap_or_else(|p| p.into_inner());
            files.meta.metadata()?.len()
        };
        let slots = meta_len / META_BYTES;
        let end = slots.min(cursor.saturating_add(count));
        let mut damaged = Vec::new();
        for slot in cursor..end {
            let page = PageId(self.pg.first_page().0 + slot);
            if let Stored::Corrupt(_) = self.read(page)? {
                damaged.push(page);
            }
        }
        Ok((damaged, (end < slots).then_some(end)))
    }

    /// The key that seals new data of the volume (None: encryption off).
    fn sealer(&self) -> io::Result<Option<Arc<DataKey>>> {
        self.keys.sealer(&self.volume).map_err(io::Error::other)
    }

    /// One step of the re-seal pass ([`crate::reseal`]) over slots `cursor..cursor + count`:
    /// every image stored under a key that no longer seals new data (or in the clear, with
    /// encryption now on) is sealed again under the current key, through the journal like a
    /// fold, at its own LSN. `folded` is the segment's fold point, what the journal names (an
    /// image may be above it: repaired at the PGCL, or copied by a hydration still going on; the
    /// journal must never raise the fold point when it is redone at open). The caller holds the
    /// node's `fold_lock` (no one else writes a slot meanwhile).
    pub fn reseal(&self, cursor: u64, count: u64, folded: Lsn) -> io::Result<ResealStep> {
        let mut step = ResealStep {
            resealed: 0,
            unreadable: 0,
            next: None,
        };
        if !self.keys.enabled() {
            return Ok(step);
        }
        let slots = self.slots()?;
        let end = slots.min(cursor.saturating_add(count));
        let mut meta = vec![0u8; (end.saturating_sub(cursor) * META_BYTES) as usize];
        {
            let files = self.io.read().unwrap_or_else(|p| p.into_inner());
            read_fully_or_zero(&files.meta, &mut meta, cursor * META_BYTES)?;
        }
        let mut images = Vec::new();
        for (i, entry) in meta.chunks_exact(META_BYTES as usize).enumerate() {
            if !stale_entry(entry, &self.keys) {
                continue;
            }
            let page = PageId(self.pg.first_page().0 + cursor + i as u64);
            match self.read(page)? {
                Stored::Page { lsn, data } => images.push(PageImage { page, lsn, data }),
                // Damaged: the scrubber has it repaired from a peer (under the current key).
                Stored::Corrupt(_) => step.unreadable += 1,
                Stored::Absent => {}
            }
        }
        if !images.is_empty() {
            let sealer = self.sealer()?;
            self.write_journal(folded, &images, sealer.as_deref())?;
            self.write_in_place(&images, Replace::OlderOnly, sealer.as_deref())?;
        }
        step.resealed = images.len();
        step.next = (end < slots).then_some(end);
        Ok(step)
    }

    /// The end of a store's re-seal sweep: a fold journal left in the clear or under an older key
    /// is written again under the current one (same fold point, same images: redoing it means
    /// what it meant), or removed when it is torn (a torn journal is never redone). True when it
    /// changed anything. The caller holds `fold_lock`.
    pub fn reseal_journal(&self) -> io::Result<bool> {
        if !self.keys.enabled() {
            return Ok(false);
        }
        let path = self.journal_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let current = bytes.get(..4) == Some(JOURNAL_SEALED_MAGIC)
            && bytes
                .get(8..)
                .and_then(|b| sixfold_keys::Sealed::parse(b).ok())
                .is_some_and(|sealed| self.keys.is_current(sealed.key));
        if current {
            return Ok(false);
        }
        match self
            .open_journal(bytes)
            .and_then(|b| decode_journal(&b, self.pg))
        {
            Some((to_lsn, images)) => {
                let sealer = self.sealer()?;
                self.write_journal(to_lsn, &images, sealer.as_deref())?;
            }
            None => {
                std::fs::remove_file(&path)?;
                crate::hotlog::sync_dir(&self.dir)?;
            }
        }
        Ok(true)
    }

    /// Slots the meta file covers (written ones and the holes between them).
    pub fn slots(&self) -> io::Result<u64> {
        let files = self.io.read().unwrap_or_else(|p| p.into_inner());
        Ok(files.meta.metadata()?.len() / META_BYTES)
    }

    /// Replaces a damaged page with a good image from a peer, whatever the damaged slot says
    /// (its LSN cannot be trusted), through the journal like a fold.
    pub fn repair(&self, folded: Lsn, image: PageImage) -> io::Result<()> {
        let images = std::slice::from_ref(&image);
        let sealer = self.sealer()?;
        self.write_journal(folded, images, sealer.as_deref())?;
        self.write_in_place(images, Replace::Any, sealer.as_deref())
    }

    /// Stores page images copied from a peer (hydration) in place, without the journal: they
    /// are not the only copy, so a crash that tears one loses nothing. The segment's fold point
    /// and SCL do not move until every copy is durable; a restarted hydration copies every page
    /// newer than that point again (a torn slot's LSN is the copy's or older, so it is
    /// overwritten), and a torn slot read before then fails its checksum and is repaired from a
    /// peer. An older fold's journal redone at open never replaces a newer copy (never-regress).
    /// Half the disk writes of [`PageStore::fold`]: hydration runs at the disk's write speed.
    pub fn store_copies(&self, images: &[PageImage]) -> io::Result<()> {
        let sealer = self.sealer()?;
        self.write_in_place(images, Replace::OlderOnly, sealer.as_deref())
    }

    /// Stores `images` durably as the fold up to `to_lsn`: journal, fsync, in place, fsync.
    pub fn fold(&self, to_lsn: Lsn, images: &[PageImage]) -> io::Result<()> {
        // One key for the journal and the slots: a rotation in between must not leave the
        // journal under the older one.
        let sealer = self.sealer()?;
        self.write_journal(to_lsn, images, sealer.as_deref())?;
        self.write_in_place(images, Replace::OlderOnly, sealer.as_deref())
    }

    /// Replaces the journal with `images` (fold point `to_lsn`), durably. Written over the old
    /// one in place (no truncation: freeing and allocating its blocks every fold cost more than
    /// the write); a crash mid-write leaves a journal whose checksum fails (nothing is redone:
    /// no slot was touched yet) or, if not even the header was written, the previous one intact
    /// (redoing it never regresses a page).
    fn write_journal(
        &self,
        to_lsn: Lsn,
        images: &[PageImage],
        sealer: Option<&DataKey>,
    ) -> io::Result<()> {
        let mut journal = encode_journal(to_lsn, images);
        if let Some(key) = sealer {
            let sealed = key
                .seal(&self.journal_context(), &journal)
                .map_err(io::Error::other)?;
            journal = Vec::with_capacity(8 + sealed.len());
            journal.extend_from_slice(JOURNAL_SEALED_MAGIC);
            journal.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            journal.extend_from_slice(&sealed);
        }
        let path = self.journal_path();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.write_all_at(&journal, 0)?;
        file.sync_data()?;
        // The journal's name must be durable too: synced once per process (it may have been
        // created by a run that died before syncing the directory).
        if !self.journal_dir_synced.load(Ordering::Acquire) {
            crate::hotlog::sync_dir(&self.dir)?;
            self.journal_dir_synced.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn write_in_place(
        &self,
        images: &[PageImage],
        replace: Replace,
        sealer: Option<&DataKey>,
    ) -> io::Result<()> {
        let mut slotted = Vec::with_capacity(images.len());
        for image in images {
            if image.data.len() != PAGE_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("image of {} is {} bytes", image.page, image.data.len()),
                ));
            }
            slotted.push((self.slot(image.page)?, image));
        }
        // Slot order; of two images of one slot the newer wins.
        slotted.sort_by_key(|(slot, image)| (*slot, image.lsn));
        slotted.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                *earlier = *later;
                true
            } else {
                false
            }
        });
        let mut guard = self.io.write().unwrap_or_else(|p| p.into_inner());
        let files = &mut *guard;
        for run in runs(&slotted) {
            // A page's image never goes back to an older version (unless the slot is damaged
            // and being repaired: its LSN cannot be trusted).
            let keep: Vec<(u64, &PageImage)> = if replace == Replace::OlderOnly {
                let first = run[0].0;
                let mut current = vec![0u8; run.len() * META_BYTES as usize];
                read_fully_or_zero(&files.meta, &mut current, first * META_BYTES)?;
                run.iter()
                    .filter(|(slot, image)| {
                        let at = ((slot - first) * META_BYTES) as usize;
                        let entry = &current[at..at + META_BYTES as usize];
                        let lsn = u64::from_le_bytes(entry[0..8].try_into().expect("8 bytes"));
                        let magic = u32::from_le_bytes(entry[12..16].try_into().expect("4 bytes"));
                        let valid = magic == META_MAGIC || magic == META_MAGIC_SEALED;
                        !(valid && lsn > image.lsn.0)
                    })
                    .copied()
                    .collect()
            } else {
                run.to_vec()
            };
            for part in runs(&keep) {
                let mut meta: Vec<u8> = Vec::with_capacity(part.len() * META_BYTES as usize);
                let mut stored = Vec::with_capacity(part.len());
                for (_, image) in part {
                    let (entry, bytes) =
                        stored_form(&self.volume, image, sealer).map_err(io::Error::other)?;
                    meta.extend_from_slice(&entry);
                    stored.push(bytes);
                }
                let pages: Vec<&[u8]> = stored.iter().map(|p| &p[..]).collect();
                files.writer.write_run(&files.data, part[0].0, &pages)?;
                files.meta.write_all_at(&meta, part[0].0 * META_BYTES)?;
            }
        }
        files.data.sync_data()?;
        files.meta.sync_data()?;
        Ok(())
    }

    /// Bytes the store's files occupy on disk (sparse files count only what is allocated).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        ["pages.dat", META_FILE, "fold.journal"]
            .iter()
            .filter_map(|name| std::fs::metadata(self.dir.join(name)).ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }
}

/// Splits slot-ordered, distinct slots into runs of consecutive slots, at most
/// [`RUN_PAGES_MAX`] each.
fn runs<'a, T>(slotted: &'a [(u64, T)]) -> impl Iterator<Item = &'a [(u64, T)]> + 'a {
    let mut rest = slotted;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut len = 1;
        while len < rest.len() && len < RUN_PAGES_MAX && rest[len].0 == rest[len - 1].0 + 1 {
            len += 1;
        }
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(run)
    })
}

/// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zero. Returns
/// false when nothing at all was there.
fn read_fully_or_zero(file: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(done > 0)
}

pub(crate) fn encode_journal(to_lsn: Lsn, images: &[PageImage]) -> Vec<u8> {
    let mut out = Vec::with_capacity(JOURNAL_HEADER_BYTES + images.len() * JOURNAL_ENTRY_BYTES + 4);
    out.extend_from_slice(&JOURNAL_MAGIC.to_le_bytes());
    out.extend_from_slice(&to_lsn.0.to_le_bytes());
    out.extend_from_slice(&(images.len() as u32).to_le_bytes());
    for image in images {
        out.extend_from_slice(&image.page.0.to_le_bytes());
        out.extend_from_slice(&image.lsn.0.to_le_bytes());
        out.extend_from_slice(&image.data);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The journal's fold LSN and images, if it is complete, intact and of this PG.
pub(crate) fn decode_journal(bytes: &[u8], pg: PgId) -> Option<(Lsn, Vec<PageImage>)> {
    // The journal is overwritten in place, never truncated: its header says how long it is, and
    // whatever follows is a longer, older journal's tail.
    let count = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?) as usize;
    let body_len = count
        .checked_mul(JOURNAL_ENTRY_BYTES)?
        .checked_add(JOURNAL_HEADER_BYTES)?;
    let (body, crc) = bytes.get(..body_len.checked_add(4)?)?.split_at(body_len);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    if body.len() < JOURNAL_HEADER_BYTES
        || u64::from_le_bytes(body[0..8].try_into().ok()?) != JOURNAL_MAGIC
    {
        return None;
    }
    let to_lsn = Lsn(u64::from_le_bytes(body[8..16].try_into().ok()?));
    let count = u32::from_le_bytes(body[16..20].try_into().ok()?) as usize;
    let entries = &body[JOURNAL_HEADER_BYTES..];
    if entries.len() != count.checked_mul(JOURNAL_ENTRY_BYTES)? {
        return None;
    }
    let mut images = Vec::with_capacity(count);
    for entry in entries.chunks_exact(JOURNAL_ENTRY_BYTES) {
        let page = PageId(u64::from_le_bytes(entry[0..8].try_into().ok()?));
        if !pg.contains(page) {
            return None;
        }
        images.push(PageImage {
            page,
            lsn: Lsn(u64::from_le_bytes(entry[8..16].try_into().ok()?)),
            data: entry[16..].to_vec(),
        });
    }
    Some((to_lsn, images))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(page: u64, lsn: u64, fill: u8) -> PageImage {
        PageImage {
            page: PageId(page),
            lsn: Lsn(lsn),
            data: vec![fill; PAGE_SIZE],
        }
    }

    /// The journal is overwritten in place: a shorter journal over a longer one decodes as
    /// itself, and one torn anywhere (a crash mid-write) decodes as nothing.
    #[test]
    fn journal_overwritten_in_place_decodes_by_its_own_length() {
        let pg = PgId(0);
        let long = encode_journal(Lsn(9), &[image(1, 9, 1), image(2, 8, 2), image(3, 7, 3)]);
        let short = encode_journal(Lsn(12), &[image(5, 12, 5)]);
        let mut file = long.clone();
        file[..short.len()].copy_from_slice(&short);
        let (to, images) = decode_journal(&file, pg).expect("the short journal");
        assert_eq!(to, Lsn(12));
        assert_eq!(images, vec![image(5, 12, 5)]);
        // Torn: the new header and part of its body, the rest the old journal's bytes.
        let mut torn = long.clone();
        torn[..short.len() / 2].copy_from_slice(&short[..short.len() / 2]);
        assert_eq!(decode_journal(&torn, pg), None);
        // Cut short: nothing.
        assert_eq!(decode_journal(&short[..short.len() - 1], pg), None);
        assert_eq!(decode_journal(&[], pg), None);
    }

    /// The re-seal pass: slots in the clear and under a rotated-out key are sealed again under
    /// the current key at their own LSN; a second step finds nothing left.
    #[test]
    fn reseal_rewrites_clear_and_old_key_slots_under_the_current_key() {
        let temp = crate::testutil::TempDir::new("pagestore-reseal");
        let dir = temp.path().join("store");
        let pg = PgId(1);
        let first = pg.first_page().0;
        let (store, _) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("open");
        store
            .fold(Lsn(5), &[image(first, 5, 0x11), image(first + 2, 4, 0x22)])
            .expect("fold in the clear");
        drop(store);

        let hex = sixfold_keys::Kek::generate_hex().expect("hex");
        let kek = sixfold_keys::Kek::from_hex(&hex).expect("kek");
        let keys = Arc::new(Keyring::open(&temp.path().join("ring"), Some(kek)).expect("ring"));
        let (store, _) = PageStore::open(&dir, pg, "v", Arc::clone(&keys)).expect("reopen");
        store
            .fold(Lsn(9), &[image(first + 3, 9, 0x33)])
            .expect("fold sealed");
        let old = keys.sealer("v").expect("sealer").expect("on").id();
        keys.rotate().expect("rotate");
        let new = keys.sealer("v").expect("sealer").expect("on").id();
        assert_ne!(old, new);

        let stale = |store: &PageStore| {
            let files = store.io.read().expect("lock");
            let mut meta = vec![0u8; (store.slots().expect("slots") * META_BYTES) as usize];
            read_fully_or_zero(&files.meta, &mut meta, 0).expect("read meta");
            meta.chunks_exact(META_BYTES as usize)
                .filter(|e| stale_entry(e, &keys))
                .count()
        };
        assert_eq!(stale(&store), 3, "two in the clear, one under the old key");
        // Two steps of two slots each, then the end.
        let step = store.reseal(0, 2, Lsn(9)).expect("step");
        assert_eq!((step.resealed, step.unreadable, step.next), (1, 0, Some(2)));
        let step = store.reseal(2, 2, Lsn(9)).expect("step");
        assert_eq!((step.resealed, step.next), (2, None));
        assert_eq!(stale(&store), 0);
        let step = store.reseal(0, 100, Lsn(9)).expect("again");
        assert_eq!((step.resealed, step.next), (0, None));
        for (page, lsn, fill) in [(first, 5, 0x11), (first + 2, 4, 0x22), (first + 3, 9, 0x33)] {
            assert_eq!(
                store.read(PageId(page)).expect("read"),
                Stored::Page {
                    lsn: Lsn(lsn),
                    data: vec![fill; PAGE_SIZE]
                }
            );
        }

        // An image above the segment's fold point (a hydration's copy, a repair at the PGCL):
        // the journal a re-seal writes names the fold point, so redoing it at open never raises
        // the fold point (the records above it are still only in the hot log).
        store
            .store_copies(&[image(first + 7, 50, 0x77)])
            .expect("copy");
        keys.rotate().expect("rotate again");
        let step = store.reseal(0, 100, Lsn(9)).expect("step");
        assert_eq!((step.resealed, step.next), (4, None));
        assert!(!store.reseal_journal().expect("journal"), "just written");
        keys.rotate().expect("rotate a third time");
        assert!(
            store.reseal_journal().expect("journal"),
            "under the older key"
        );
        assert!(
            !store.reseal_journal().expect("journal"),
            "under the current key"
        );
        drop(store);
        let (store, redone) = PageStore::open(&dir, pg, "v", Arc::clone(&keys)).expect("reopen");
        assert_eq!(
            redone,
            Some(Lsn(9)),
            "a re-seal journal raised the fold point"
        );
        assert_eq!(
            store.read(PageId(first + 7)).expect("read"),
            Stored::Page {
                lsn: Lsn(50),
                data: vec![0x77; PAGE_SIZE]
            }
        );
        let data = std::fs::read(dir.join("pages.dat")).expect("data");
        assert!(
            !data.windows(64).any(|w| w.iter().all(|b| *b == 0x11)),
            "no page left in the clear"
        );
    }

    #[test]
    fn fold_then_read_and_reopen() {
        let temp = crate::testutil::TempDir::new("pagestore-fold");
        let dir = temp.path().to_owned();
        let pg = PgId(1);
        let first = pg.first_page().0;
        let (store, redone) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("open");
        assert_eq!(redone, None);
        assert_eq!(store.read(PageId(first + 5)).expect("read"), Stored::Absent);
        store
            .fold(Lsn(9), &[image(first + 5, 7, 0xab), image(first, 9, 1)])
            .expect("fold");
        assert_eq!(
            store.read(PageId(first + 5)).expect("read"),
            Stored::Page {
                lsn: Lsn(7),
                data: vec![0xab; PAGE_SIZE]
            }
        );
        assert!(store.read(PageId(0)).is_err(), "a page of another PG");
        drop(store);
        let (store, redone) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("reopen");
        assert_eq!(
            redone,
            Some(Lsn(9)),
            "the journal of the newest fold is redone"
        );
        assert!(matches!(
            store.read(PageId(first)).expect("read"),
            Stored::Page { lsn: Lsn(9), .. }
        ));
    }

    #[test]
    fn torn_page_is_detected_and_repaired_by_the_journal() {
        let temp = crate::testutil::TempDir::new("pagestore-torn");
        let dir = temp.path().to_owned();
        let pg = PgId(0);
        let (store, _) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("open");
        store.fold(Lsn(3), &[image(2, 3, 7)]).expect("fold");
        drop(store);
        // A crash tore the in-place write: half the page is old.
        let data = OpenOptions::new()
            .write(true)
            .open(dir.join("pages.dat"))
            .expect("open data");
        data.write_all_at(&[0u8; 2048], 2 * PAGE_SIZE as u64)
            .expect("tear");
        drop(data);
        // Read without the redo: the checksum catches it.
        let files = Files {
            data: open_rw(&dir.join("pages.dat")).expect("data"),
            meta: open_rw(&dir.join(META_FILE)).expect("meta"),
            writer: SlotWriter::open(&dir.join("pages.dat")),
        };
        let raw = PageStore {
            dir: dir.clone(),
            pg,
            volume: "v".into(),
            keys: Keyring::plaintext(),
            io: RwLock::new(files),
            journal_dir_synced: AtomicBool::new(false),
        };
        assert!(matches!(
            raw.read(PageId(2)).expect("read"),
            Stored::Corrupt(_)
        ));
        drop(raw);
        let (store, redone) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("reopen");
        assert_eq!(redone, Some(Lsn(3)));
        assert_eq!(
            store.read(PageId(2)).expect("read"),
            Stored::Page {
                lsn: Lsn(3),
                data: vec![7; PAGE_SIZE]
            }
        );
    }

    #[test]
    fn torn_journal_is_ignored() {
        let temp = crate::testutil::TempDir::new("pagestore-journal");
        let dir = temp.path().to_owned();
        let pg = PgId(0);
        let (store, _) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("open");
        store.fold(Lsn(3), &[image(2, 3, 7)]).expect("fold");
        drop(store);
        let path = dir.join("fold.journal");
        let bytes = std::fs::read(&path).expect("journal");
        std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("tear journal");
        let (store, redone) = PageStore::open(&dir, pg, "v", Keyring::plaintext()).expect("reopen");
        assert_eq!(redone, None);
        assert!(matches!(
            store.read(PageId(2)).expect("read"),
            Stored::Page { lsn: Lsn(3), .. }
        ));
        assert!(decode_journal(&[], pg).is_none());
        assert!(decode_journal(&[1, 2, 3, 4, 5], pg).is_none());
    }
}
