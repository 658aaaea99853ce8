//! `org.hast.connector` on D-Bus (zbus): the control socket's commands for
//! those who manage their connector over D-Bus, as nvme-stas users do, and a
//! `Failover` signal on each failover.
//!
//! ```text
//! name org.hast.connector, object /org/hast/connector, interface org.hast.connector
//!   List() -> s                     JSON, as `hastcctl ls --json`
//!   Status(s resource) -> s         JSON, as `hastcctl status --json` ("" = all)
//!   Connect(s resource)  Disconnect(s resource)  Tron()  Troff()
//!   signal Failover(s resource, s from, s to, t epoch, t pause_ms, t replayed)
//! ```
//!
//! The methods answer from the same [`Control`] as the control socket; who
//! may call them is the bus's policy (`contrib/dbus/org.hast.connector.conf`:
//! root only on the system bus). [`introspection_xml`] is what
//! `hastcd --idl FILE` writes, generated from the interface below.

use std::sync::Arc;

use zbus::object_server::{Interface, SignalEmitter};

use crate::conf::DbusBus;
use crate::control::{check_resource, ListEntry};
use crate::status::{Control, EndpointStatus, Failover};

pub const BUS_NAME: &str = "org.hast.connector";
pub const OBJECT_PATH: &str = "/org/hast/connector";
pub const INTERFACE: &str = "org.hast.connector";

/// Errors a caller sees, as `org.hast.connector.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.hast.connector.Error")]
pub enum MethodError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No endpoint (or nothing known) for that resource.
    UnknownResource(String),
    /// Not a resource name.
    InvalidArgs(String),
}

/// Why the interface could not be offered.
#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    #[error("cannot offer {BUS_NAME} on the {bus} bus: {source}")]
    Bus {
        bus: &'static str,
        source: zbus::Error,
    },
}

/// The object served at [`OBJECT_PATH`].
struct Connector {
    control: Arc<dyn Control>,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, MethodError> {
    serde_json::to_string(v).map_err(|e| MethodError::ZBus(zbus::Error::Failure(e.to_string())))
}

fn named(resource: &str) -> Result<(), MethodError> {
    check_resource(resource).map_err(MethodError::InvalidArgs)
}

#[zbus::interface(name = "org.hast.connector")]
impl Connector {
    /// Every endpoint as JSON: `[{"resource","uris","state","primary","epoch"}]`.
    fn list(&self) -> Result<String, MethodError> {
        let rows: Vec<ListEntry> = self.control.status().iter().map(ListEntry::from).collect();
        json(&rows)
    }

    /// The full status of one endpoint (`resource`), or of all (`""`), as a
    /// JSON array.
    fn status(&self, resource: &str) -> Result<String, MethodError> {
        let mut all = self.control.status();
        if !resource.is_empty() {
            named(resource)?;
            all.retain(|s| s.resource == resource);
            if all.is_empty() {
                return Err(MethodError::UnknownResource(format!(
                    "no endpoint for resource {resource:?}"
                )));
            }
        }
        json::<Vec<EndpointStatus>>(&all)
    }

    fn connect(&self, resource: &str) -> Result<(), MethodError> {
        named(resource)?;
        self.control
            .connect(resource)
            .map_err(|why| MethodError::UnknownResource(format!("connect {resource}: {why}")))
    }

    fn disconnect(&self, resource: &str) -> Result<(), MethodError> {
        named(resource)?;
        if !self.control.status().iter().any(|s| s.resource == resource) {
            return Err(MethodError::UnknownResource(format!(
                "no endpoint for resource {resource:?}"
            )));
        }
        self.control
            .disconnect(resource)
            .map_err(|why| MethodError::UnknownResource(format!("disconnect {resource}: {why}")))
    }

    fn tron(&self) {
        self.control.trace(true)
    }

    fn troff(&self) {
        self.control.trace(false)
    }

