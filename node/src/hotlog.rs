//! The hot log: one append-only log per node for all its segments, so one fsync hardens a batch of
//! records for many segments (group commit). Files are `data_dir/log/NNNNNNNN.log`, numbered from
//! 1, rolled at [`LOG_FILE_BYTES_MAX`]; each holds [`crate::frame`] frames back to back.
//!
//! Files are created full size and filled with zeroes before use, and the directory is synced:
//! appending then only overwrites zeroes, so each fsync (`sync_data`) flushes data and never has
//! to commit file-size or block-allocation metadata (on ext4 about 2.5x cheaper per fsync). Zeroes
//! after the last frame mark the end of a file's data.
//!
//! Invariants: frames are appended only at the end of the newest file's data; a file is never
//! rewritten except to zero a torn tail at replay; everything after a file's last frame is zeroes; a location handed to the index points at a frame body that
//! was fsync'd before the index saw it.
//!
//! Crash consistency: a batch is acknowledged only after [`LogWriter::commit`] returned, i.e. after
//! `sync_data` of every file the batch touched (a file that fills up is synced before the next
//! one is created, and the directory is synced after each creation, so a new file's name is
//! durable before anything in it is acknowledged). A crash (kill -9, power loss) can therefore
//! only damage frames that were never acknowledged, all at the end of the newest file. Replay
//! tells the two kinds of bad bytes apart by what follows them:
//! - bad bytes with an intact frame after them (found by scanning forward; the crc decides) are
//!   damage, wherever they are (bit rot, a lost write in the middle of a batch): replay logs an
//!   error, keeps every intact frame after them (acknowledged data, never zeroed) and goes on;
//!   the hole in a segment's chain holds its SCL down until gap-fill fetches the missing records
//!   from peers;
//! - bad bytes with no intact frame after them, at the end of the newest file, are a torn tail
//!   (a write cut short: nothing in it was acknowledged): replay zeroes them and the node appends
//!   from there. At the end of an older file they are damage, skipped.
//!
//! After a failed write or fsync (the PostgreSQL "fsyncgate" lesson): the kernel may have dropped
//! the dirty pages, or kept them in its page cache marked clean without their reaching the disk,
//! so what a later read of the file returns proves nothing about what is durable. The appender
//! then records where the log was last synced ([`LogWriter::record_sync_failure`], the file
//! [`UNSYNCED_MARKER`], written and synced on its own) and refuses every write until a restart;
//! replay zeroes everything after that point before it reads a frame, so no frame that a failed
//! fsync covered is ever taken for durable (none of them was acknowledged). If even the marker
//! cannot be written (the disk is gone), the node logs it loudly: its log is then trusted as it
//! reads back, the one case not covered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sixfold_proto::record;
use tracing::{error, warn};

use crate::error::NodeError;
use crate::frame::{self, Decoded, Encoded, Frame, FrameBody};
use crate::keyring::Keyring;
use crate::lock;
use crate::segment::Location;
use sixfold_keys::{KeyId, Sealed};

/// A log file is rolled once it would grow past this size.
pub const LOG_FILE_BYTES_MAX: u64 = 64 << 20;

fn file_name(number: u32) -> String {
    format!("{number:08}.log")
}

fn parse_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Fsyncs a directory, so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Data bytes of each log file, kept by the writer and by garbage collection.
pub type FileBytes = Arc<Mutex<BTreeMap<u32, u64>>>;

/// Per log file, the data keys its frames are sealed with (`None`: frames in the clear), kept by
/// replay and the writer, so that the re-seal pass knows which files still hold data under
/// keys that no longer seal ([`LogFiles::files_under_old_keys`]).
pub type FileKeys = Arc<Mutex<BTreeMap<u32, BTreeSet<Option<KeyId>>>>>;

/// The key a stored frame is sealed with (`None`: in the clear).
fn frame_key(frame: &[u8]) -> Option<KeyId> {
    frame
        .get(frame::FRAME_HEADER_BYTES..)
        .filter(|payload| Sealed::is_sealed(payload))
        .and_then(|payload| Sealed::parse(payload).ok())
        .map(|sealed| sealed.key)
}

/// Read access to the log files, shared by every reader (positional reads, no seek state), and
/// their garbage collection.
#[derive(Debug)]
pub struct LogFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<File>>>,
    file_bytes: FileBytes,
    file_keys: FileKeys,
    total_bytes: Arc<AtomicU64>,
    keys: Arc<Keyring>,
}

