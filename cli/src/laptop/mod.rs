//! `sixfold up` / `sixfold down`: the embedded default for a laptop (DESIGN.md, "What a user
//! does"): six `sixfold node` processes on 127.0.0.1 in AZs a, a, b, b, c, c, the volume mounted
//! through `sixfold mount`, formatted as ext4 on first use and loop-mounted at DIR.
//!
//! Everything `up` creates lives in one state directory, never inside DIR ([`state`]); processes
//! are detached and tracked by pid files ([`process`]); external tools and kernel facilities are
//! looked up and checked before anything starts ([`system`], [`preflight`]).
//!
//! Crash consistency: the node data and the cluster file (with the ports chosen on the first
//! `up`) persist in the state directory, so `up` after `down`, or after a crash of any process,
//! brings the same volume back. Pid files may outlive their processes; a pid is trusted only when
//! `/proc/PID/cmdline` still names the same data directory or mount point.

pub mod certs;
pub mod down;
pub mod preflight;
pub mod process;
pub mod state;
pub mod system;
pub mod up;
