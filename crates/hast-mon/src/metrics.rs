//! The Prometheus endpoint of hastmon (`metrics_listen`): at each scrape
//! the daemon gathers the same per-resource status `hastmonctl status`
//! shows, and [`render`] writes it in the text format (pure, tested by
//! tables); `hast_metrics::serve` does the HTTP. Names start with
//! `hast_mon_`, apart from hastd's `hast_` metrics on the same host.

use std::future::Future;

use hast_metrics::{Exposition, Kind};
use tokio::task::JoinHandle;

use crate::ctl::ResourceStatus;
use crate::msg::{Role, RunState};

/// Binds `metrics_listen` and serves what `gather` returns (`None`: 503)
/// until the task is aborted.
pub async fn listen<F, Fut>(
    addr: &hast_conf::Addr,
    node: String,
    gather: F,
) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Vec<ResourceStatus>>> + Send + 'static,
{
    let hast_conf::Addr::Tcp { host, port } = addr else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "metrics_listen must be a tcp:// address",
        ));
    };
    let listener = hast_metrics::bind(host, *port).await?;
    let local = listener.local_addr()?;
    let gather = std::sync::Arc::new(gather);
    let task = tokio::spawn(hast_metrics::serve(
        listener,
        hast_metrics::Limits::default(),
        move || {
            let (gather, node) = (gather.clone(), node.clone());
            async move { gather().await.map(|list| render(&node, &list)) }
        },
    ));
    Ok((local, task))
}

const ROLES: [Role; 4] = [Role::Init, Role::Primary, Role::Secondary, Role::Watchdog];
const STATES: [RunState; 4] = [
    RunState::Run,
    RunState::Stopped,
    RunState::Starting,
    RunState::Failing,
];

fn state_label(s: RunState) -> &'static str {
    match s {
        RunState::Run => "run",
        RunState::Stopped => "stopped",
        RunState::Starting => "starting",
        RunState::Failing => "failing",
    }
}

fn per_resource<T: Into<hast_metrics::text::Value>>(
    x: &mut Exposition,
    list: &[ResourceStatus],
    name: &str,
    kind: Kind,
    help: &str,
    value: impl Fn(&ResourceStatus) -> Option<T>,
) {
    let mut f = x.family(name, kind, help);
    for r in list {
        if let Some(v) = value(r) {
            f.sample(&[("resource", &r.name)], v);
        }
    }
}