impl LogFiles {
    pub fn new(dir: PathBuf, writer: &LogWriter) -> LogFiles {
        LogFiles {
            dir,
            open: Mutex::new(HashMap::new()),
            file_bytes: Arc::clone(&writer.file_bytes),
            file_keys: Arc::clone(&writer.file_keys),
            total_bytes: writer.total_bytes(),
            keys: Arc::clone(&writer.keys),
        }
    }

    /// Deletes every log file numbered below `first_kept` (their frames must be folded or
    /// summarized in the checkpoint: see [`crate::folder`]). Returns how many were deleted and
    /// their data bytes. A reader holding one open keeps reading it until it lets go.
    pub fn remove_below(&self, first_kept: u32) -> io::Result<(usize, u64)> {
        let doomed: Vec<(u32, u64)> = lock(&self.file_bytes)
            .range(..first_kept)
            .map(|(n, b)| (*n, *b))
            .collect();
        let mut freed = 0;
        for (number, bytes) in &doomed {
            match std::fs::remove_file(self.dir.join(file_name(*number))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            lock(&self.open).remove(number);
            lock(&self.file_bytes).remove(number);
            lock(&self.file_keys).remove(number);
            self.total_bytes.fetch_sub(*bytes, Ordering::Relaxed);
            freed += bytes;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok((doomed.len(), freed))
    }

    /// Log files that hold frames in the clear or under keys that no longer seal new data, with
    /// encryption on (they go once folded and collected: see [`crate::reseal`]).
    pub fn files_under_old_keys(&self) -> usize {
        let numbers: Vec<u32> = lock(&self.file_keys).keys().copied().collect();
        numbers.into_iter().filter(|n| self.is_stale(*n)).count()
    }

    /// Whether log file `number` holds frames in the clear or under a key that no longer seals,
    /// with encryption on.
    pub fn is_stale(&self, number: u32) -> bool {
        if !self.keys.enabled() {
            return false;
        }
        lock(&self.file_keys).get(&number).is_some_and(|keys| {
            keys.iter()
                .any(|key| key.is_none_or(|id| !self.keys.is_current(id)))
        })
    }

    /// Reads the record at `location`: its canonical encoding (opened, if it was sealed).
    pub fn read(&self, location: Location) -> io::Result<Vec<u8>> {
        let file = self.file(location.file)?;
        let mut bytes = vec![0u8; location.len as usize];
        file.read_exact_at(&mut bytes, location.offset)?;
        frame::body_of_payload(bytes, location.sealed, &self.keys)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn file(&self, number: u32) -> io::Result<Arc<File>> {
        let mut open = lock(&self.open);
        if let Some(file) = open.get(&number) {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(File::open(self.dir.join(file_name(number)))?);
        open.insert(number, Arc::clone(&file));
        Ok(file)
    }
}

/// Written in the log directory after a failed write or fsync: `FILE OFFSET`, where the log was
/// last synced. Replay cuts everything after it, then removes it.
pub const UNSYNCED_MARKER: &str = "unsynced-after";

/// Appends frames to the newest log file. Owned by the appender thread alone.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    number: u32,
    /// Bytes of the current file already written to it.
    size: u64,
    /// Frames appended since the last commit, not yet written.
    buffer: Vec<u8>,
    /// Total bytes of all log files (what `sixfold status` shows), shared with readers.
    total_bytes: Arc<AtomicU64>,
    /// Frame bytes written to the log since the node started (never goes down: a throughput
    /// counter; the zeroes that preallocate a new file are not counted).
    written_bytes: Arc<AtomicU64>,
    /// Data bytes per file, shared with [`LogFiles`].
    file_bytes: FileBytes,
    /// Keys per file, shared with [`LogFiles`].
    file_keys: FileKeys,
    /// The file and key of the last frame appended (already in `file_keys`).
    last_key: Option<(u32, Option<KeyId>)>,
    /// Where the log was last synced (file number, bytes): everything before it is durable.
    synced: (u32, u64),
    /// Seals frames when encryption at rest is on.
    keys: Arc<Keyring>,
}

impl LogWriter {
    /// Buffers a frame; returns where its body will be once committed. Rolls to a new file first
    /// when the frame would push the current one past [`LOG_FILE_BYTES_MAX`].
    pub fn append(&mut self, encoded: &Encoded) -> io::Result<Location> {
        let sealed = if encoded.sealed {
            None
        } else {
            frame::seal(encoded, &self.keys).map_err(io::Error::other)?
        };
        let encoded = sealed.as_ref().unwrap_or(encoded);
        let pending = self.size + self.buffer.len() as u64;
        if pending > 0 && pending + encoded.bytes.len() as u64 > LOG_FILE_BYTES_MAX {
            self.roll()?;
        }
        let frame_offset = self.size + self.buffer.len() as u64;
        self.buffer.extend_from_slice(&encoded.bytes);
        // The shared map is touched only when a file's key changes (a new file, a rotation), not
        // on every frame of the appender's hot path.
        let key = (self.number, frame_key(&encoded.bytes));
        if self.last_key != Some(key) {
            lock(&self.file_keys)
                .entry(key.0)
                .or_default()
                .insert(key.1);
            self.last_key = Some(key);
        }
        Ok(Location {
            file: self.number,
            offset: frame_offset + encoded.body_offset as u64,
            len: encoded.body_len() as u32,
            sealed: encoded.sealed,
        })
    }

    /// Starts a new file now if the current one holds anything (after a key rotation: the
    /// frames sealed under the older key then sit in files that go once folded).
    pub fn roll_if_written(&mut self) -> io::Result<()> {
        if self.size + self.buffer.len() as u64 == 0 {
            return Ok(());
        }
        self.roll()
    }

    /// Writes the buffered frames and fsyncs: when this returns Ok, every frame appended so far is
    /// durable. After an error the writer must not be used again (the tail may be partial).
    pub fn commit(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        self.file.sync_data()?;
        self.synced = (self.number, self.size);
        Ok(())
    }

    /// After a failed write or fsync: records, durably and apart from the log, where the log was
    /// last synced, so that replay cuts what came after (see the module docs).
    pub fn record_sync_failure(&self) -> io::Result<()> {
        let (file, offset) = self.synced;
        let temp = self.dir.join(format!("{UNSYNCED_MARKER}.tmp"));
        {
            let mut marker = File::create(&temp)?;
            io::Write::write_all(&mut marker, format!("{file} {offset}\n").as_bytes())?;
            marker.sync_all()?;
        }
        std::fs::rename(&temp, self.dir.join(UNSYNCED_MARKER))?;
        sync_dir(&self.dir)
    }

    pub fn total_bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.total_bytes)
    }

    /// Bytes written since the node started, shared with whoever reports them.
    pub fn written_bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.written_bytes)
    }

    /// Number of the file being appended to.
    pub fn file_number(&self) -> u32 {
        self.number
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buffer, self.size)?;
        self.size += self.buffer.len() as u64;
        lock(&self.file_bytes).insert(self.number, self.size);
        self.total_bytes
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        self.written_bytes
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        self.buffer.clear();
        Ok(())
    }

    /// Finishes the current file and starts the next. Failing to create the next file (a full
    /// disk, most often) leaves the log as it was, the current file complete and synced, and is
    /// reported as [`NoRoom`]: appends that fit in the current file still work, and the next
    /// roll tries again.
    fn roll(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        self.file.sync_data()?;
        self.synced = (self.number, self.size);
        let number = self.number + 1;
        match create_file(&self.dir, number) {
            Ok(file) => {
                self.file = file;
                self.number = number;
                self.size = 0;
                // Created zero-filled, synced, its name durable.
                self.synced = (number, 0);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(self.dir.join(file_name(number)));
                Err(io::Error::new(e.kind(), NoRoom(e)))
            }
        }
    }
}

