//! From the raw tree to `Config`: picks the top-level `on` section of this
//! node, applies inheritance (resource > global > default; node section >
//! global > default for the host options) and checks what needs resolved
//! values: `exec` and `key` present, 2 or 3 nodes with their `remote`s, the
//! lease long enough for the heartbeat. Every resource is checked and kept,
//! also those this node takes no part in (`Resource::local` says which).

use std::path::Path;

use hast_conf::syntax::value::pick;
use hast_conf::syntax::{At, SyntaxError};

use super::error::{ConfigError, ErrorKind};
use super::parser::{RawConfig, RawResource};
use super::value::show;
use super::{defaults, Addr, Config, NodeSection, Resource, Timing};

/// The innermost level that sets the option.
fn inherit<'a, T>(inner: &'a Option<At<T>>, outer: &'a Option<At<T>>) -> Option<&'a At<T>> {
    inner.as_ref().or(outer.as_ref())
}

pub(super) fn resolve(raw: RawConfig, file: &Path, node: &str) -> Result<Config, ConfigError> {
    if node.is_empty() {
        return Err(ConfigError::whole(file, SyntaxError::NoNodeName));
    }
    let err = |(line, kind): (u32, ErrorKind)| ConfigError::at(file, line, kind);
    let none = super::parser::HostOpts::default();
    let section = pick(&raw.nodes, |n| (&n.name, n.line), node)
        .map_err(err)?
        .map_or(&none, |n| &n.opts);
    let g = &raw.host;
    let control =
        inherit(&section.control, &g.control).map_or_else(defaults::control, |a| a.value.clone());
    let listen =
        inherit(&section.listen, &g.listen).map_or_else(defaults::listen, |a| a.value.clone());
    let pidfile = inherit(&section.pidfile, &g.pidfile)
        .map_or_else(|| defaults::PIDFILE.into(), |a| a.value.clone());
    let state_dir = inherit(&section.state_dir, &g.state_dir)
        .map_or_else(|| defaults::STATE_DIR.into(), |a| a.value.clone());
    let hastd_control = match inherit(&section.hastd_control, &g.hastd_control) {
        None => Some(defaults::HASTD_CONTROL.into()),
        Some(At {
            value: Some(Addr::Unix(p)),
            ..
        }) => Some(p.clone()),
        Some(_) => None,
    };
    let metrics_listen =
        inherit(&section.metrics_listen, &g.metrics_listen).and_then(|a| a.value.clone());

    let mut resources = Vec::with_capacity(raw.resources.len());
    for res in &raw.resources {
        resources.push(resource(&raw, res, node).map_err(err)?);
    }
    Ok(Config {
        control,
        listen,
        pidfile,
        state_dir,
        hastd_control,
        metrics_listen,
        node: node.to_owned(),
        resources,
    })
}

fn resource(raw: &RawConfig, res: &RawResource, node: &str) -> Result<Resource, (u32, ErrorKind)> {
    let name = || res.name.clone();
    let count = res.nodes.len();
    if !(2..=super::RESOURCE_NODES_MAX).contains(&count) {
        return Err((
            res.line,
            ErrorKind::NodeCount {
                resource: name(),
                count,
            },
        ));
    }
    let mut nodes = Vec::with_capacity(count);
    for n in &res.nodes {
        let Some(remote) = &n.remote else {
            return Err((
                n.line,
                ErrorKind::MissingRemote {
                    resource: name(),
                    node: n.name.clone(),
                },
            ));
        };
        if remote.value.len() >= count {
            return Err((
                remote.line,
                ErrorKind::TooManyRemotes {
                    resource: name(),
                    node: n.name.clone(),
                    count: remote.value.len(),
                    others: count - 1,
                },
            ));
        }
        nodes.push(NodeSection {
            name: n.name.clone(),
            remote: remote.value.clone(),
            priority: n.priority.as_ref().map_or(0, |p| p.value),
            line: n.line,
            remote_line: remote.line,
        });
    }
    pick(&res.nodes, |n| (&n.name, n.line), node)?;

    let (g, o) = (&raw.res, &res.opts);
    let exec = inherit(&o.exec, &g.exec)
        .ok_or((res.line, ErrorKind::MissingExec { resource: name() }))?
        .value
        .clone();
    let key = inherit(&o.key, &g.key)
        .ok_or((res.line, ErrorKind::MissingKey { resource: name() }))?
        .value
        .clone();

    let d = Timing::default();
    let heartbeat = inherit(&o.heartbeat_interval, &g.heartbeat_interval);
    let lease = inherit(&o.lease, &g.lease);
    let timing = Timing {
        heartbeat_interval: heartbeat.map_or(d.heartbeat_interval, |a| a.value),
        complaint_count: inherit(&o.complaint_count, &g.complaint_count)
            .map_or(d.complaint_count, |a| a.value),
        complaint_interval: inherit(&o.complaint_interval, &g.complaint_interval)
            .map_or(d.complaint_interval, |a| a.value),
        timeout: inherit(&o.timeout, &g.timeout).map_or(d.timeout, |a| a.value),
        attempts: inherit(&o.attempts, &g.attempts).map_or(d.attempts, |a| a.value),
        lease: lease.map_or(d.lease, |a| a.value),
    };
    // Durations are at most a day, so doubling cannot overflow.
    if timing.lease < timing.heartbeat_interval.saturating_mul(2) {
        // Blame the later of the two settings: the defaults satisfy the
        // rule, so at least one of them is set.
        let line = [heartbeat.map(|a| a.line), lease.map(|a| a.line)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(res.line);
        return Err((
            line,
            ErrorKind::LeaseTooShort {
                resource: name(),
                lease: show(timing.lease),
                heartbeat: show(timing.heartbeat_interval),
            },
        ));
    }

    Ok(Resource {
        name: name(),
        exec,
        timing,
        key,
        nodes,
        line: res.line,
    })
}
