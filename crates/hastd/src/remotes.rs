//! A `remote` whose host name does not resolve is reported when hastd starts
//! and at each reload: one warning naming hast.conf's file and the
//! resource's line, instead of only a failed connection attempt later. It
//! is a warning, not a refusal: at boot the name service may come up after
//! hastd, and the replication link looks the name up again at every
//! attempt, so the resource works as soon as the name resolves.

use std::time::Duration;

/// How long one lookup may take before it counts as not resolving (a dead
/// resolver otherwise takes its own timeouts times its attempts).
const LOOKUP_BOUND: Duration = Duration::from_secs(5);

/// Looks up every `remote` that is a host name, in the background (a slow
/// resolver must not hold up the start or a reload), and warns about each
/// that does not resolve.
pub fn warn_unresolvable(c: &hast_conf::Config) {
    let file = c.file.display().to_string();
    let names: Vec<(String, u32, String, String, u16)> = c
        .resources
        .iter()
        .filter_map(|r| {
            let addr = r.remote.as_ref()?;
            let (host, port) = addr.host_port()?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            // An address literal needs no lookup.
            if host.parse::<std::net::IpAddr>().is_ok() {
                return None;
            }
            Some((
                r.name.clone(),
                r.line,
                addr.to_string(),
                host.to_owned(),
                port,
            ))
        })
        .collect();
    if names.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (res, line, addr, host, port) in names {
            let lookup =
                tokio::time::timeout(LOOKUP_BOUND, tokio::net::lookup_host((host.as_str(), port)))
                    .await;
            let why = match lookup.map(|r| r.map(|mut found| found.next().is_some())) {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => "no address".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} s", LOOKUP_BOUND.as_secs()),
            };
            tracing::warn!(
                "{file}:{line}: resource \"{res}\": remote {addr} does not resolve ({why}); \
                 the replication link keeps trying and connects once it does"
            );
        }
    });
}