/// The next hot-log file could not be created (nothing already in the log was touched).
#[derive(Debug)]
pub struct NoRoom(io::Error);

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no room for a new hot-log file: {}", self.0)
    }
}

impl std::error::Error for NoRoom {}

/// True when `e` is a [`NoRoom`]: the log is intact and appending may work again later.
pub fn is_no_room(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NoRoom>())
}

/// Creates log file `number` full size, filled with zeroes, fsync'd, its name durable.
fn create_file(dir: &Path, number: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(file_name(number)))?;
    zero_fill(&file, 0, LOG_FILE_BYTES_MAX)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Writes zeroes over `[from, to)` of `file` (real zero blocks, not a hole or an unwritten
/// extent, so that later overwrites need no allocation).
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeroes = vec![0u8; CHUNK];
    let mut offset = from;
    while offset < to {
        let len = (to - offset).min(CHUNK as u64) as usize;
        file.write_all_at(&zeroes[..len], offset)?;
        offset += len as u64;
    }
    Ok(())
}

/// What replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub files: usize,
    pub frames: u64,
    pub log_bytes: u64,
    /// Bytes cut from the tail of the newest file (a torn write).
    pub torn_bytes_cut: u64,
    /// Files with damaged bytes that were skipped (intact frames after them were kept).
    pub damaged_files: usize,
    /// Bytes cut because a failed fsync covered them ([`UNSYNCED_MARKER`]).
    pub unsynced_bytes_cut: u64,
}