    /// An endpoint moved to a new primary: `from` is "" when there was
    /// none; `pause_ms` is how long I/O waited, `replayed` the requests sent
    /// again.
    #[zbus(signal)]
    async fn failover(
        emitter: &SignalEmitter<'_>,
        resource: &str,
        from: &str,
        to: &str,
        epoch: u64,
        pause_ms: u64,
        replayed: u64,
    ) -> zbus::Result<()>;
}

/// The interface on the bus: dropping it releases the name.
pub struct DbusHandle {
    conn: zbus::Connection,
}

impl DbusHandle {
    /// Emits the `Failover` signal.
    pub async fn failover(&self, f: &Failover) -> zbus::Result<()> {
        let emitter = SignalEmitter::new(&self.conn, OBJECT_PATH)?;
        Connector::failover(
            &emitter,
            &f.resource,
            f.from.as_deref().unwrap_or(""),
            &f.to,
            f.epoch,
            f.pause_ms,
            f.replayed,
        )
        .await
    }

    /// The connection (its unique name, for tests and logs).
    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }
}

/// Offers `org.hast.connector` on `bus`; `Ok(None)` when `bus` is
/// [`DbusBus::None`]. A name already owned (another hastcd) is an error.
pub async fn offer(
    bus: DbusBus,
    control: Arc<dyn Control>,
) -> Result<Option<DbusHandle>, DbusError> {
    let builder = match bus {
        DbusBus::None => return Ok(None),
        DbusBus::System => zbus::connection::Builder::system(),
        DbusBus::Session => zbus::connection::Builder::session(),
    };
    let err = |source| DbusError::Bus {
        bus: bus.as_str(),
        source,
    };
    build(builder.map_err(err)?, control)
        .await
        .map(Some)
        .map_err(err)
}

/// Offers the interface on the bus at `address` (a private bus in tests).
pub async fn offer_at(address: &str, control: Arc<dyn Control>) -> Result<DbusHandle, DbusError> {
    let err = |source| DbusError::Bus {
        bus: "given",
        source,
    };
    let builder = zbus::connection::Builder::address(address).map_err(err)?;
    build(builder, control).await.map_err(err)
}

async fn build(
    builder: zbus::connection::Builder<'_>,
    control: Arc<dyn Control>,
) -> zbus::Result<DbusHandle> {
    let conn = builder
        .serve_at(OBJECT_PATH, Connector { control })?
        .build()
        .await?;
    // Not `Builder::name`: zbus 5.19 requests the name without DoNotQueue
    // (its doc says otherwise), so a second hastcd would wait in the queue
    // and take over silently when the first exits. Refuse it instead.
    let flags = zbus::fdo::RequestNameFlags::DoNotQueue.into();
    match conn.request_name_with_flags(BUS_NAME, flags).await? {
        zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner => {
            Ok(DbusHandle { conn })
        }
        _ => Err(zbus::Error::NameTaken),
    }
}

/// A Control with nothing behind it: [`introspection_xml`] needs an
/// instance of the interface, never calls it.
struct NoControl;

impl Control for NoControl {
    fn status(&self) -> Vec<EndpointStatus> {
        Vec::new()
    }
    fn connect(&self, _: &str) -> Result<(), String> {
        Err("no daemon".into())
    }
    fn disconnect(&self, _: &str) -> Result<(), String> {
        Err("no daemon".into())
    }
    fn trace(&self, _: bool) {}
}

/// The D-Bus introspection XML of [`OBJECT_PATH`] (`hastcd --idl FILE`),
/// written by zbus from the interface itself.
pub fn introspection_xml() -> String {
    let iface = Connector {
        control: Arc::new(NoControl),
    };
    let mut body = String::new();
    iface.introspect_to_writer(&mut body, 2);
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
         <node name=\"{OBJECT_PATH}\">\n{body}</node>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introspection_names_every_member() {
        let xml = introspection_xml();
        for want in [
            "<interface name=\"org.hast.connector\">",
            "<method name=\"List\">",
            "<method name=\"Status\">",
            "<arg name=\"resource\" type=\"s\" direction=\"in\"/>",
            "<method name=\"Connect\">",
            "<method name=\"Disconnect\">",
            "<method name=\"Tron\">",
            "<method name=\"Troff\">",
            "<signal name=\"Failover\">",
            "<arg name=\"from\" type=\"s\"/>",
            "<arg name=\"epoch\" type=\"t\"/>",
            "<arg name=\"pause_ms\" type=\"t\"/>",
            "<arg name=\"replayed\" type=\"t\"/>",
        ] {
            assert!(xml.contains(want), "{want} missing from\n{xml}");
        }
        assert!(xml.starts_with("<!DOCTYPE node"));
    }
}
