//! The Prometheus endpoint of hastd (`metrics_listen`, docs/overview.md §9). At each
//! scrape every resource task is asked for a [`Sample`]: its `hastctl
//! status` snapshot (the same code builds both, so the endpoint and the CLI
//! cannot disagree) plus the data path's request durations, replication
//! queue and link state. [`render`] turns samples into the text format
//! (pure, tested by tables); `hast_metrics::serve` does the HTTP.
//!
//! Counters come from the data path, which is opened at each promotion or
//! demotion: they start again from 0 then, which Prometheus' `rate()` reads
//! as a counter reset. Nothing secret is shown: no key, no key or
//! certificate path, only names, states and numbers.

use std::time::Duration;

use hast_api::{FreezeState, ResourceStatus, Role, Status};
use hast_metrics::{Exposition, HistogramSnapshot, Kind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::control::Resources;
use crate::datapath::RequestOp;
use crate::resource::Command;

/// A resource task busy longer than this (a role change draining its
/// clients) is shown with `hast_resource_status_ok 0` in that scrape.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// What one resource shows at a scrape.
#[derive(Debug, Clone)]
pub struct Sample {
    pub status: ResourceStatus,
    /// Empty while the resource is in init (no data path).
    pub durations: Vec<(RequestOp, HistogramSnapshot)>,
    /// Requests sent to the peer and not answered yet.
    pub replication_queue_depth: u64,
    /// `None` without a remote or while in init.
    pub peer_connected: Option<bool>,
}

/// Binds `metrics_listen` and serves it until the task is aborted.
pub async fn listen(
    addr: &hast_conf::Addr,
    resources: Resources,
    node: String,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let hast_conf::Addr::Tcp { host, port } = addr else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "metrics_listen must be a tcp:// address",
        ));
    };
    let listener = hast_metrics::bind(host, *port).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(hast_metrics::serve(
        listener,
        hast_metrics::Limits::default(),
        move || {
            let resources = resources.clone();
            let node = node.clone();
            async move {
                let (samples, silent) = gather(&resources).await;
                Some(render(&node, &samples, &silent))
            }
        },
    ));
    Ok((local, task))
}

/// Asks every resource at once, so one busy resource delays the scrape by
/// at most STATUS_TIMEOUT. Returns the samples and the names of the
/// resources that did not answer in time, in configuration order.
async fn gather(resources: &Resources) -> (Vec<Sample>, Vec<String>) {
    let handles = resources.read().await.clone();
    let asked: Vec<_> = handles
        .into_iter()
        .map(|h| {
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                let ask = async {
                    h.tx.send(Command::Metrics(tx)).await.ok()?;
                    rx.await.ok()
                };
                tokio::time::timeout(STATUS_TIMEOUT, ask)
                    .await
                    .ok()
                    .flatten()
                    .ok_or(h.name)
            })
        })
        .collect();
    let (mut samples, mut silent) = (Vec::new(), Vec::new());
    for task in asked {
        match task.await {
            Ok(Ok(s)) => samples.push(s),
            Ok(Err(name)) => silent.push(name),
            Err(_) => {}
        }
    }
    (samples, silent)
}

const ROLES: [Role; 3] = [Role::Init, Role::Primary, Role::Secondary];
const STATES: [Status; 6] = [
    Status::Complete,
    Status::Degraded,
    Status::SplitBrain,
    Status::Detached,
    Status::Outdated,
    Status::Inactive,
];

/// The `state` label: status' own words, `inactive` for its `-`.
fn state_label(s: Status) -> &'static str {
    match s {
        Status::Inactive => "inactive",
        other => other.as_str(),
    }
}

/// Reads one counter of `hastctl list`'s stats.
type StatOf = fn(&hast_api::Stats) -> u64;

/// A gauge or counter with one sample per resource that has a value.
fn per_resource<T: Into<hast_metrics::text::Value>>(
    x: &mut Exposition,
    samples: &[Sample],
    name: &str,
    kind: Kind,
    help: &str,
    value: impl Fn(&Sample) -> Option<T>,
) {
    let mut f = x.family(name, kind, help);
    for s in samples {
        if let Some(v) = value(s) {
            f.sample(&[("resource", &s.status.name)], v);
        }
    }
}

