//! Issue 3, test 5: MariaDB (Debian's mariadb-server, its own datadir and socket on the volume,
//! never the system instance) on `sixfold up`: install the datadir, create a table, insert and
//! read back rows, stop and start it, read them again and `CHECK TABLE`.

use sixfold_tests::mariadb::Mariadb;
use sixfold_tests::{require_fuse, test_dir, Up};

#[test]
fn mariadb_on_sixfold_up() -> anyhow::Result<()> {
    require_fuse();
    let dir = test_dir("mariadb_on_up");
    let mnt = dir.join("mnt");
    let up = Up::start(&mnt, &dir.join("state"), "8G")?;
    let log = dir.join("mariadb.log");
    let db = Mariadb::install_on(&mnt, &log)?;
    let (datadir, socket) = (db.datadir.clone(), db.socket.clone());
    db.sql(
        "CREATE DATABASE app; \
         CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, pad BLOB) ENGINE=InnoDB;",
    )?;
    let rows = 2000;
    for chunk in 0..(rows / 100) {
        let mut statement = String::from("INSERT INTO app.t VALUES ");
        for i in chunk * 100..(chunk + 1) * 100 {
            if i > chunk * 100 {
                statement.push(',');
            }
            statement.push_str(&format!("({i}, 'row-{i}', REPEAT('x', 500))"));
        }
        db.sql(&statement)?;
    }
    // Single-row commits too, each its own transaction.
    for i in rows..rows + 200 {
        db.sql(&format!("INSERT INTO app.t VALUES ({i}, 'row-{i}', NULL)"))?;
    }
    let expected = format!("{}\t{}", rows + 200, (0..rows + 200).sum::<i32>());
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(id) FROM app.t")?.trim(),
        expected
    );
    db.stop()?;

    // Start it again on the same datadir: the rows are there and the table checks out.
    let db = Mariadb::start(&datadir, &socket, &log)?;
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(id) FROM app.t")?.trim(),
        expected
    );
    assert_eq!(
        db.sql("SELECT v FROM app.t WHERE id = 1234")?.trim(),
        "row-1234"
    );
    let check = db.sql("CHECK TABLE app.t")?;
    assert!(check.contains("status\tOK"), "CHECK TABLE: {check}");
    db.stop()?;

    // And after the whole setup went down and came back.
    up.restart()?;
    let db = Mariadb::start(&datadir, &socket, &log)?;
    assert_eq!(
        db.sql("SELECT COUNT(*), SUM(id) FROM app.t")?.trim(),
        expected
    );
    db.stop()?;
    Ok(())
}
