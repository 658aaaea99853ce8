//! `hastctl` from the outside (docs/overview.md §4.1, §4.4): every command, its output shape
//! and its error paths, each with its sysexits(3) status and one line on stderr.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::process::Output;

use hast_testkit::{bins, nbd_info, nbd_list, timeout_s, wait_for, Node, ResourceSpec, MIB};

const EX_USAGE: i32 = 64;
const EX_DATAERR: i32 = 65;
const EX_NOINPUT: i32 = 66;
const EX_UNAVAILABLE: i32 = 69;
const EX_TEMPFAIL: i32 = 75;
const EX_NOPERM: i32 = 77;
const EX_CONFIG: i32 = 78;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status `code` and exactly one non-empty line on stderr.
#[track_caller]
fn assert_fails(out: &Output, code: i32, what: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}, got {}\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be one line, got:\n{err}"
    );
}

fn node_without_daemon(tag: &str, size: u64) -> Node {
    Node::builder(bins!())
        .tag(tag)
        .resource(ResourceSpec::new("r0", size))
        .build()
}

fn num(map: &std::collections::BTreeMap<String, String>, key: &str) -> u64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dump field {key} missing or not a number: {map:?}"))
}

#[test]
fn create_then_dump_shows_every_field() {
    let node = node_without_daemon("dump", 64 * MIB);
    let d = node.dump("r0");
    for key in [
        "resource",
        "datasize",
        "extentsize",
        "keepdirty",
        "localoff",
        "resuid",
        "localcnt",
        "remotecnt",
        "prevrole",
        "epoch",
        "generation",
    ] {
        assert!(d.contains_key(key), "dump lacks {key}: {d:?}");
    }
    assert_eq!(d["resource"], "r0");
    let datasize = num(&d, "datasize");
    let localoff = num(&d, "localoff");
    assert_eq!(num(&d, "extentsize"), 2 * MIB, "default extent size");
    assert_eq!(num(&d, "keepdirty"), 2048, "default keepdirty");
    assert_eq!(num(&d, "localcnt"), 0);
    assert_eq!(num(&d, "remotecnt"), 0);
    assert_eq!(d["prevrole"], "init");
    // FreeBSD leaves resuid 0 at create and draws it at the first promotion.
    num(&d, "resuid");
    num(&d, "epoch");
    num(&d, "generation");
    assert!(
        localoff >= 8192 && localoff.is_multiple_of(4096),
        "localoff {localoff}"
    );
    assert!(
        datasize.is_multiple_of(4096) && datasize > 0,
        "datasize {datasize}"
    );
    assert!(
        datasize + localoff <= 64 * MIB,
        "datasize {datasize} + localoff {localoff}"
    );
    assert!(
        64 * MIB - datasize - localoff < 4096,
        "space wasted at the end"
    );

    // `dump all` and `dump` with no name show the same resource.
    let all = node.hastctl_ok(&["dump", "all"]);
    let none = node.hastctl_ok(&["dump"]);
    assert_eq!(all, none);
    assert!(all.contains("resource: r0"), "{all}");
    // -d is accepted.
    node.hastctl_ok(&["dump", "-d", "r0"]);
    // --json: the same fields, numbers as numbers.
    let j: serde_json::Value =
        serde_json::from_str(&node.hastctl_ok(&["dump", "--json", "r0"])).expect("dump --json");
    let r = &j["resources"][0];
    assert_eq!(r["resource"], "r0", "{j}");
    for key in d.keys() {
        assert!(!r[key.as_str()].is_null(), "dump --json lacks {key}: {j}");
    }
    assert_eq!(r["datasize"].as_u64(), Some(datasize), "{j}");
    assert_eq!(r["prevrole"], "init", "{j}");
}

