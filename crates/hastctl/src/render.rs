//! Text output in the shapes FreeBSD's hastctl prints.

use std::fmt::Write;

use hast_api::ResourceStatus;
use hast_meta::Picked;

/// FreeBSD humanize_number style: "2.0MB", "100MB", "512B".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{:.0}{}", v.floor(), UNITS[u])
    }
}

pub fn dump(name: &str, p: &Picked) -> String {
    let h = &p.header;
    let mut s = String::new();
    let slot = if p.slot == 0 { "A" } else { "B" };
    let _ = writeln!(s, "resource: {name}");
    let _ = writeln!(s, "    datasize: {} ({})", h.datasize, human(h.datasize));
    let _ = writeln!(
        s,
        "    extentsize: {} ({})",
        h.extentsize,
        human(u64::from(h.extentsize))
    );
    let _ = writeln!(s, "    keepdirty: {}", h.keepdirty);
    let _ = writeln!(s, "    localoff: {}", h.data_offset);
    let _ = writeln!(s, "    resuid: {}", h.resuid);
    let _ = writeln!(s, "    localcnt: {}", h.localcnt);
    let _ = writeln!(s, "    remotecnt: {}", h.remotecnt);
    let _ = writeln!(s, "    prevrole: {}", h.prevrole);
    let _ = writeln!(s, "    epoch: {}", h.epoch);
    let _ = writeln!(s, "    flags: {}", flag_words(h.flags));
    let _ = writeln!(s, "    generation: {} (slot {slot})", h.generation);
    let _ = writeln!(s, "    name: {}", h.name);
    if let Some(e) = &p.other_error {
        let _ = writeln!(s, "    warning: other slot invalid: {e}");
    }
    s
}

/// The header's flags by name (`none`): `inconsistent` (the target of an
/// unfinished resync), `outdated` (`hastctl outdate`).
fn flag_words(flags: u32) -> String {
    let names = [
        (hast_meta::FLAG_INCONSISTENT, "inconsistent"),
        (hast_meta::FLAG_OUTDATED, "outdated"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(",")
    }
}

/// `dump --json`: the fields of the text, numbers as numbers.
pub fn dump_json(name: &str, p: &Picked) -> serde_json::Value {
    let h = &p.header;
    serde_json::json!({
        "resource": name,
        "datasize": h.datasize,
        "extentsize": h.extentsize,
        "keepdirty": h.keepdirty,
        "localoff": h.data_offset,
        "resuid": h.resuid,
        "localcnt": h.localcnt,
        "remotecnt": h.remotecnt,
        "prevrole": h.prevrole,
        "epoch": h.epoch,
        "flags": flag_words(h.flags),
        "generation": h.generation,
        "slot": if p.slot == 0 { "A" } else { "B" },
        "name": h.name,
        "other_slot_error": p.other_error.as_ref().map(|e| e.to_string()),
    })
}

/// `status --json`: the terse view, the columns of `status`'s text (the
/// same names as in `list --json`, which has every field).
pub fn status_json(list: &[ResourceStatus]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = list
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "status": r.status,
                "role": r.role,
                "local": r.local,
                "remote": r.remote,
            })
        })
        .collect();
    serde_json::json!({ "resources": rows })
}

pub fn status(list: &[ResourceStatus]) -> String {
    let mut s = String::from("Name\tStatus\t Role\t\tComponents\n");
    for r in list {
        let _ = writeln!(
            s,
            "{}\t{:<8} {:<14}\t{}\t{}",
            r.name, r.status, r.role, r.local, r.remote
        );
    }
    s
}

