//! A private MariaDB server (Debian's mariadbd, installed by scripts/setup.sh) with its datadir
//! and socket wherever the test says (on a sixfold volume), never the system instance.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{log_tail, run};

pub struct Mariadb {
    pub datadir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mariadb {
    /// Starts `mariadbd` on `datadir` (its own socket, no networking, durable commits) and waits
    /// until it answers.
    pub fn start(datadir: &Path, socket: &Path, log: &Path) -> anyhow::Result<Mariadb> {
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                datadir.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--user=root",
                "--skip-networking",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
                "--innodb-flush-log-at-trx-commit=1",
                "--sync-binlog=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mariadbd (installed by scripts/setup.sh)")?;
        let mut db = Mariadb {
            datadir: datadir.to_owned(),
            socket: socket.to_owned(),
            log: log.to_owned(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if db.sql("SELECT 1").is_ok() {
                return Ok(db);
            }
            if let Some(child) = db.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("mariadbd exited with {status}:\n{}", log_tail(&db.log, 40));
                }
            }
            if Instant::now() > deadline {
                bail!("mariadbd did not start:\n{}", log_tail(&db.log, 40));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs statements with the `mariadb` client; returns its output.
    pub fn sql(&self, statements: &str) -> anyhow::Result<String> {
        run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", statements]))
    }

    /// Clean shutdown.
    pub fn stop(mut self) -> anyhow::Result<()> {
        run(Command::new("mariadb-admin")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "shutdown"]))?;
        if let Some(mut child) = self.child.take() {
            let status = child.wait()?;
            assert!(status.success(), "mariadbd exited with {status}");
        }
        Ok(())
    }
}

impl Mariadb {
    /// kill -9 of the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh server on the file system mounted at `dir`: datadir `dir/mysql`, socket
    /// `dir/mariadb.sock`, its log at `log` (outside the volume).
    pub fn install_on(dir: &Path, log: &Path) -> anyhow::Result<Mariadb> {
        let datadir = dir.join("mysql");
        Mariadb::install(&datadir)?;
        Mariadb::start(&datadir, &dir.join("mariadb.sock"), log)
    }

    /// `mariadb-install-db` into `datadir`.
    pub fn install(datadir: &Path) -> anyhow::Result<()> {
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]))
        .map(drop)
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
