//! Hosts on one machine: each node of a test cluster in its own network namespace, joined by a
//! veth pair to a bridge in the test's (root) namespace, so that a test can cut a node off the
//! network the way a real network cut does: packets are dropped, no RST, no ICMP.
//!
//! Layout: bridge `sfbr` with 10.231.0.1/24 in the root namespace (the writer and the test's
//! commands reach the nodes through it); node `i` in namespace `sfn{i}`, interface `eth0` with
//! 10.231.0.(10+i)/24; the bridge side of its veth is `sfv{i}`. [`Net::cut`] sets a node's
//! bridge-side link down: whatever the node sends is dropped at its veth, whatever is sent to it
//! is dropped at the bridge, and both ends' TCP connections stay open, retransmitting into the
//! void, until someone decides the peer is gone. [`Net::heal`] sets it up again.
//!
//! Needs root and iproute2 (`ip`). The names are fixed, so two such tests cannot run at once
//! (the test command runs test binaries one after another); a test removes what an earlier,
//! failed run left before it builds its own, and [`Net`]'s drop removes everything.

use std::process::Command;

use anyhow::{bail, Context, Result};

const BRIDGE: &str = "sfbr";
const SUBNET: &str = "10.231.0";

/// The namespaces, veths and bridge of one test's nodes.
pub struct Net {
    count: usize,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn namespace(i: usize) -> String {
    format!("sfn{i}")
}

fn host_side(i: usize) -> String {
    format!("sfv{i}")
}

impl Net {
    /// Builds the bridge and `count` node namespaces (removing any left by an earlier run).
    pub fn create(count: usize) -> Result<Net> {
        assert!(count < 200, "one /24 holds the nodes");
        remove_all();
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        let net = Net { count };
        for i in 0..count {
            let ns = namespace(i);
            let veth = host_side(i);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", 10 + i)
    }

    /// Node `i`'s namespace, for `ip netns exec`.
    pub fn namespace(&self, i: usize) -> String {
        namespace(i)
    }

    /// Cuts node `i` off the network, silently.
    pub fn cut(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &host_side(i), "down"])
    }

    /// Joins node `i` to the network again.
    pub fn heal(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &host_side(i), "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_all();
    }
}

/// Removes the bridge and every node namespace of this module (deleting a namespace deletes its
/// veth pair too).
fn remove_all() {
    let quiet = |args: &[&str]| {
        let _ = Command::new("ip").args(args).output();
    };
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in listed.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let ours = name
            .strip_prefix("sfn")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours {
            quiet(&["netns", "del", name]);
        }
    }
    quiet(&["link", "del", BRIDGE]);
}
