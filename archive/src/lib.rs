//! sixfold's backup: where archived objects live and what they hold.
//!
//! Storage nodes archive every PG continuously (one archiver segment per PG at a time, see the
//! node's `archiver` module); `sixfold snapshot` and `sixfold restore` read what they wrote.
//! This crate is what both sides share:
//!
//! - [`store`]: the object store, a local directory (the embedded default) or an S3 bucket
//!   ([`s3`]);
//! - [`keys`]: the object layout, every key derived from (volume, PG, LSN range), so that two
//!   archivers writing the same range write the same object (idempotent keys);
//! - [`format`]: archive object bodies (record runs, page images), checksummed and compressed;
//! - [`catalog`]: what a PG's archive can restore, from its object keys alone (pure);
//! - [`manifest`]: snapshot manifests and base-image manifests (JSON);
//! - [`points`]: a volume's restore points (every PG's catalog) and time-to-LSN lookup.
//!
//! The layout under the store's root:
//!
//! ```text
//! <volume>/pg-<PG>/log/<start>-<end>-<time>.run   every record of the PG in (start, end]
//! <volume>/pg-<PG>/base/<lsn>/<n>.pages           the PG's pages as of <lsn>, in chunks
//! <volume>/pg-<PG>/base/<lsn>/done.json           written last: the base image is complete
//! <volume>/pg-<PG>/head                           a hint: how far the archive reaches
//! <volume>/snapshots/<name>.json                  snapshot manifests
//! ```
//!
//! LSNs in run keys are volume LSNs: a run (start, end] holds every record of its PG with an
//! LSN in that range, whether or not `start` and `end` are records of the PG. So the archive of
//! a PG "covers" a volume LSN L when a chain of runs from an origin (LSN 0 or a base image)
//! reaches L, and a volume can be restored at L when every PG's archive covers L.

pub mod catalog;
pub mod format;
pub mod keys;
pub mod manifest;
pub mod points;
pub mod s3;
pub mod store;

pub use store::{ObjectError, ObjectStore};