#[test]
fn create_options_extentsize_keepdirty_mediasize() {
    let node = Node::builder(bins!())
        .tag("createopts")
        .resource(
            ResourceSpec::new("r0", 64 * MIB).create_args(&["-e", "1M", "-k", "32", "-m", "32M"]),
        )
        .resource(ResourceSpec::new("r1", 16 * MIB).create_args(&["-e", "65536"]))
        .build();
    let d = node.dump("r0");
    assert_eq!(num(&d, "extentsize"), MIB);
    assert_eq!(num(&d, "keepdirty"), 32);
    assert!(
        num(&d, "datasize") + num(&d, "localoff") <= 32 * MIB,
        "-m 32M ignored: {d:?}"
    );
    assert!(num(&d, "datasize") > 30 * MIB, "{d:?}");
    let d1 = node.dump("r1");
    assert_eq!(num(&d1, "extentsize"), 65536);
    let both = node.hastctl_ok(&["dump", "all"]);
    assert!(
        both.contains("resource: r0") && both.contains("resource: r1"),
        "{both}"
    );
}

#[test]
fn create_errors() {
    let node = node_without_daemon("createerr", 64 * MIB);
    // Missing provider.
    std::fs::remove_file(node.layout().local("r0")).expect("rm provider");
    assert_fails(
        &node.hastctl(&["create", "r0"]),
        EX_NOINPUT,
        "create on a missing provider",
    );
    std::fs::File::create(node.layout().local("r0"))
        .and_then(|f| f.set_len(64 * MIB))
        .expect("recreate provider");
    // Bad extent sizes: not a power of two, below 4 KiB, not a number.
    for bad in ["3000", "1000k", "2k", "abc", "0"] {
        assert_fails(
            &node.hastctl(&["create", "-e", bad, "r0"]),
            EX_USAGE,
            &format!("create -e {bad}"),
        );
    }
    assert_fails(
        &node.hastctl(&["create", "-m", "lots", "r0"]),
        EX_USAGE,
        "create -m lots",
    );
    // Provider too small for metadata plus one extent: a clear failure.
    let tiny = node.layout().local("r0");
    std::fs::File::create(&tiny)
        .and_then(|f| f.set_len(4096))
        .expect("tiny provider");
    let out = node.hastctl(&["create", "r0"]);
    assert!(
        !out.status.success(),
        "create on a 4 KiB provider succeeded"
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // Unknown resource name: 66 (the name is well formed, the resource missing).
    let out = node.hastctl(&["create", "nosuch"]);
    assert_fails(&out, EX_NOINPUT, "create nosuch");
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
}

#[test]
fn dump_of_corrupt_metadata() {
    let node = node_without_daemon("corrupt", 64 * MIB);
    let before = node.dump("r0");
    let path = node.layout().local("r0");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open provider");

    // One header slot torn: the other one is used, same identity.
    let mut slot = vec![0u8; 4096];
    f.read_exact_at(&mut slot, 0).expect("read slot");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    f.write_all_at(&garbage, 0).expect("tear slot 0");
    let out = node.hastctl(&["dump", "r0"]);
    assert!(
        out.status.success(),
        "dump with one bad slot failed: {}",
        stderr(&out)
    );
    let after = hast_testkit::node::parse_dump(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        after.get("resuid"),
        before.get("resuid"),
        "fallback slot has another identity"
    );

    // Both slots bad: EX_DATAERR, and dump rewrites nothing.
    f.write_all_at(&garbage, 4096).expect("tear slot 1");
    let mut img = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut img, 0).expect("read");
    assert_fails(
        &node.hastctl(&["dump", "r0"]),
        EX_DATAERR,
        "dump with both slots corrupt",
    );
    let mut img2 = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut img2, 0).expect("read");
    assert!(img == img2, "dump modified the metadata area");

    // Never created (all zeroes): EX_DATAERR too.
    f.write_all_at(&vec![0u8; 64 * 1024], 0).expect("zero");
    assert_fails(
        &node.hastctl(&["dump", "r0"]),
        EX_DATAERR,
        "dump of a never-created provider",
    );
}

