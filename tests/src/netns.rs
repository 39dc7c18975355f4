//! Hosts on one machine: each node of a test cluster in its own network namespace, joined by a
//! veth pair to a bridge in the test's (root) namespace, so that a test can cut a node off the
//! network the way a real network cut does: packets are dropped, no RST, no ICMP.
//!
//! Layout: bridge `sfbr` with 10.231.0.1/24 in the root namespace (the writer and the test's
//! commands reach the nodes through it); node `i` in namespace `sfn{i}`, interface `eth0` with
//! 10.231.0.(10+i)/24; the bridge side of its veth is `sfv{i}`. [`Net::cut`] disables the
//! node's bridge port (STP state "disabled", as a switch that stops forwarding): whatever the
//! node sends is dropped at the bridge's ingress, whatever is sent to it at its egress, and both
//! ends' TCP connections stay open, retransmitting into the void, until someone decides the peer
//! is gone. [`Net::heal`] sets the port forwarding again, at once: no carrier change (Linux
//! applies a carrier-on up to a second late), and every address has a permanent neighbour entry
//! with fixed MAC addresses (no ARP to fail during a cut and retry after it), so the first
//! packet after a heal gets through, as through a router whose own links never went down.
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
    iproute2("ip", args)
}

/// Runs an iproute2 tool (`ip`, `bridge`); its stderr is the error when it fails.
fn iproute2(tool: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("run {tool} (iproute2)"))?;
    if !output.status.success() {
        bail!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Node `i`'s bridge port: STP state 0 (disabled) or 3 (forwarding).
fn port_state(i: usize, state: &str) -> Result<()> {
    iproute2(
        "bridge",
        &["link", "set", "dev", &host_side(i), "state", state],
    )
}

/// `ip [-n NS] neigh replace HOST lladdr LLADDR dev DEV nud permanent`.
fn permanent_neighbour(ns: Option<&str>, host: &str, lladdr: &str, dev: &str) -> Result<()> {
    let entry = [
        "neigh",
        "replace",
        host,
        "lladdr",
        lladdr,
        "dev",
        dev,
        "nud",
        "permanent",
    ];
    match ns {
        Some(ns) => ip(&[&["-n", ns][..], &entry[..]].concat()),
        None => ip(&entry),
    }
}

/// A fixed, locally administered MAC address.
fn mac(host: usize) -> String {
    format!("02:5f:00:00:00:{host:02x}")
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
        ip(&["link", "add", BRIDGE, "address", &mac(1), "type", "bridge"])?;
        ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        let net = Net { count };
        for i in 0..count {
            let ns = namespace(i);
            let veth = host_side(i);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &mac(10 + i),
                "netns",
                &ns,
            ])?;
            ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Permanent neighbour entries: the test's namespace knows every node, every node knows
        // the bridge and every other node.
        let hosts: Vec<(String, String)> = std::iter::once((format!("{SUBNET}.1"), mac(1)))
            .chain((0..count).map(|i| (net.ip(i), mac(10 + i))))
            .collect();
        for (host, lladdr) in &hosts[1..] {
            permanent_neighbour(None, host, lladdr, BRIDGE)?;
        }
        for i in 0..count {
            let ns = namespace(i);
            for (host, lladdr) in hosts.iter().filter(|(host, _)| *host != net.ip(i)) {
                permanent_neighbour(Some(&ns), host, lladdr, "eth0")?;
            }
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
        port_state(i, "0")
    }

    /// Joins node `i` to the network again.
    pub fn heal(&self, i: usize) -> Result<()> {
        port_state(i, "3")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_all();
    }
}

/// Removes the bridge, every node namespace of this module and their veth pairs.
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
    // A namespace goes once nothing holds it; its veth may outlive `netns del` for a moment.
    let links = Command::new("ip")
        .args(["-br", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in links.lines() {
        let name = line.split(['@', ' ']).next().unwrap_or("");
        let ours = name
            .strip_prefix("sfv")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours {
            quiet(&["link", "del", name]);
        }
    }
    quiet(&["link", "del", BRIDGE]);
}
