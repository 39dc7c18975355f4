//! Small files written whole and durably: a temp file, fsync, rename over the old file, fsync of
//! the directory. After a crash a file holds either its old or its new contents, whole; a temp
//! file a crash left behind is ignored (and overwritten by the next write). Contents carry a
//! crc32c, so a damaged file reads as absent instead of as garbage.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::hotlog::sync_dir;

/// Suffix of the temp file a write goes through.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Writes `crc32c(body) | body` to `dir/name` durably.
pub fn write_checked(dir: &Path, name: &str, body: &[u8]) -> io::Result<()> {
    let final_path = dir.join(name);
    let temp_path = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    bytes.extend_from_slice(body);
    let mut file = File::create(&temp_path)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp_path, &final_path)?;
    sync_dir(dir)
}

/// The body of a file [`write_checked`] wrote; `None` when its checksum does not match.
pub fn decode_checked(bytes: &[u8]) -> Option<&[u8]> {
    let crc = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let body = bytes.get(4..)?;
    (crc32c::crc32c(body) == crc).then_some(body)
}

/// Reads a file [`write_checked`] wrote: `Ok(None)` when it does not exist, an error when it
/// cannot be read or fails its checksum.
pub fn read_checked(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => match decode_checked(&bytes) {
            Some(body) => Ok(Some(body.to_vec())),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "checksum mismatch: the file is damaged",
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