/// The last synced point a failed fsync left in [`UNSYNCED_MARKER`], if any.
fn read_unsynced_marker(dir: &Path) -> Result<Option<(u32, u64)>, NodeError> {
    let path = dir.join(UNSYNCED_MARKER);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NodeError::io("read the unsynced marker", &path)(e)),
    };
    let mut fields = text.split_whitespace();
    let parsed = match (fields.next(), fields.next(), fields.next()) {
        (Some(file), Some(offset), None) => {
            file.parse::<u32>().ok().zip(offset.parse::<u64>().ok())
        }
        _ => None,
    };
    match parsed {
        Some(point) => Ok(Some(point)),
        // A marker that does not parse still says a sync failed, but not where: refuse to guess.
        None => Err(NodeError::io("parse the unsynced marker", &path)(
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{text:?} is not `FILE OFFSET`; the log's durable point is unknown"),
            ),
        )),
    }
}

/// Replays every log file in `dir` in order, handing each intact frame (records verified against
/// their checksum) and the location of its body to `on_frame`; cuts a torn tail of the newest file;
/// then opens the newest file for appending (creating file 1 in an empty directory).
pub fn open(
    dir: &Path,
    keys: Arc<Keyring>,
    mut on_frame: impl FnMut(Frame, Location),
) -> Result<(LogWriter, ReplayStats), NodeError> {
    let io_error = NodeError::io;
    std::fs::create_dir_all(dir).map_err(io_error("create log directory", dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent).map_err(io_error("sync directory", parent))?;
    }
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error("list log directory", dir))? {
        let entry = entry.map_err(io_error("list log directory", dir))?;
        match entry.file_name().to_str().and_then(parse_file_name) {
            Some(number) => numbers.push(number),
            None => {
                warn!(path = %entry.path().display(), "ignoring unexpected file in the log directory")
            }
        }
    }
    numbers.sort_unstable();
    let unsynced = read_unsynced_marker(dir)?;
    let mut stats = ReplayStats {
        files: numbers.len(),
        ..ReplayStats::default()
    };
    let mut last_size = 0u64;
    let mut file_bytes = BTreeMap::new();
    let mut file_keys: BTreeMap<u32, BTreeSet<Option<KeyId>>> = BTreeMap::new();
    for (position, &number) in numbers.iter().enumerate() {
        let path = dir.join(file_name(number));
        let mut bytes = std::fs::read(&path).map_err(io_error("read log file", &path))?;
        let is_last = position + 1 == numbers.len();
        if let Some((synced_file, synced_offset)) = unsynced {
            // A failed fsync covered what follows the last synced point: whatever reads back
            // there was never acknowledged and may not be on the disk.
            let cut_from = match number.cmp(&synced_file) {
                std::cmp::Ordering::Less => None,
                std::cmp::Ordering::Equal => Some(synced_offset.min(bytes.len() as u64)),
                std::cmp::Ordering::Greater => Some(0),
            };
            if let Some(cut_from) = cut_from {
                let cut = data_end(&bytes, cut_from as usize) - cut_from;
                if cut > 0 {
                    warn!(
                        path = %path.display(), offset = cut_from, bytes_cut = cut,
                        "cutting what a failed fsync covered off the hot log (never acknowledged)"
                    );
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_error("open log file", &path))?;
                    zero_fill(&file, cut_from, bytes.len() as u64)
                        .map_err(io_error("zero the unsynced tail of log file", &path))?;
                    file.sync_all().map_err(io_error("sync log file", &path))?;
                    bytes[cut_from as usize..].fill(0);
                    stats.unsynced_bytes_cut += cut;
                }
            }
        }
        let replayed = replay_file(&bytes, number, &keys, &mut on_frame);
        file_keys.insert(number, replayed.keys.clone());
        if let Some((offset, problem)) = &replayed.unopenable {
            return Err(NodeError::Key {
                path: path.clone(),
                source: sixfold_keys::KeyError::Kek(format!(
                    "the hot-log frame at offset {offset} is intact but does not open ({problem}); \
                     nothing was cut: start the node with the key its data was written with"
                )),
            });
        }
        let good_len = replayed.good_len;
        stats.frames += replayed.frames;
        for (start, end, problem) in &replayed.damaged {
            error!(
                path = %path.display(), offset = start, bytes_skipped = end - start, %problem,
                "damaged bytes inside the hot log: skipped, the intact frames after them kept \
                 (gap-fill fetches the records they held from peers)"
            );
        }
        if !replayed.damaged.is_empty() {
            stats.damaged_files += 1;
        }
        if let Some(problem) = replayed.tail_problem {
            let cut = data_end(&bytes, good_len as usize) - good_len;
            if is_last {
                warn!(
                    path = %path.display(), offset = good_len, bytes_cut = cut, %problem,
                    "cutting a torn tail off the hot log (no intact frame follows it: a write \
                     cut short, nothing in it was acknowledged)"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error("open log file", &path))?;
                zero_fill(&file, good_len, bytes.len() as u64)
                    .map_err(io_error("zero the torn tail of log file", &path))?;
                file.sync_all().map_err(io_error("sync log file", &path))?;
                stats.torn_bytes_cut = cut;
            } else {
                error!(
                    path = %path.display(), offset = good_len, bytes_skipped = cut, %problem,
                    "bad frame at the end of an older hot-log file: skipping the rest of the file"
                );
                if replayed.damaged.is_empty() {
                    stats.damaged_files += 1;
                }
            }
        }
        stats.log_bytes += good_len;
        file_bytes.insert(number, good_len);
        if is_last {
            last_size = good_len;
        }
    }
    if unsynced.is_some() {
        let marker = dir.join(UNSYNCED_MARKER);
        std::fs::remove_file(&marker).map_err(io_error("remove the unsynced marker", &marker))?;
        sync_dir(dir).map_err(io_error("sync log directory", dir))?;
    }
    let total_bytes = Arc::new(AtomicU64::new(stats.log_bytes));
    let file_bytes = Arc::new(Mutex::new(file_bytes));
    let file_keys = Arc::new(Mutex::new(file_keys));
    let writer = match numbers.last() {
        Some(&number) => {
            let path = dir.join(file_name(number));
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_error("open log file", &path))?;
            LogWriter {
                dir: dir.to_owned(),
                file,
                number,
                size: last_size,
                buffer: Vec::new(),
                total_bytes,
                written_bytes: Arc::new(AtomicU64::new(0)),
                file_bytes,
                file_keys,
                last_key: None,
                synced: (number, last_size),
                keys,
            }
        }
        None => LogWriter {
            dir: dir.to_owned(),
            file: create_file(dir, 1).map_err(io_error("create log file", dir))?,
            number: 1,
            size: 0,
            buffer: Vec::new(),
            total_bytes,
            written_bytes: Arc::new(AtomicU64::new(0)),
            file_bytes,
            file_keys,
            last_key: None,
            synced: (1, 0),
            keys,
        },
    };
    Ok((writer, stats))
}