#[test]
fn daemon_commands_without_daemon_are_unavailable() {
    let node = node_without_daemon("nodaemon", 64 * MIB);
    for args in [
        &["role", "primary", "r0"][..],
        &["role", "init", "all"],
        &["status"],
        &["status", "--json"],
        &["list"],
        &["list", "--json", "r0"],
        &["role", "-E", "3", "primary", "r0"],
        &["lease", "-t", "1000", "r0"],
        &["attach", "r0"],
        &["freeze", "r0"],
        &["freeze", "-t", "-1", "all"],
        &["thaw", "r0"],
        &["query", "r0"],
        &["snapshot", "-o", "/tmp", "r0"],
    ] {
        assert_fails(
            &node.hastctl(args),
            EX_UNAVAILABLE,
            &format!("hastctl {args:?} without hastd"),
        );
    }
}

#[test]
fn usage_errors() {
    let node = node_without_daemon("usage", 64 * MIB);
    let none = node.hastctl_raw(&[]);
    assert_eq!(
        none.status.code(),
        Some(EX_USAGE),
        "hastctl without arguments"
    );
    for args in [
        &["frobnicate"][..],
        &["role"],
        &["role", "primary"],
        &["role", "boss", "r0"],
        &["create"],
        &["create", "-e"],
        &["status", "--bogus"],
        &["dump", "-x"],
        &["create", "-k", "many", "r0"],
        &["role", "-E"],
        &["role", "-E", "x", "primary", "r0"],
        &["role", "-E", "-1", "primary", "r0"],
        &["role", "--epoch", "1", "primary"],
        &["lease"],
        &["lease", "r0"],
        &["lease", "-t", "1000"],
        &["lease", "-t", "86400001", "r0"],
        &["lease", "-t", "1s", "r0"],
        &["attach"],
        &["attach", "-t", "1", "r0"],
        &["freeze"],
        &["freeze", "-t", "x", "r0"],
        &["freeze", "-t", "86401", "r0"],
        &["freeze", "-t"],
        &["thaw"],
        &["thaw", "-t", "1", "r0"],
        &["query"],
        &["snapshot", "r0"],
        &["snapshot", "-o", "/tmp"],
        &["snapshot", "-o"],
        &["snapshot", "-t", "x", "-o", "/tmp", "r0"],
    ] {
        assert_fails(&node.hastctl(args), EX_USAGE, &format!("hastctl {args:?}"));
    }
    // A missing argument is named, not just "not provided".
    let out = node.hastctl(&["role"]);
    assert!(
        stderr(&out).contains("init | primary | secondary") && stderr(&out).contains("all | name"),
        "role without arguments names nothing missing: {}",
        stderr(&out)
    );
    let out = node.hastctl(&["role", "primary"]);
    assert!(stderr(&out).contains("all | name"), "{}", stderr(&out));
    // An unknown resource is 66 (EX_NOINPUT) before any daemon is asked.
    for args in [
        &["freeze", "nosuch"][..],
        &["snapshot", "-o", "/tmp", "nosuch"],
        &["dump", "nosuch"],
    ] {
        assert_fails(
            &node.hastctl(args),
            EX_NOINPUT,
            &format!("hastctl {args:?}"),
        );
    }
}

