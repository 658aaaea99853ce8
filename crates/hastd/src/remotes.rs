//! A `remote` whose host name does not resolve is reported when hastd starts
//! and at each reload: one warning naming hast.conf's file and the
//! resource's line (`hast_conf::lookup`, shared with hastmon, says why it is
//! a warning and not a refusal). The replication link looks the name up
//! again at every attempt, so the resource works as soon as it resolves.

use hast_conf::lookup::{self, Remote};

/// Looks up every `remote` of `c` in the background and warns about each
/// that does not resolve.
pub fn warn_unresolvable(c: &hast_conf::Config) {
    let remotes = c
        .resources
        .iter()
        .filter_map(|r| {
            Some(Remote {
                line: r.line,
                resource: r.name.clone(),
                addr: r.remote.clone()?,
            })
        })
        .collect();
    lookup::warn_unresolvable(
        c.file.clone(),
        remotes,
        "the replication link keeps trying and connects once it does",
        |w| tracing::warn!("{w}"),
    );
}