/// Where the non-zero bytes of a file end (its data, torn frames included), from `start` on.
fn data_end(bytes: &[u8], start: usize) -> u64 {
    let end = bytes[start..]
        .iter()
        .rposition(|b| *b != 0)
        .map(|last| start + last + 1)
        .unwrap_or(start);
    end as u64
}

/// What replaying one file found.
struct FileReplay {
    /// Where the file's last intact frame ends (appends continue there in the newest file).
    good_len: u64,
    frames: u64,
    /// Damaged ranges `[start, end)` with an intact frame at `end`, and what was wrong.
    damaged: Vec<(u64, u64, String)>,
    /// Bad bytes after `good_len` with no intact frame after them (a torn tail in the newest
    /// file), and what was wrong with them.
    tail_problem: Option<String>,
    /// An intact frame that does not open with the node's keys, where, and why: replay stops.
    unopenable: Option<(usize, String)>,
    /// The keys its intact frames are sealed with (`None`: frames in the clear).
    keys: BTreeSet<Option<KeyId>>,
}

/// Replays the frames of one file, skipping damaged bytes that an intact frame follows.
fn replay_file(
    bytes: &[u8],
    number: u32,
    keys: &Keyring,
    on_frame: &mut impl FnMut(Frame, Location),
) -> FileReplay {
    let mut replay = FileReplay {
        good_len: 0,
        frames: 0,
        damaged: Vec::new(),
        tail_problem: None,
        unopenable: None,
        keys: BTreeSet::new(),
    };
    let mut position = 0usize;
    while position < bytes.len() {
        if bytes[position..].iter().all(|b| *b == 0) {
            break; // the zeroes after the last frame: the end of the file's data
        }
        match intact_frame(&bytes[position..], keys) {
            Ok((frame, len, body_offset, sealed)) => {
                let location = Location {
                    file: number,
                    offset: (position + body_offset) as u64,
                    len: (len - body_offset) as u32,
                    sealed,
                };
                on_frame(frame, location);
                replay
                    .keys
                    .insert(frame_key(&bytes[position..position + len]));
                replay.frames += 1;
                position += len;
                replay.good_len = position as u64;
            }
            Err(FrameProblem::Unopenable(problem)) => {
                replay.unopenable = Some((position, problem));
                break;
            }
            Err(FrameProblem::Bad(problem)) => match next_intact_frame(bytes, position + 1, keys) {
                Some(next) => {
                    replay.damaged.push((position as u64, next as u64, problem));
                    position = next;
                }
                None => {
                    replay.tail_problem = Some(problem);
                    break;
                }
            },
        }
    }
    replay
}