/// `role -E` and `lease` on a running single-node resource: refusals are
/// EX_NOPERM with one line; the epoch shows in status, list and dump.
#[test]
fn epoch_and_lease_exit_statuses() {
    let mut node = Node::builder(bins!())
        .tag("fenceflags")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .start();
    let epoch = |node: &Node| resource(&status_json(node, "list"), "r0")["epoch"].as_u64();
    assert_eq!(epoch(&node), Some(0), "epoch of a fresh component in init");
    assert_fails(
        &node.hastctl(&["lease", "-t", "1000", "r0"]),
        EX_NOPERM,
        "lease while init",
    );

    node.hastctl_ok(&["role", "-E", "4", "primary", "r0"]);
    node.wait_export("r0");
    assert_eq!(epoch(&node), Some(4));
    let out = node.hastctl(&["role", "-E", "3", "primary", "r0"]);
    assert_fails(&out, EX_NOPERM, "promotion with a lower epoch");
    assert!(
        stderr(&out).contains("stale epoch 3 < current 4"),
        "{}",
        stderr(&out)
    );
    let out = node.hastctl(&["role", "-E", "2", "primary", "all"]);
    assert_fails(&out, EX_NOPERM, "promotion of all with a lower epoch");

    node.hastctl_ok(&["lease", "-t", "600000", "all"]);
    let l = status_json(&node, "list");
    let r0 = resource(&l, "r0");
    assert_eq!(r0["epoch"].as_u64(), Some(4), "{l}");
    assert!(r0["lease_ms"].as_u64().unwrap_or(0) > 590_000, "{l}");
    assert!(r0["fence"].is_null(), "no fence without a peer: {l}");
    let text = node.hastctl_ok(&["list", "r0"]);
    assert!(
        text.contains("  epoch: 4") && text.contains("  lease: "),
        "{text}"
    );

    // `lease -t 0` cancels: no deadline, still primary, still serving.
    node.hastctl_ok(&["lease", "-t", "0", "r0"]);
    let l = status_json(&node, "list");
    assert!(
        resource(&l, "r0")["lease_ms"].is_null(),
        "lease not cancelled: {l}"
    );
    assert_eq!(resource(&l, "r0")["role"], "primary", "{l}");
    assert!(node.hastctl_ok(&["list", "r0"]).contains("  lease: none"));
    // A short lease cancelled before its end does not demote.
    node.hastctl_ok(&["lease", "-t", "300", "r0"]);
    node.hastctl_ok(&["lease", "-t", "0", "r0"]);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(
        resource(&status_json(&node, "list"), "r0")["role"],
        "primary"
    );

    // Back to init: the epoch stays on disk; a manual promotion bumps it.
    node.hastctl_ok(&["role", "init", "r0"]);
    assert_eq!(num(&node.dump("r0"), "epoch"), 4);
    assert_eq!(epoch(&node), Some(4));
    node.promote("r0");
    assert_eq!(epoch(&node), Some(5));
    assert!(resource(&status_json(&node, "list"), "r0")["lease_ms"].is_null());
}

#[test]
fn hastd_usage_errors() {
    let node = node_without_daemon("hastdusage", 64 * MIB);
    for args in [&["--bogus"][..], &["-c"], &["-F", "extra-argument"]] {
        let mut cmd = std::process::Command::new(&node.bins().hastd);
        cmd.args(args);
        let out = hast_testkit::run(&mut cmd, timeout_s(30));
        // The error, optionally followed by BSD's one-line "usage:" synopsis.
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(EX_USAGE), "hastd {args:?}: {err}");
        let n = err.lines().filter(|l| !l.trim().is_empty()).count();
        assert!((1..=2).contains(&n), "hastd {args:?}: stderr:\n{err}");
    }
    let out = hast_testkit::run(
        std::process::Command::new(&node.bins().hastd).arg("-h"),
        timeout_s(30),
    );
    assert!(out.status.success(), "hastd -h: {}", stderr(&out));
    let help = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        help.contains("-F") && help.contains("-c"),
        "hastd -h:\n{help}"
    );
}

