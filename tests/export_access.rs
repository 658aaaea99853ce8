//! An export is as private as a block device node (issue 9): the Unix socket
//! is root:disk 0660 unless configured otherwise, the TCP listener exists
//! only when `nbd_listen` asks for it, `hastctl list` says who can reach each
//! export, and a socket owner or group that does not exist stops hastd with
//! `file:line`. The other local user is `nobody` (primary group `nogroup`).

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use hast_testkit::{
    bins, require_tools, run, timeout_s, wait_for, Layout, Node, ResourceSpec, MIB,
};

const RES: &str = "r0";

/// The one-node config without `nbd_listen` (no TCP export), plus `extra`
/// global statements.
fn config(extra: &'static str, tcp: bool) -> impl Fn(&Layout) -> String {
    move |l: &Layout| {
        let base = l.default_config();
        let base: String = base
            .lines()
            .filter(|line| tcp || !line.starts_with("nbd_listen"))
            .map(|line| format!("{line}\n"))
            .collect();
        format!("{extra}{base}")
    }
}

fn node(tag: &str, extra: &'static str, tcp: bool) -> Node {
    Node::builder(bins!())
        .tag(tag)
        .resource(ResourceSpec::new(RES, 64 * MIB))
        .config(config(extra, tcp))
        .start()
}

/// Promotes and waits for the Unix socket to answer.
fn promote_unix(n: &Node) -> String {
    n.hastctl_ok(&["role", "primary", RES]);
    let uri = n.layout().unix_uri(RES);
    let ok = wait_for(timeout_s(20), || {
        let out = run(
            Command::new("nbdinfo").arg("--size").arg(&uri),
            Duration::from_secs(10),
        );
        out.status.success().then_some(())
    });
    assert!(ok.is_some(), "export not offered on {uri}:\n{}", n.log());
    uri
}

fn nbdinfo_as_nobody(uri: &str) -> std::process::Output {
    run(
        Command::new("runuser").args(["-u", "nobody", "--", "nbdinfo", "--size", uri]),
        Duration::from_secs(20),
    )
}

fn gid(group: &str) -> u32 {
    let text = std::fs::read_to_string("/etc/group").expect("/etc/group");
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&group)).then(|| f[2].parse().expect("gid"))
        })
        .unwrap_or_else(|| panic!("no group {group}"))
}

#[test]
fn export_socket_is_private_by_default_and_tcp_is_opt_in() {
    if !require_tools(&["nbdinfo", "runuser"]) {
        return;
    }
    let n = node("access-default", "", false);
    let uri = promote_unix(&n);
    let sock = n.layout().nbd_socket_dir.join(format!("{RES}.nbd"));
    let meta = std::fs::metadata(&sock).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o660, "mode of {}", sock.display());
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.gid(), gid("disk"));

    let out = nbdinfo_as_nobody(&uri);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody reached the export: {out:?}");
    assert!(err.contains("Permission denied"), "{err}");

    // No TCP listener: the only export is the Unix socket, and list says who.
    let st: serde_json::Value =
        serde_json::from_str(&n.hastctl_ok(&["list", "--json", RES])).expect("json");
    let nbd = st
        .pointer("/resources/0/nbd")
        .or_else(|| st.pointer("/0/nbd"))
        .cloned();
    let list = n.hastctl_ok(&["list", RES]);
    eprintln!("{list}");
    assert!(
        !list.contains("nbd://"),
        "a TCP export without nbd_listen: {list}\n{nbd:?}"
    );
    assert!(
        list.contains(&format!(
            "(Unix socket, uid 0 gid {} mode 0660)",
            gid("disk")
        )),
        "{list}"
    );
    assert!(n.log().contains("hastd started"), "{}", n.log());
}

#[test]
fn export_socket_group_and_tcp_reach_come_from_the_config() {
    if !require_tools(&["nbdinfo", "runuser"]) {
        return;
    }
    let n = node(
        "access-group",
        "nbd_socket_group nogroup\nnbd_socket_mode 0660\n",
        true,
    );
    let uri = promote_unix(&n);
    n.wait_export(RES);
    let out = nbdinfo_as_nobody(&uri);
    assert!(
        out.status.success(),
        "nobody (group nogroup) was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = n.hastctl_ok(&["list", RES]);
    eprintln!("{list}");
    assert!(
        list.contains("(any local user (loopback TCP, no authentication))"),
        "{list}"
    );
    assert!(
        list.contains(&format!("gid {} mode 0660", gid("nogroup"))),
        "{list}"
    );
}

#[test]
fn unknown_socket_group_stops_hastd_with_file_and_line() {
    let n = Node::builder(bins!())
        .tag("access-bad")
        .resource(ResourceSpec::new(RES, 64 * MIB))
        .config(config("nbd_socket_group no-such-group-hast\n", false))
        .build();
    let out = run(&mut n.hastd_command(), timeout_s(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("hast.conf:1: nbd_socket_group \"no-such-group-hast\": no such group"),
        "{err}"
    );
}