/// The intact frame at the start of `buf` (its record's checksum verified too), with its length
/// and body offset, or what is wrong with it.
fn intact_frame(buf: &[u8], keys: &Keyring) -> Result<(Frame, usize, usize, bool), FrameProblem> {
    match frame::decode(buf, keys) {
        Decoded::Frame {
            frame,
            len,
            body_offset,
            sealed,
        } => {
            if let FrameBody::Record(record) = &frame.body {
                record::validate(record, frame.pg)
                    .map_err(|e| FrameProblem::Bad(format!("record frame: {e}")))?;
            }
            Ok((frame, len, body_offset, sealed))
        }
        Decoded::Incomplete => Err(FrameProblem::Bad("torn frame".to_string())),
        Decoded::Corrupt(reason) => Err(FrameProblem::Bad(reason)),
        Decoded::Unopenable(reason) => Err(FrameProblem::Unopenable(reason)),
    }
}

/// Why the bytes at a position are no frame to replay.
enum FrameProblem {
    /// Torn or damaged: skipped, or cut as a torn tail.
    Bad(String),
    /// Intact but sealed under a key the node cannot open it with.
    Unopenable(String),
}

/// The offset of the first intact frame at or after `from`, if any.
fn next_intact_frame(bytes: &[u8], from: usize, keys: &Keyring) -> Option<usize> {
    let end = data_end(bytes, from.min(bytes.len())) as usize;
    // An intact frame that does not open counts as found: replay then stops on it instead of
    // taking everything before it for a torn tail.
    (from..end).find(|&offset| {
        frame::plausible_start(&bytes[offset..])
            && !matches!(
                intact_frame(&bytes[offset..], keys),
                Err(FrameProblem::Bad(_))
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use bytes::Bytes;
    use sixfold_proto::wire::ByteRange;
    use sixfold_proto::{Epoch, Lsn, PageId, PgId};

    fn record_frame(lsn: u64) -> Encoded {
        let record = record::seal(
            Lsn(lsn),
            Lsn(lsn - 1),
            Epoch(1),
            PageId(lsn % 4),
            vec![ByteRange {
                offset: 0,
                data: Bytes::from(vec![lsn as u8; 100]),
            }],
        );
        frame::encode("v", PgId(0), &FrameBody::Record(record))
    }

    fn replay(dir: &Path) -> (LogWriter, ReplayStats, Vec<(Frame, Location)>) {
        let mut seen = Vec::new();
        let (writer, stats) = open(dir, Keyring::plaintext(), |frame, location| {
            seen.push((frame, location))
        })
        .expect("opens");
        (writer, stats, seen)
    }

    #[test]
    fn frames_survive_reopen_and_read_back() {
        let temp = TempDir::new("hotlog-reopen");
        let (mut writer, _, seen) = replay(temp.path());
        assert!(seen.is_empty());
        let mut locations = Vec::new();
        for lsn in 1..=5 {
            locations.push(writer.append(&record_frame(lsn)).expect("append"));
        }
        writer.commit().expect("commit");
        drop(writer);
        let (writer, stats, seen) = replay(temp.path());
        assert_eq!(stats.frames, 5);
        assert_eq!(seen.iter().map(|(_, l)| *l).collect::<Vec<_>>(), locations);
        let files = LogFiles::new(temp.path().to_owned(), &writer);
        let bytes = files.read(locations[2]).expect("read");
        let record = record::decode_canonical(&bytes).expect("decodes");
        assert_eq!(record.lsn, 3);
        record::validate(&record, PgId(0)).expect("valid");
    }

    /// Sealed frames: no record byte in the clear, read back after a reopen, a torn sealed
    /// tail is cut like a plaintext one, and an intact frame the node cannot open stops replay
    /// without cutting anything.
    #[test]
    fn sealed_frames_read_back_and_an_unopenable_one_is_never_cut() {
        let temp = TempDir::new("hotlog-sealed");
        let log = temp.path().join("log");
        let hex = sixfold_keys::Kek::generate_hex().expect("kek");
        let keyring = |hex: &str| {
            let kek = sixfold_keys::Kek::from_hex(hex).expect("kek");
            Arc::new(Keyring::open(temp.path(), Some(kek)).expect("keyring"))
        };
        let (mut writer, _) = open(&log, keyring(&hex), |_, _| {}).expect("open");
        let mut locations = Vec::new();
        for lsn in 1..=4 {
            locations.push(writer.append(&record_frame(lsn)).expect("append"));
        }
        writer.commit().expect("commit");
        drop(writer);
        assert!(locations.iter().all(|l| l.sealed));
        let bytes = std::fs::read(log.join(file_name(1))).expect("read");
        assert!(
            !bytes.windows(100).any(|w| w == [3u8; 100]),
            "a record's bytes are in the clear"
        );
        let mut seen = Vec::new();
        let (writer, stats) = open(&log, keyring(&hex), |f, l| seen.push((f, l))).expect("reopen");
        assert_eq!(stats.frames, 4);
        assert_eq!(seen.iter().map(|(_, l)| *l).collect::<Vec<_>>(), locations);
        let files = LogFiles::new(log.clone(), &writer);
        let record =
            record::decode_canonical(&files.read(locations[2]).expect("read")).expect("decodes");
        assert_eq!(record.lsn, 3);
        drop((writer, files));

        // The data key's file gone: the frames are intact but do not open. Replay refuses, and
        // the log is left as it was.
        for entry in std::fs::read_dir(temp.path().join("keys")).expect("keys") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "key") {
                std::fs::remove_file(path).expect("remove key");
            }
        }
        let err = open(&log, keyring(&hex), |_, _| {}).expect_err("refused");
        assert!(err.to_string().contains("does not open"), "{err}");
        assert_eq!(std::fs::read(log.join(file_name(1))).expect("read"), bytes);
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let temp = TempDir::new("hotlog-torn");
        let (mut writer, _, _) = replay(temp.path());
        for lsn in 1..=3 {
            writer.append(&record_frame(lsn)).expect("append");
        }
        writer.commit().expect("commit");
        drop(writer);
        let path = temp.path().join(file_name(1));
        let full = data_end(&std::fs::read(&path).expect("read"), 0);
        let frame_len = record_frame(3).bytes.len() as u64;
        // kill -9 in the middle of writing the third frame: its last bytes never reached the
        // disk, which still holds the zeroes of the preallocated file there.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&[0u8; 7], full - 7))
            .expect("tear");
        let (mut writer, stats, seen) = replay(temp.path());
        assert_eq!(seen.len(), 2);
        assert!(stats.torn_bytes_cut > 0 && stats.torn_bytes_cut <= frame_len);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(
            bytes.len() as u64,
            LOG_FILE_BYTES_MAX,
            "the file keeps its full size"
        );
        assert_eq!(
            data_end(&bytes, 0),
            full - frame_len,
            "the torn frame is zeroed"
        );
        writer.append(&record_frame(3)).expect("append");
        writer.commit().expect("commit");
        drop(writer);
        let (_, stats, seen) = replay(temp.path());
        assert_eq!(seen.len(), 3);
        assert_eq!(stats.torn_bytes_cut, 0);
    }

    #[test]
    fn garbage_tail_is_cut_but_older_file_damage_is_skipped() {
        let temp = TempDir::new("hotlog-damage");
        let (mut writer, _, _) = replay(temp.path());
        writer.append(&record_frame(1)).expect("append");
        writer.append(&record_frame(2)).expect("append");
        writer.commit().expect("commit");
        writer.roll().expect("roll");
        writer.append(&record_frame(3)).expect("append");
        writer.commit().expect("commit");
        drop(writer);
        // Flip a byte in the first frame of the older file: that frame is skipped, the one after
        // it and the newer file still replay.
        let older = temp.path().join(file_name(1));
        let mut bytes = std::fs::read(&older).expect("read");
        bytes[20] ^= 0xff;
        std::fs::write(&older, &bytes).expect("write");
        // Garbage after the newest file's last frame (a torn write of a frame header).
        let newest = temp.path().join(file_name(2));
        let mut bytes = std::fs::read(&newest).expect("read");
        let good = data_end(&bytes, 0);
        bytes[good as usize..good as usize + 30].fill(0xab);
        std::fs::write(&newest, &bytes).expect("write");
        let (_, stats, seen) = replay(temp.path());
        assert_eq!(seen.len(), 2);
        assert_eq!(stats.damaged_files, 1);
        assert_eq!(stats.torn_bytes_cut, 30);
        assert_eq!(data_end(&std::fs::read(&newest).expect("read"), 0), good);
        // Zeroes after the last frame are the normal end of data, not damage.
        let (_, stats, seen) = replay(temp.path());
        assert_eq!((seen.len(), stats.torn_bytes_cut), (2, 0));
    }

    #[test]
    fn damage_in_the_middle_of_the_newest_file_keeps_the_frames_after_it() {
        let temp = TempDir::new("hotlog-middle");
        let (mut writer, _, _) = replay(temp.path());
        let mut locations = Vec::new();
        for lsn in 1..=4 {
            locations.push(writer.append(&record_frame(lsn)).expect("append"));
        }
        writer.commit().expect("commit");
        drop(writer);
        let path = temp.path().join(file_name(1));
        let before = std::fs::read(&path).expect("read");
        let end = data_end(&before, 0);
        // Bit rot in the second frame, and a lost write (zeroes) over part of the third:
        // acknowledged frames 1 and 4 stay, nothing after the damage is zeroed.
        let mut bytes = before.clone();
        bytes[locations[1].offset as usize + 10] ^= 0x5a;
        let third = locations[2].offset as usize;
        bytes[third..third + 16].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let (mut writer, stats, seen) = replay(temp.path());
        let lsns: Vec<u64> = seen
            .iter()
            .filter_map(|(f, _)| match &f.body {
                FrameBody::Record(r) => Some(r.lsn),
                _ => None,
            })
            .collect();
        assert_eq!(lsns, vec![1, 4]);
        assert_eq!(
            seen[1].1, locations[3],
            "frame 4 replays where it was written"
        );
        assert_eq!((stats.damaged_files, stats.torn_bytes_cut), (1, 0));
        assert_eq!(
            data_end(&std::fs::read(&path).expect("read"), 0),
            end,
            "no intact frame after the damage is zeroed"
        );
        // Appends continue after the last intact frame, and everything replays again.
        let fifth = writer.append(&record_frame(5)).expect("append");
        assert_eq!(fifth.file, 1);
        assert!(fifth.offset > locations[3].offset);
        writer.commit().expect("commit");
        drop(writer);
        let (_, stats, seen) = replay(temp.path());
        assert_eq!(seen.len(), 3);
        assert_eq!(stats.torn_bytes_cut, 0);
    }

    #[test]
    fn rolls_at_the_size_limit() {
        let temp = TempDir::new("hotlog-roll");
        let (mut writer, _, _) = replay(temp.path());
        writer.size = LOG_FILE_BYTES_MAX - 10;
        let location = writer.append(&record_frame(1)).expect("append");
        assert_eq!(location.file, 2);
        writer.commit().expect("commit");
        assert!(temp.path().join(file_name(2)).exists());
        assert_eq!(parse_file_name("00000002.log"), Some(2));
        assert_eq!(parse_file_name("2.log"), None);
    }

    #[test]
    fn after_a_failed_sync_replay_cuts_what_the_sync_covered() {
        let temp = TempDir::new("hotlog-fsyncgate");
        let (mut writer, _, _) = replay(temp.path());
        for lsn in 1..=2 {
            writer.append(&record_frame(lsn)).expect("append");
        }
        writer.commit().expect("commit");
        let path = temp.path().join(file_name(1));
        let synced = data_end(&std::fs::read(&path).expect("read"), 0);
        // Frames 3 and 4 are written but their fsync fails: the page cache still returns them,
        // intact, though the disk may never have got them and nobody was acknowledged.
        for lsn in 3..=4 {
            writer.append(&record_frame(lsn)).expect("append");
        }
        writer.write_buffer().expect("write");
        writer.record_sync_failure().expect("marker");
        drop(writer);
        let (mut writer, stats, seen) = replay(temp.path());
        assert_eq!(seen.len(), 2, "only what was synced replays");
        assert!(stats.unsynced_bytes_cut > 0);
        assert_eq!(data_end(&std::fs::read(&path).expect("read"), 0), synced);
        assert!(!temp.path().join(UNSYNCED_MARKER).exists());
        writer.append(&record_frame(3)).expect("append");
        writer.commit().expect("commit");
        drop(writer);
        let (_, stats, seen) = replay(temp.path());
        assert_eq!((seen.len(), stats.unsynced_bytes_cut), (3, 0));
    }
}