#[test]
fn config_errors_name_file_and_line() {
    let node = node_without_daemon("conferr", 64 * MIB);
    let cfg = node.layout().config_path.clone();
    let good = std::fs::read_to_string(&cfg).expect("config");
    let local = node.layout().local("r0");
    let cases: Vec<(&str, String, usize)> = vec![
        ("unknown keyword", good.replace("state_dir", "frobnicate 1\nstate_dir"), 6),
        (
            "missing local",
            format!("{}\nresource r1 {{\n    on nodea {{\n        remote none\n    }}\n}}\n", good),
            0,
        ),
        (
            "duplicate resource",
            format!(
                "{good}\nresource r0 {{\n    on nodea {{\n        local {}\n        remote none\n    }}\n}}\n",
                local.display()
            ),
            0,
        ),
        ("unterminated block", good.trim_end().trim_end_matches('}').to_string(), 0),
        ("no section for this node", good.replace("on nodea", "on othernode"), 0),
    ];
    for (what, text, line) in cases {
        std::fs::write(&cfg, &text).expect("write config");
        let out = node.hastctl(&["dump", "r0"]);
        assert_fails(&out, EX_CONFIG, &format!("dump with {what}"));
        let err = stderr(&out);
        assert!(
            err.contains(&cfg.display().to_string()),
            "{what}: file not named: {err}"
        );
        if line > 0 {
            assert!(
                err.contains(&format!(":{line}")),
                "{what}: line {line} not named: {err}"
            );
        }
        // hastd refuses the same config with the same status, before starting anything.
        let mut cmd = node.hastd_command();
        let hd = hast_testkit::run(&mut cmd, timeout_s(30));
        assert_eq!(
            hd.status.code(),
            Some(EX_CONFIG),
            "hastd with {what}: {}",
            stderr(&hd)
        );
        assert!(
            !node.layout().control.exists(),
            "hastd left a control socket with {what}"
        );
    }
    // A config file that does not exist.
    std::fs::remove_file(&cfg).expect("rm config");
    assert_fails(
        &node.hastctl(&["dump"]),
        EX_NOINPUT,
        "dump with a missing config file",
    );
    let hd = hast_testkit::run(&mut node.hastd_command(), timeout_s(30));
    assert_fails(&hd, EX_NOINPUT, "hastd with a missing config file");
    std::fs::write(&cfg, good).expect("restore config");
}

fn status_json(node: &Node, cmd: &str) -> serde_json::Value {
    let out = node.hastctl_ok(&[cmd, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd} --json is not JSON ({e}):\n{out}"))
}

fn resource<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {v}"))
}