/// The text exposition of the resources hastmon on `node` runs.
pub fn render(node: &str, list: &[ResourceStatus]) -> String {
    let mut x = Exposition::new();
    {
        let mut f = x.family(
            "hast_mon_resource_role",
            Kind::Gauge,
            "1 for hastmon's role of the resource on this node, 0 for the others.",
        );
        for r in list {
            for role in ROLES {
                f.sample(
                    &[
                        ("resource", &r.name),
                        ("node", node),
                        ("role", role.as_str()),
                    ],
                    r.role == role,
                );
            }
        }
    }
    {
        let mut f = x.family(
            "hast_mon_resource_state",
            Kind::Gauge,
            "1 for whether the resource runs here (run, stopped, starting, failing), 0 for the others.",
        );
        for r in list {
            for st in STATES {
                f.sample(
                    &[("resource", &r.name), ("state", state_label(st))],
                    r.state == st,
                );
            }
        }
    }
    per_resource(
        &mut x,
        list,
        "hast_mon_resource_epoch",
        Kind::Gauge,
        "The epoch hastmon knows for the resource.",
        |r| Some(r.epoch),
    );
    {
        let mut f = x.family(
            "hast_mon_remote_connected",
            Kind::Gauge,
            "1 if the last exchange with this remote host of the resource succeeded.",
        );
        for r in list {
            for remote in &r.remotes {
                f.sample(
                    &[("resource", &r.name), ("remote", &remote.address)],
                    remote.connected,
                );
            }
        }
    }
    per_resource(
        &mut x,
        list,
        "hast_mon_status_check_failures",
        Kind::Gauge,
        "Failed status checks of the running resource in a row.",
        |r| Some(r.attempts),
    );
    per_resource(
        &mut x,
        list,
        "hast_mon_status_check_failures_max",
        Kind::Gauge,
        "Failed status checks in a row after which the primary gives the resource up (attempts).",
        |r| Some(r.attempts_max),
    );
    per_resource(
        &mut x,
        list,
        "hast_mon_complaints",
        Kind::Gauge,
        "Complaints received within complaint_interval (secondary), or rounds without a running primary (watchdog).",
        |r| Some(r.complaints),
    );
    per_resource(
        &mut x,
        list,
        "hast_mon_outdated",
        Kind::Gauge,
        "1 while the watchdog holds this node's copy outdated (no takeover until the primary has resynced it).",
        |r| (r.role != Role::Watchdog).then_some(r.outdated),
    );
    per_resource(
        &mut x,
        list,
        "hast_mon_takeover_pending",
        Kind::Gauge,
        "1 while a takeover request waits for the watchdog's answer.",
        |r| Some(r.takeover_pending),
    );
    per_resource(
        &mut x,
        list,
        "hast_mon_lease_remaining_seconds",
        Kind::Gauge,
        "Seconds left on the lease (absent without one).",
        |r| r.lease_ms.map(|ms| ms as f64 / 1000.0),
    );
    per_resource(
        &mut x,
        list,
        "hast_mon_heartbeat_interval_seconds",
        Kind::Gauge,
        "The resource's heartbeat interval.",
        |r| Some(r.heartbeat_ms as f64 / 1000.0),
    );
    {
        let mut f = x.family(
            "hast_mon_storage_role",
            Kind::Gauge,
            "hastd's role of the resource at hastmon's last status check (absent when unknown).",
        );
        for r in list {
            let Some(s) = r.storage else { continue };
            for role in [Role::Init, Role::Primary, Role::Secondary] {
                f.sample(
                    &[("resource", &r.name), ("role", role.as_str())],
                    s.role == role,
                );
            }
        }
    }
    per_resource(
        &mut x,
        list,
        "hast_mon_storage_epoch",
        Kind::Gauge,
        "hastd's epoch of the resource at hastmon's last status check (absent when unknown).",
        |r| r.storage.map(|s| s.epoch),
    );
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{RemoteStatus, StorageStatus};

    fn status(name: &str, role: Role, state: RunState) -> ResourceStatus {
        ResourceStatus {
            name: name.into(),
            role,
            state,
            epoch: 3,
            worker: "hastmon".into(),
            remotes: vec![
                RemoteStatus {
                    address: "tcp://10.0.0.2:8459".into(),
                    node: Some("nodeb".into()),
                    role: Some(Role::Secondary),
                    connected: true,
                },
                RemoteStatus {
                    address: "tcp://10.0.0.3:8459".into(),
                    node: None,
                    role: None,
                    connected: false,
                },
            ],
            attempts: 1,
            attempts_max: 3,
            complaints: 0,
            heartbeat_ms: 1000,
            lease_ms: None,
            primary: None,
            witness: None,
            last_refusal: None,
            outdated: false,
            takeover_pending: false,
            storage: None,
        }
    }

    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn what_each_resource_shows() {
        let mut p = status("www", Role::Primary, RunState::Run);
        p.lease_ms = Some(1750);
        p.storage = Some(StorageStatus {
            role: Role::Primary,
            epoch: 9,
        });
        let mut s = status("db", Role::Secondary, RunState::Stopped);
        s.complaints = 2;
        s.takeover_pending = true;
        s.outdated = true;
        let text = render("nodea", &[p, s]);
        let cases: &[(&str, Option<&str>)] = &[
            (
                "hast_mon_resource_role{resource=\"www\",node=\"nodea\",role=\"primary\"}",
                Some("1"),
            ),
            (
                "hast_mon_resource_role{resource=\"www\",node=\"nodea\",role=\"watchdog\"}",
                Some("0"),
            ),
            (
                "hast_mon_resource_role{resource=\"db\",node=\"nodea\",role=\"secondary\"}",
                Some("1"),
            ),
            (
                "hast_mon_resource_state{resource=\"www\",state=\"run\"}",
                Some("1"),
            ),
            (
                "hast_mon_resource_state{resource=\"db\",state=\"stopped\"}",
                Some("1"),
            ),
            (
                "hast_mon_resource_state{resource=\"db\",state=\"run\"}",
                Some("0"),
            ),
            ("hast_mon_resource_epoch{resource=\"www\"}", Some("3")),
            (
                "hast_mon_remote_connected{resource=\"www\",remote=\"tcp://10.0.0.2:8459\"}",
                Some("1"),
            ),
            (
                "hast_mon_remote_connected{resource=\"www\",remote=\"tcp://10.0.0.3:8459\"}",
                Some("0"),
            ),
            (
                "hast_mon_status_check_failures{resource=\"www\"}",
                Some("1"),
            ),
            (
                "hast_mon_status_check_failures_max{resource=\"www\"}",
                Some("3"),
            ),
            ("hast_mon_complaints{resource=\"db\"}", Some("2")),
            ("hast_mon_outdated{resource=\"db\"}", Some("1")),
            ("hast_mon_outdated{resource=\"www\"}", Some("0")),
            ("hast_mon_takeover_pending{resource=\"db\"}", Some("1")),
            ("hast_mon_takeover_pending{resource=\"www\"}", Some("0")),
            (
                "hast_mon_lease_remaining_seconds{resource=\"www\"}",
                Some("1.75"),
            ),
            ("hast_mon_lease_remaining_seconds{resource=\"db\"}", None),
            (
                "hast_mon_heartbeat_interval_seconds{resource=\"db\"}",
                Some("1"),
            ),
            (
                "hast_mon_storage_role{resource=\"www\",role=\"primary\"}",
                Some("1"),
            ),
            (
                "hast_mon_storage_role{resource=\"db\",role=\"primary\"}",
                None,
            ),
            ("hast_mon_storage_epoch{resource=\"www\"}", Some("9")),
        ];
        for (series, want) in cases {
            assert_eq!(value(&text, series), *want, "{series} in:\n{text}");
        }
    }

    #[test]
    fn no_resources_still_declares_every_family() {
        let text = render("n", &[]);
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 13);
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }
}
