//! `hastctl events [--all] [--json] [--follow]` and `hastctl events retry
//! [-k kind] [seq ...]`: the node's HA event journal as hastd keeps it.
//! Without `--all` only what still needs attention is listed (pending,
//! running, failed, aborted); `--follow` then prints every change as it is
//! recorded (one JSON object per line with `--json`) until interrupted.

use hast_api::{Request, Response, Session};
use hast_events::{Entry, Kind};

use crate::{exit, Fail, Res};

/// Prints the journal; with `follow`, then its changes, until hastd or the
/// user ends it.
pub fn list(socket: &std::path::Path, all: bool, json: bool, follow: bool) -> Res {
    let timeout = (!follow).then_some(std::time::Duration::from_secs(30));
    let mut s = Session::open(socket, Request::Events { all, follow }, timeout).map_err(client)?;
    let mut entries = Vec::new();
    loop {
        match next(&mut s)? {
            Response::Events { entries: e, more } => {
                entries.extend(e);
                if !more {
                    break;
                }
            }
            other => return Err(unexpected(&other)),
        }
    }
    let mut out = String::new();
    if json && follow {
        // JSON Lines: the listing, then each change, one object per line.
        for e in &entries {
            out.push_str(&line_json(e)?);
        }
    } else if json {
        let v = serde_json::json!({ "events": entries.iter().map(to_json).collect::<Vec<_>>() });
        out = pretty(&v)?;
    } else {
        out.push_str(&header());
        for e in &entries {
            out.push_str(&line(e));
        }
    }
    print_flush(&out);
    if !follow {
        return Ok(());
    }
    loop {
        match next(&mut s)? {
            Response::Event(e) if json => print_flush(&line_json(&e)?),
            Response::Event(e) => print_flush(&line(&e)),
            other => return Err(unexpected(&other)),
        }
    }
}

/// `events retry` (makes failed and aborted events pending: hastd handles
/// them again) or `events clear` (dismisses them); prints the sequence
/// numbers concerned.
pub fn retry_or_clear(
    socket: &std::path::Path,
    clear: bool,
    kind: Option<Kind>,
    seqs: Vec<u64>,
) -> Res {
    let (req, verb) = if clear {
        (Request::EventsClear { kind, seqs }, "clear")
    } else {
        (Request::EventsRetry { kind, seqs }, "retry")
    };
    match hast_api::call(socket, req) {
        Ok(Response::EventsRetried(done) | Response::EventsCleared(done)) if done.is_empty() => {
            Err(Fail(
                exit::NOINPUT,
                match kind {
                    Some(k) => format!("no failed or aborted {k} event to {verb}"),
                    None => format!("no failed or aborted event to {verb}"),
                },
            ))
        }
        Ok(Response::EventsRetried(done) | Response::EventsCleared(done)) => {
            let list: Vec<String> = done.iter().map(u64::to_string).collect();
            let did = if clear { "cleared" } else { "retrying" };
            println!("{did} {}", list.join(" "));
            Ok(())
        }
        Ok(Response::Error(e)) => Err(Fail(e.kind.exit_code(), e.message)),
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(client(e)),
    }
}

fn next(s: &mut Session) -> Res<Response> {
    match s.recv().map_err(client)? {
        Some(Response::Error(e)) => Err(Fail(e.kind.exit_code(), e.message)),
        Some(r) => Ok(r),
        None => Err(Fail(exit::TEMPFAIL, "hastd closed the connection".into())),
    }
}

fn client(e: hast_api::ClientError) -> Fail {
    Fail(e.exit_code(), e.to_string())
}

fn unexpected(r: &Response) -> Fail {
    Fail(
        exit::PROTOCOL,
        format!("unexpected answer from hastd: {r:?}"),
    )
}

fn print_flush(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) ends the command quietly.
    if out
        .write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(exit::OK);
    }
}

/// The JSON shape of one entry (docs/events.md).
pub fn to_json(e: &Entry) -> serde_json::Value {
    let ev = &e.event;
    let details: serde_json::Map<String, serde_json::Value> = ev
        .details
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "seq": ev.seq,
        "time": hast_events::rfc3339(ev.time_ms),
        "resource": ev.resource,
        "event": ev.kind.name(),
        "args": ev.args,
        "details": details,
        "state": e.state.name(),
        "updated": hast_events::rfc3339(e.updated_ms),
        "attempts": e.attempts,
        "note": e.note,
    })
}

fn pretty(v: &serde_json::Value) -> Res<String> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Fail(exit::SOFTWARE, e.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn line_json(e: &Entry) -> Res<String> {
    let mut s =
        serde_json::to_string(&to_json(e)).map_err(|e| Fail(exit::SOFTWARE, e.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn header() -> String {
    format!(
        "{:>6}  {:<24}  {:<12} {:<11} {:<8} {:>5}  {}\n",
        "SEQ", "TIME", "RESOURCE", "EVENT", "STATE", "TRIES", "ARGS / NOTE"
    )
}

/// One entry as a line of the table.
pub fn line(e: &Entry) -> String {
    let ev = &e.event;
    let mut tail = ev.args.join(" ");
    if !e.note.is_empty() {
        if !tail.is_empty() {
            tail.push_str(" — ");
        }
        tail.push_str(&e.note);
    }
    format!(
        "{:>6}  {:<24}  {:<12} {:<11} {:<8} {:>5}  {}\n",
        ev.seq,
        hast_events::rfc3339(ev.time_ms),
        ev.resource,
        ev.kind.name(),
        e.state.name(),
        e.attempts,
        tail
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hast_events::{Event, State};

    fn entry() -> Entry {
        Entry {
            event: Event {
                seq: 7,
                time_ms: 1_796_454_062_345,
                resource: "r0".into(),
                kind: Kind::Detach,
                args: vec![],
                details: vec![("ROLE".into(), "primary".into())],
            },
            state: State::Aborted,
            updated_ms: 1_796_454_063_000,
            attempts: 0,
            note: "no healthy secondary to serve from".into(),
        }
    }

    #[test]
    fn json_shape() {
        let v = to_json(&entry());
        assert_eq!(
            v,
            serde_json::json!({
                "seq": 7, "time": "2026-12-05T07:01:02.345Z", "resource": "r0",
                "event": "detach", "args": [], "details": {"ROLE": "primary"},
                "state": "aborted", "updated": "2026-12-05T07:01:03.000Z", "attempts": 0,
                "note": "no healthy secondary to serve from"
            })
        );
    }

    #[test]
    fn table_line() {
        assert_eq!(
            line(&entry()),
            "     7  2026-12-05T07:01:02.345Z  r0           detach      aborted      0  no healthy secondary to serve from\n"
        );
    }
}