#[test]
fn status_and_list_text_and_json() {
    let mut node = Node::builder(bins!())
        .tag("status")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .resource(ResourceSpec::new("r1", 64 * MIB).create_args(&["-e", "1M", "-k", "16"]))
        .start();
    let v = status_json(&node, "status");
    for name in ["r0", "r1"] {
        let r = resource(&v, name);
        assert_eq!(r["role"], "init", "{v}");
        assert_eq!(
            r["local"],
            node.layout().local(name).display().to_string(),
            "{v}"
        );
        assert_eq!(r["remote"], "none", "{v}");
        let st = r["status"].as_str().unwrap_or("");
        assert!(["complete", "degraded", "-"].contains(&st), "status {st:?}");
    }

    // Terse: exactly the columns of `status`'s text; `list --json` has everything.
    let keys = |r: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = r.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(resource(&v, "r0")),
        ["local", "name", "remote", "role", "status"],
        "status --json is not terse: {v}"
    );
    assert!(
        keys(resource(&status_json(&node, "list"), "r0")).len() > 10,
        "list --json is not verbose"
    );

    node.promote("r0");
    let v = status_json(&node, "status");
    assert_eq!(resource(&v, "r0")["role"], "primary");
    assert_eq!(resource(&v, "r1")["role"], "init");

    let text = node.hastctl_ok(&["status"]);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    for word in ["Name", "Status", "Role", "Components"] {
        assert!(header.contains(word), "status header {header:?}");
    }
    let r0 = text
        .lines()
        .find(|l| l.starts_with("r0"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(r0.contains("primary"), "{r0}");
    let only = node.hastctl_ok(&["status", "r1"]);
    assert!(only.lines().any(|l| l.contains("init")), "{only}");
    assert!(
        only.lines().any(|l| l.starts_with("r1")) && !only.lines().any(|l| l.starts_with("r0")),
        "{only}"
    );

    // The metadata figures of a resource in use (top level or under "meta").
    let meta = |r: &serde_json::Value, k: &str| r[k].as_u64().or_else(|| r["meta"][k].as_u64());
    node.promote("r1");
    let l = status_json(&node, "list");
    let (r0, r1) = (resource(&l, "r0"), resource(&l, "r1"));
    assert_eq!(meta(r0, "extentsize"), Some(2 * MIB), "{l}");
    assert_eq!(meta(r0, "keepdirty"), Some(2048), "{l}");
    assert_eq!(meta(r1, "extentsize"), Some(MIB), "{l}");
    assert_eq!(meta(r1, "keepdirty"), Some(16), "{l}");
    assert_eq!(meta(r0, "datasize"), Some(node.datasize("r0")), "{l}");
    assert!(r0["dirty_bytes"].is_u64(), "dirty_bytes: {l}");
    assert_eq!(r0["replication"], "fullsync", "default replication: {l}");
    let stats = &resource(&l, "r0")["stats"];
    for k in ["reads", "writes", "flushes", "activemap_updates"] {
        assert!(stats[k].is_u64(), "stats.{k} missing: {l}");
    }
    // TRIM is counted as FreeBSD's BIO_DELETE ("deletes") or as "trims".
    assert!(
        stats["deletes"].is_u64() || stats["trims"].is_u64(),
        "no trim counter: {l}"
    );
    let writes_before = stats["writes"].as_u64().unwrap_or(0);
    let text = node.hastctl_ok(&["list"]);
    assert!(
        text.contains("r0") && text.contains("r1") && text.contains("primary"),
        "{text}"
    );

    // A write through NBD shows in the statistics.
    if hast_testkit::require_tool("qemu-io") {
        let out = hast_testkit::run(
            std::process::Command::new("qemu-io").args([
                "-f",
                "raw",
                &node.uri("r0"),
                "-c",
                "write -P 1 0 64k",
                "-c",
                "flush",
            ]),
            timeout_s(60),
        );
        hast_testkit::expect_ok(&out, "qemu-io write");
        let l = status_json(&node, "list");
        let stats = &resource(&l, "r0")["stats"];
        assert!(
            stats["writes"].as_u64().unwrap_or(0) > writes_before,
            "writes not counted: {l}"
        );
        assert!(
            stats["flushes"].as_u64().unwrap_or(0) >= 1,
            "flush not counted: {l}"
        );
    }

    // Unknown resource names with a daemon running: 66, as in hastmonctl.
    let out = node.hastctl(&["role", "primary", "nosuch"]);
    assert_fails(&out, EX_NOINPUT, "role on an unknown resource");
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    let out = node.hastctl(&["status", "nosuch"]);
    assert_fails(&out, EX_NOINPUT, "status of an unknown resource");
}

#[test]
fn role_transitions_control_the_export() {
    let mut node = Node::builder(bins!())
        .tag("roles")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .resource(ResourceSpec::new("r1", 64 * MIB))
        .start();
    let addr = node.layout().nbd_addr();
    let t = std::time::Duration::from_secs(5);
    let role =
        |node: &Node, name: &str| resource(&status_json(node, "status"), name)["role"].clone();
    let offered = |name: &str| nbd_info(&addr, name, t).is_ok();
    let gone = |name: &str| wait_for(timeout_s(10), || (!offered(name)).then_some(())).is_some();

    assert!(!offered("r0"), "export offered while init");
    let size = node.promote("r0");
    assert_eq!(size, node.datasize("r0"));
    assert_eq!(role(&node, "r0"), "primary");
    assert_eq!(nbd_list(&addr, t).expect("list"), vec!["r0".to_string()]);

    node.hastctl_ok(&["role", "secondary", "r0"]);
    assert_eq!(role(&node, "r0"), "secondary");
    assert!(gone("r0"), "export still offered while secondary");
    assert!(!nbd_list(&addr, t)
        .expect("list")
        .contains(&"r0".to_string()));

    node.hastctl_ok(&["role", "init", "r0"]);
    assert_eq!(role(&node, "r0"), "init");
    assert!(!offered("r0"));

    node.hastctl_ok(&["role", "primary", "all"]);
    node.wait_export("r0");
    node.wait_export("r1");
    let mut names = nbd_list(&addr, t).expect("list");
    names.sort();
    assert_eq!(names, vec!["r0".to_string(), "r1".to_string()]);
    // The same role again is not an error.
    node.hastctl_ok(&["role", "primary", "r1"]);

    // create refuses to overwrite the metadata of a resource in use.
    let resuid = node.dump("r0")["resuid"].clone();
    let out = node.hastctl(&["create", "r0"]);
    assert_fails(&out, EX_TEMPFAIL, "create on an active resource");
    assert_eq!(
        node.dump("r0")["resuid"],
        resuid,
        "create changed an active resource"
    );

    node.hastctl_ok(&["role", "init", "all"]);
    assert!(gone("r0") && gone("r1"));
    assert_eq!(role(&node, "r1"), "init");
    // A resource that has been primary has an identity; create makes a new one.
    assert_ne!(resuid, "0", "resuid still 0 after being primary");
    // Not without --force (drbdadm create-md asks): exit 73, metadata kept.
    let epoch = node.dump("r0")["epoch"].clone();
    assert_ne!(epoch, "0", "epoch still 0 after being primary");
    let out = node.hastctl(&["create", "r0"]);
    assert_fails(&out, 73, "create over valid metadata without --force");
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        node.dump("r0")["epoch"],
        epoch,
        "create without --force reset the epoch"
    );
    assert_eq!(node.dump("r0")["resuid"], resuid);
    node.hastctl_ok(&["create", "--force", "r0"]);
    assert_ne!(
        node.dump("r0")["resuid"],
        resuid,
        "create kept the old resuid"
    );
    node.promote("r0");
    let fresh = node.dump("r0")["resuid"].clone();
    assert!(
        fresh != "0" && fresh != resuid,
        "resuid after create + primary: {fresh}"
    );
    node.hastctl_ok(&["role", "init", "r0"]);
    // After primary, prevrole is remembered in the metadata.
    let d = node.dump("r0");
    assert!(
        ["primary", "init", "secondary"].contains(&d["prevrole"].as_str()),
        "{d:?}"
    );
}