pub fn list(list: &[ResourceStatus]) -> String {
    let mut s = String::new();
    for r in list {
        let _ = writeln!(s, "{}:", r.name);
        let _ = writeln!(s, "  role: {}", r.role);
        let _ = writeln!(s, "  provname: {}", r.provider_name);
        let _ = writeln!(s, "  localpath: {}", r.local);
        if let Some(m) = &r.meta {
            let _ = writeln!(
                s,
                "  extentsize: {} ({})",
                m.extentsize,
                human(u64::from(m.extentsize))
            );
            let _ = writeln!(s, "  keepdirty: {}", m.keepdirty);
            let _ = writeln!(s, "  datasize: {} ({})", m.datasize, human(m.datasize));
        }
        let _ = writeln!(s, "  remoteaddr: {}", r.remote);
        if let Some(p) = &r.peer {
            let _ = writeln!(s, "  peer: {p}");
        }
        if let Some(a) = &r.auth {
            let _ = writeln!(s, "  auth: {a}");
        }
        if let Some(t) = &r.tls {
            let _ = writeln!(s, "  tls: {t}");
        }
        let _ = writeln!(s, "  replication: {}", r.replication);
        let _ = writeln!(s, "  checksum: {}", r.checksum);
        let _ = writeln!(s, "  compression: {}", r.compression);
        let _ = writeln!(s, "  status: {}", r.status);
        if let Some(l) = &r.local_state {
            let _ = writeln!(s, "  local: {l}, {} errors", r.local_errors);
        }
        let _ = writeln!(s, "  dirty: {} ({})", r.dirty_bytes, human(r.dirty_bytes));
        if let Some(m) = &r.meta {
            let _ = writeln!(s, "  resuid: {}", m.resuid);
            let _ = writeln!(s, "  localcnt: {}", m.localcnt);
            let _ = writeln!(s, "  remotecnt: {}", m.remotecnt);
            if m.inconsistent {
                let _ = writeln!(s, "  inconsistent: yes (target of an unfinished resync)");
            }
        }
        if r.outdated {
            let _ = writeln!(
                s,
                "  outdated: yes (the primary wrote without this copy: no promotion without --force until it is resynced)"
            );
        }
        if let Some(e) = r.epoch {
            let _ = writeln!(s, "  epoch: {e}");
        }
        if r.role == hast_api::Role::Primary {
            match r.lease_ms {
                Some(ms) => {
                    let _ = writeln!(s, "  lease: {ms} ms left");
                }
                None => {
                    let _ = writeln!(s, "  lease: none");
                }
            }
        }
        if let Some(line) = freeze_line(r) {
            let _ = writeln!(s, "  frozen: {line}");
        }
        if let Some(f) = &r.fence {
            let _ = writeln!(
                s,
                "  fence: generation {}, fenced {}{}",
                f.generation,
                f.fenced,
                if f.pending { ", pending" } else { "" }
            );
        }
        match &r.sync {
            Some(p) => {
                let pct = if p.total_bytes == 0 {
                    100.0
                } else {
                    p.done_bytes as f64 * 100.0 / p.total_bytes as f64
                };
                let eta = p
                    .eta_secs
                    .map_or_else(|| "-".to_string(), |e| format!("{e}s"));
                let _ = writeln!(
                    s,
                    "  synchronization: {} / {} ({pct:.1}%), {}/s, eta {eta}",
                    human(p.done_bytes),
                    human(p.total_bytes),
                    human(p.rate_bytes_per_sec)
                );
            }
            None => {
                let _ = writeln!(s, "  synchronization: -");
            }
        }
        for (i, uri) in r.nbd.iter().enumerate() {
            match r.nbd_access.get(i) {
                Some(who) => {
                    let _ = writeln!(s, "  export: {uri} ({who})");
                }
                None => {
                    let _ = writeln!(s, "  export: {uri}");
                }
            }
        }
        if !r.nbd.is_empty() {
            let tls = r.nbd_tls.as_deref().unwrap_or("off");
            let _ = writeln!(s, "  export tls: {tls}");
        }
        let t = &r.stats;
        let _ = writeln!(s, "  statistics:");
        let _ = writeln!(s, "    reads: {}", t.reads);
        let _ = writeln!(s, "    writes: {}", t.writes);
        let _ = writeln!(s, "    deletes: {}", t.deletes);
        let _ = writeln!(s, "    zeroes: {}", t.zeroes);
        let _ = writeln!(s, "    flushes: {}", t.flushes);
        let _ = writeln!(s, "    activemap updates: {}", t.activemap_updates);
        let _ = writeln!(
            s,
            "    resynced: {} ({})",
            t.resynced_bytes,
            human(t.resynced_bytes)
        );
        let _ = writeln!(
            s,
            "    local errors: read: {}, write: {}, delete: {}, flush: {}",
            t.read_errors, t.write_errors, t.delete_errors, t.flush_errors
        );
        let _ = writeln!(
            s,
            "    queues: inflight: {}, connections: {}",
            r.queues.inflight, r.queues.connections
        );
    }
    s
}

/// `yes, group a b, since T, N s left` or `no, thawed at T by R`; `None`
/// if never frozen since hastd started.
fn freeze_line(r: &ResourceStatus) -> Option<String> {
    use hast_api::FreezeState;
    let f = r.freeze.as_ref()?;
    let group = f.group.join(" ");
    Some(match f.state {
        FreezeState::Frozen | FreezeState::Freezing => {
            let left = match f.ms_left {
                Some(ms) => format!("{}.{} s left", ms / 1000, ms % 1000 / 100),
                None => "no timeout".to_string(),
            };
            let what = if f.state == FreezeState::Frozen {
                "yes"
            } else {
                "freezing"
            };
            format!("{what}, group {group}, since {}, {left}", f.frozen_at)
        }
        FreezeState::Thawed => format!(
            "no, thawed at {} by {} (group {group}, frozen at {})",
            f.thawed_at.as_deref().unwrap_or("-"),
            f.thaw_reason.as_deref().unwrap_or("-"),
            f.frozen_at
        ),
    })
}

/// `hastctl query`: `<name>: frozen, group ..., since ..., N s left`, or
/// `<name>: not frozen[, thawed at T by R ...]`, one line each.
pub fn query(list: &[ResourceStatus]) -> String {
    let mut s = String::new();
    for r in list {
        let line = match (r.frozen, freeze_line(r)) {
            (true, Some(l)) => format!("frozen, {}", l.trim_start_matches("yes, ")),
            (false, Some(l)) if l.starts_with("freezing") => l,
            (false, Some(l)) => format!("not frozen, {}", l.trim_start_matches("no, ")),
            (_, None) => "not frozen".to_string(),
        };
        let _ = writeln!(s, "{}: {line}", r.name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn humanize_like_freebsd() {
        let cases = [
            (0, "0B"),
            (512, "512B"),
            (2 << 20, "2.0MB"),
            (100 << 20, "100MB"),
            (1073733632, "1023MB"),
            (1 << 30, "1.0GB"),
        ];
        for (v, want) in cases {
            assert_eq!(human(v), want, "{v}");
        }
    }
}