/// The text exposition of `samples` (resources that answered) and `silent`
/// (those that did not) on node `node`.
pub fn render(node: &str, samples: &[Sample], silent: &[String]) -> String {
    let mut x = Exposition::new();
    {
        let mut f = x.family(
            "hast_resource_status_ok",
            Kind::Gauge,
            "1 if the resource answered this scrape in time; 0 if busy (its other metrics are absent).",
        );
        for s in samples {
            f.sample(&[("resource", &s.status.name)], 1u64);
        }
        for name in silent {
            f.sample(&[("resource", name)], 0u64);
        }
    }
    {
        let mut f = x.family(
            "hast_resource_info",
            Kind::Gauge,
            "Configuration of a resource on this node (always 1).",
        );
        for s in samples {
            let st = &s.status;
            f.sample(
                &[
                    ("resource", &st.name),
                    ("node", node),
                    ("replication", &st.replication),
                    ("checksum", &st.checksum),
                    ("compression", &st.compression),
                    (
                        "remote_configured",
                        if st.remote == "none" { "0" } else { "1" },
                    ),
                ],
                1u64,
            );
        }
    }
    {
        let mut f = x.family(
            "hast_resource_role",
            Kind::Gauge,
            "1 for the resource's current role (init, primary, secondary), 0 for the others.",
        );
        for s in samples {
            for r in ROLES {
                f.sample(
                    &[("resource", &s.status.name), ("role", r.as_str())],
                    s.status.role == r,
                );
            }
        }
    }
    {
        let mut f = x.family(
            "hast_resource_state",
            Kind::Gauge,
            "1 for the resource's state as hastctl status shows it (inactive: role init), 0 for the others.",
        );
        for s in samples {
            for st in STATES {
                f.sample(
                    &[("resource", &s.status.name), ("state", state_label(st))],
                    s.status.status == st,
                );
            }
        }
    }
    per_resource(
        &mut x,
        samples,
        "hast_resource_epoch",
        Kind::Gauge,
        "The fencing epoch in the resource's metadata (absent if it cannot be read).",
        |s| s.status.epoch,
    );
    let counters: [(&str, &str, StatOf); 8] = [
        ("hast_read_bytes_total", "Bytes read by clients.", |k| {
            k.bytes_read
        }),
        (
            "hast_written_bytes_total",
            "Bytes written by clients.",
            |k| k.bytes_written,
        ),
        ("hast_read_ops_total", "Reads served.", |k| k.reads),
        ("hast_write_ops_total", "Writes served.", |k| k.writes),
        ("hast_flush_ops_total", "Flushes served.", |k| k.flushes),
        ("hast_trim_ops_total", "Trims served.", |k| k.deletes),
        (
            "hast_zero_ops_total",
            "Write-zeroes requests served.",
            |k| k.zeroes,
        ),
        (
            "hast_activemap_updates_total",
            "Activemap writes to the metadata.",
            |k| k.activemap_updates,
        ),
    ];
    for (name, help, get) in counters {
        let help = format!("{help} Since the data path opened (its last role change).");
        per_resource(&mut x, samples, name, Kind::Counter, &help, |s| {
            (s.status.role != Role::Init).then(|| get(&s.status.stats))
        });
    }
    {
        let mut f = x.family(
            "hast_request_errors_total",
            Kind::Counter,
            "Requests that failed, by operation. Since the data path opened.",
        );
        for s in samples.iter().filter(|s| s.status.role != Role::Init) {
            let k = &s.status.stats;
            for (op, n) in [
                ("read", k.read_errors),
                ("write", k.write_errors),
                ("trim", k.delete_errors),
                ("flush", k.flush_errors),
            ] {
                f.sample(&[("resource", &s.status.name), ("op", op)], n);
            }
        }
    }
    {
        let mut f = x.family(
            "hast_request_duration_seconds",
            Kind::Histogram,
            "Duration of client (NBD) requests, from arrival to answer, by operation.",
        );
        for s in samples {
            for (op, h) in &s.durations {
                f.histogram(&[("resource", &s.status.name), ("op", op.as_str())], h);
            }
        }
    }
    per_resource(
        &mut x,
        samples,
        "hast_local_errors_total",
        Kind::Counter,
        "Local component I/O errors since it was last attached or opened.",
        |s| (s.status.role != Role::Init).then_some(s.status.local_errors),
    );
    per_resource(
        &mut x,
        samples,
        "hast_dirty_bytes",
        Kind::Gauge,
        "Bytes of the extents marked dirty in the activemap.",
        |s| (s.status.role != Role::Init).then_some(s.status.dirty_bytes),
    );
    per_resource(
        &mut x,
        samples,
        "hast_resync_active",
        Kind::Gauge,
        "1 while a resync runs.",
        |s| Some(s.status.sync.is_some()),
    );
    per_resource(
        &mut x,
        samples,
        "hast_resync_remaining_bytes",
        Kind::Gauge,
        "Bytes the running resync has still to copy (0 when none runs).",
        |s| {
            Some(
                s.status
                    .sync
                    .as_ref()
                    .map_or(0, |p| p.total_bytes.saturating_sub(p.done_bytes)),
            )
        },
    );
    per_resource(
        &mut x,
        samples,
        "hast_resync_copied_bytes_total",
        Kind::Counter,
        "Bytes put in sync by resyncs since the data path opened.",
        |s| (s.status.role != Role::Init).then_some(s.status.stats.resynced_bytes),
    );
    per_resource(
        &mut x,
        samples,
        "hast_replication_queue_depth",
        Kind::Gauge,
        "Requests sent to the peer and not answered yet.",
        |s| (s.status.role != Role::Init).then_some(s.replication_queue_depth),
    );
    per_resource(
        &mut x,
        samples,
        "hast_requests_in_flight",
        Kind::Gauge,
        "Requests being served by the data path.",
        |s| (s.status.role != Role::Init).then_some(s.status.queues.inflight),
    );
    per_resource(
        &mut x,
        samples,
        "hast_nbd_connections",
        Kind::Gauge,
        "Open NBD connections to the export.",
        |s| (s.status.role != Role::Init).then_some(s.status.queues.connections),
    );
    per_resource(
        &mut x,
        samples,
        "hast_peer_connected",
        Kind::Gauge,
        "1 while the replication link to the peer is up (absent without a remote or in init).",
        |s| s.peer_connected,
    );
    per_resource(
        &mut x,
        samples,
        "hast_detached",
        Kind::Gauge,
        "1 while the local component is detached (on_io_error detach).",
        |s| Some(s.status.status == Status::Detached),
    );
    per_resource(
        &mut x,
        samples,
        "hast_frozen",
        Kind::Gauge,
        "1 while new modifications are held by a freeze.",
        |s| Some(s.status.frozen),
    );
    per_resource(
        &mut x,
        samples,
        "hast_freeze_remaining_seconds",
        Kind::Gauge,
        "Seconds until the current freeze times out (absent when not frozen or without timeout).",
        |s| {
            let f = s.status.freeze.as_ref()?;
            let left = f.ms_left.filter(|_| f.state != FreezeState::Thawed)?;
            Some(left as f64 / 1000.0)
        },
    );
    per_resource(
        &mut x,
        samples,
        "hast_lease_remaining_seconds",
        Kind::Gauge,
        "Seconds left on the primary's lease (absent without a lease).",
        |s| s.status.lease_ms.map(|ms| ms as f64 / 1000.0),
    );
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hast_api::{FreezeStatus, MetaStatus, Queues, Stats, SyncProgress};

    fn status(name: &str, role: Role, status: Status) -> ResourceStatus {
        ResourceStatus {
            name: name.into(),
            provider_name: name.into(),
            role,
            status,
            local: "/secret/path/of/the/disk".into(),
            remote: "tcp://10.0.0.2:8457".into(),
            replication: "fullsync".into(),
            checksum: "none".into(),
            compression: "none".into(),
            meta: Some(MetaStatus {
                datasize: 1 << 30,
                extentsize: 2 << 20,
                keepdirty: 64,
                resuid: 1,
                localcnt: 1,
                remotecnt: 1,
                epoch: 4,
                inconsistent: false,
            }),
            dirty_bytes: 0,
            stats: Stats::default(),
            queues: Queues::default(),
            sync: None,
            nbd: Vec::new(),
            nbd_tls: None,
            nbd_access: Vec::new(),
            peer: Some("connected".into()),
            epoch: Some(4),
            lease_ms: None,
            fence: None,
            auth: Some("hmac-sha256".into()),
            tls: None,
            local_stall_ms: None,
            local_state: Some("attached".into()),
            local_errors: 0,
            frozen: false,
            freeze: None,
            outdated: false,
        }
    }

    fn sample(st: ResourceStatus) -> Sample {
        let durations = if st.role == Role::Init {
            Vec::new()
        } else {
            RequestOp::ALL
                .iter()
                .map(|&op| (op, hast_metrics::Histogram::default().snapshot()))
                .collect()
        };
        Sample {
            status: st,
            durations,
            replication_queue_depth: 0,
            peer_connected: Some(true),
        }
    }

    /// The value of the sample whose line starts with `series` + ` `.
    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn what_each_resource_shows() {
        let mut busy = status("r0", Role::Primary, Status::Degraded);
        busy.stats = Stats {
            reads: 3,
            writes: 5,
            bytes_read: 12288,
            bytes_written: 1 << 40,
            write_errors: 1,
            resynced_bytes: 4096,
            ..Stats::default()
        };
        busy.dirty_bytes = 8 << 20;
        busy.sync = Some(SyncProgress {
            done_bytes: 100,
            total_bytes: 1000,
            rate_bytes_per_sec: 1,
            eta_secs: None,
        });
        busy.lease_ms = Some(1500);
        busy.frozen = true;
        busy.freeze = Some(FreezeStatus {
            state: FreezeState::Frozen,
            generation: 1,
            group: vec!["r0".into()],
            frozen_at: String::new(),
            timeout_ms: Some(60_000),
            ms_left: Some(2500),
            thawed_at: None,
            thaw_reason: None,
        });
        let mut busy = sample(busy);
        busy.replication_queue_depth = 7;
        busy.peer_connected = Some(false);
        let mut idle = sample(status("r1", Role::Init, Status::Inactive));
        idle.peer_connected = None;
        idle.status.epoch = None;
        let text = render("nodea", &[busy, idle], &["r2".into()]);
        // (series, value; None: no such sample)
        let cases: &[(&str, Option<&str>)] = &[
            ("hast_resource_status_ok{resource=\"r0\"}", Some("1")),
            ("hast_resource_status_ok{resource=\"r2\"}", Some("0")),
            ("hast_resource_info{resource=\"r0\",node=\"nodea\",replication=\"fullsync\",checksum=\"none\",compression=\"none\",remote_configured=\"1\"}", Some("1")),
            ("hast_resource_role{resource=\"r0\",role=\"primary\"}", Some("1")),
            ("hast_resource_role{resource=\"r0\",role=\"init\"}", Some("0")),
            ("hast_resource_role{resource=\"r1\",role=\"init\"}", Some("1")),
            ("hast_resource_state{resource=\"r0\",state=\"degraded\"}", Some("1")),
            ("hast_resource_state{resource=\"r0\",state=\"complete\"}", Some("0")),
            ("hast_resource_state{resource=\"r1\",state=\"inactive\"}", Some("1")),
            ("hast_resource_epoch{resource=\"r0\"}", Some("4")),
            ("hast_resource_epoch{resource=\"r1\"}", None),
            ("hast_written_bytes_total{resource=\"r0\"}", Some("1099511627776")),
            ("hast_read_bytes_total{resource=\"r0\"}", Some("12288")),
            ("hast_read_ops_total{resource=\"r0\"}", Some("3")),
            ("hast_write_ops_total{resource=\"r0\"}", Some("5")),
            ("hast_write_ops_total{resource=\"r1\"}", None),
            ("hast_request_errors_total{resource=\"r0\",op=\"write\"}", Some("1")),
            ("hast_request_duration_seconds_count{resource=\"r0\",op=\"flush\"}", Some("0")),
            ("hast_request_duration_seconds_bucket{resource=\"r0\",op=\"read\",le=\"+Inf\"}", Some("0")),
            ("hast_request_duration_seconds_count{resource=\"r1\",op=\"read\"}", None),
            ("hast_dirty_bytes{resource=\"r0\"}", Some("8388608")),
            ("hast_resync_active{resource=\"r0\"}", Some("1")),
            ("hast_resync_active{resource=\"r1\"}", Some("0")),
            ("hast_resync_remaining_bytes{resource=\"r0\"}", Some("900")),
            ("hast_resync_copied_bytes_total{resource=\"r0\"}", Some("4096")),
            ("hast_replication_queue_depth{resource=\"r0\"}", Some("7")),
            ("hast_peer_connected{resource=\"r0\"}", Some("0")),
            ("hast_peer_connected{resource=\"r1\"}", None),
            ("hast_detached{resource=\"r0\"}", Some("0")),
            ("hast_frozen{resource=\"r0\"}", Some("1")),
            ("hast_frozen{resource=\"r1\"}", Some("0")),
            ("hast_freeze_remaining_seconds{resource=\"r0\"}", Some("2.5")),
            ("hast_lease_remaining_seconds{resource=\"r0\"}", Some("1.5")),
            ("hast_lease_remaining_seconds{resource=\"r1\"}", None),
        ];
        for (series, want) in cases {
            assert_eq!(value(&text, series), *want, "{series} in:\n{text}");
        }
        // Nothing of the component's path or the remote's address.
        assert!(!text.contains("/secret/path"), "{text}");
        assert!(!text.contains("10.0.0.2"), "{text}");
    }

    #[test]
    fn every_family_is_declared_once_and_its_samples_follow() {
        let samples = [
            sample(status("a", Role::Primary, Status::Complete)),
            sample(status("b", Role::Secondary, Status::Complete)),
        ];
        let text = render("n", &samples, &[]);
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                assert!(seen.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside {current}");
            }
        }
        assert!(seen.len() > 20, "{seen:?}");
    }
}