#[test]
fn hastd_pidfile_socket_mode_signals() {
    let mut node = Node::builder(bins!())
        .tag("daemon")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .start();
    let pid = node.daemon_pid().expect("pid");
    let pidfile = std::fs::read_to_string(&node.layout().pidfile).expect("pidfile written");
    assert_eq!(
        pidfile.trim().parse::<u32>().ok(),
        Some(pid),
        "pidfile content {pidfile:?}"
    );
    let mode = std::fs::metadata(&node.layout().control)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "control socket mode {:o}",
        mode & 0o777
    );

    // A second hastd on the same pidfile refuses to start and leaves the first alone.
    let mut cmd = node.hastd_command();
    let second = hast_testkit::run(&mut cmd, timeout_s(30));
    assert!(
        !second.status.success(),
        "a second hastd started on the same pidfile"
    );
    assert!(node.daemon_running());
    node.hastctl_ok(&["status"]);

    // SIGHUP: an added resource appears (in init), a removed one goes away.
    let cfg = node.layout().config_path.clone();
    let original = std::fs::read_to_string(&cfg).expect("config");
    let r1 = node.layout().local("r1");
    std::fs::File::create(&r1)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("r1 provider");
    std::fs::write(
        &cfg,
        format!(
            "{original}\nresource r1 {{\n    on nodea {{\n        local {}\n        remote none\n    }}\n}}\n",
            r1.display()
        ),
    )
    .expect("config with r1");
    node.hastctl_ok(&["create", "r1"]);
    node.signal(libc::SIGHUP);
    let seen = wait_for(timeout_s(10), || {
        let out = node.hastctl(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["resources"]
            .as_array()?
            .iter()
            .any(|r| r["name"] == "r1" && r["role"] == "init")
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "r1 not loaded after SIGHUP:\n{}",
        node.log()
    );
    std::fs::write(&cfg, &original).expect("config without r1");
    node.signal(libc::SIGHUP);
    let dropped = wait_for(timeout_s(10), || {
        let out = node.hastctl(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (!v["resources"].as_array()?.iter().any(|r| r["name"] == "r1")).then_some(())
    });
    assert!(
        dropped.is_some(),
        "r1 still there after SIGHUP:\n{}",
        node.log()
    );

    // A broken config on SIGHUP keeps the daemon running on the old one.
    std::fs::write(&cfg, format!("{original}\nfrobnicate\n")).expect("broken config");
    node.signal(libc::SIGHUP);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        node.daemon_running(),
        "hastd died on a bad config reload:\n{}",
        node.log()
    );
    std::fs::write(&cfg, &original).expect("restore");
    node.promote("r0");

    // SIGTERM: clean exit 0 even while primary.
    let st = node.stop();
    assert!(
        st.success(),
        "hastd exit status on SIGTERM: {st}\n{}",
        node.log()
    );
}

/// `hastctl attach` on a resource that is not open refuses (EX_TEMPFAIL, one
/// line); on a healthy primary it succeeds and says there was nothing to do;
/// `list` shows the local component's state.
#[test]
fn attach_exit_statuses() {
    let mut node = Node::builder(bins!())
        .tag("attach")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .start();
    assert_fails(
        &node.hastctl(&["attach", "r0"]),
        EX_TEMPFAIL,
        "attach while init",
    );
    node.promote("r0");
    let out = node.hastctl(&["attach", "r0"]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "attach of a healthy primary: {text}");
    assert!(text.contains("no errors"), "{text}");
    let list = node.hastctl_ok(&["list", "r0"]);
    assert!(list.contains("local: attached, 0 errors"), "{list}");
    let st = resource(&status_json(&node, "list"), "r0").clone();
    assert_eq!(st["local_state"], "attached", "{st}");
    assert_eq!(st["status"], "complete", "{st}");
}

/// A user other than root reaches hastd's control socket (0600, root's):
/// told "Permission denied … hastctl needs root" with 77, not "is hastd
/// running?" with 69 while hastd runs. Run as `nobody` through setpriv.
#[test]
fn non_root_is_told_permission_denied() {
    if !hast_testkit::env::require_root() || !hast_testkit::env::require_tool("setpriv") {
        return;
    }
    let node = Node::builder(bins!())
        .tag("nonroot")
        .resource(ResourceSpec::new("r0", 64 * MIB))
        .start();
    // The binary and a copy of the configuration where nobody can read them.
    let dir = hast_testkit::tmp::TempDir::new("hastctl-nobody");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("hastctl");
    std::fs::copy(&node.bins().hastctl, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("hast.conf");
    std::fs::copy(&node.layout().config_path, &conf).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = hast_testkit::run(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["status", "-c"])
            .arg(&conf)
            .args(["--node", &node.layout().node_name]),
        timeout_s(30),
    );
    assert_fails(&out, EX_NOPERM, "status as nobody");
    let err = stderr(&out);
    assert!(
        err.contains("Permission denied") && err.contains("hastctl needs root"),
        "{err}"
    );
    assert!(!err.contains("is hastd running"), "{err}");
}
