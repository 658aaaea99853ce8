//! Loopback ports and a minimal NBD handshake probe.
//!
//! The probe speaks just enough fixed-newstyle NBD (`NBD_OPT_INFO`, `NBD_OPT_LIST`,
//! `NBD_OPT_ABORT`) to tell whether an export is being offered, without entering the
//! transmission phase, so the harness can wait for "primary and serving" without
//! depending on any client tool. Every socket operation has a timeout.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Ports handed out by this process, so two tests running in parallel threads never
/// get the same one between its probe and the daemon's bind.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
/// Attempts at finding a port not handed out yet.
const FREE_PORT_ATTEMPTS_MAX: usize = 200;

/// A currently free TCP port on 127.0.0.1, never the same twice in one process.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    for _ in 0..FREE_PORT_ATTEMPTS_MAX {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if set.insert(port) {
            return port;
        }
    }
    panic!("no fresh loopback port after {FREE_PORT_ATTEMPTS_MAX} attempts");
}

/// Where an NBD server listens.
#[derive(Clone, Debug)]
pub enum NbdAddr {
    /// TCP address.
    Tcp(SocketAddr),
    /// Unix socket path.
    Unix(PathBuf),
}

impl NbdAddr {
    /// `127.0.0.1:port`.
    pub fn local(port: u16) -> NbdAddr {
        NbdAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The NBD URI of `export` at this address (as libnbd and qemu spell it).
    pub fn uri(&self, export: &str) -> String {
        match self {
            NbdAddr::Tcp(a) => format!("nbd://{a}/{export}"),
            NbdAddr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
        }
    }
}

/// Why a probe did not see the export.
#[derive(Debug)]
pub enum ProbeError {
    /// Could not connect or the connection broke.
    Io(std::io::Error),
    /// The server answered, but not as an NBD server.
    Protocol(String),
    /// The server refused the option (reply type with the error bit set).
    Refused(u32),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Io(e) => write!(f, "i/o: {e}"),
            ProbeError::Protocol(s) => write!(f, "protocol: {s}"),
            ProbeError::Refused(t) => write!(f, "refused with reply type {t:#x}"),
        }
    }
}

impl From<std::io::Error> for ProbeError {
    fn from(e: std::io::Error) -> Self {
        ProbeError::Io(e)
    }
}

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;
/// Replies larger than this are not something a probe needs to read.
const REPLY_LEN_MAX: u32 = 64 * 1024;
/// Bound on the replies read for one option.
const REPLIES_PER_OPTION_MAX: usize = 4096;

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(addr: &NbdAddr, timeout: Duration) -> Result<Box<dyn Stream>, ProbeError> {
    Ok(match addr {
        NbdAddr::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Box::new(s)
        }
        NbdAddr::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Box::new(s)
        }
    })
}

fn read_u16(s: &mut dyn Stream) -> Result<u16, ProbeError> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut dyn Stream) -> Result<u32, ProbeError> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut dyn Stream) -> Result<u64, ProbeError> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn handshake(s: &mut dyn Stream) -> Result<(), ProbeError> {
    if read_u64(s)? != NBDMAGIC {
        return Err(ProbeError::Protocol("no NBDMAGIC".into()));
    }
    if read_u64(s)? != IHAVEOPT {
        return Err(ProbeError::Protocol("not a newstyle server".into()));
    }
    let hflags = read_u16(s)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ProbeError::Protocol("not fixed newstyle".into()));
    }
    let cflags = u32::from(hflags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    s.write_all(&cflags.to_be_bytes())?;
    Ok(())
}

fn send_option(s: &mut dyn Stream, opt: u32, data: &[u8]) -> Result<(), ProbeError> {
    let len =
        u32::try_from(data.len()).map_err(|_| ProbeError::Protocol("option too long".into()))?;
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(data);
    s.write_all(&msg)?;
    Ok(())
}

/// One option reply: (type, payload).
fn read_reply(s: &mut dyn Stream, opt: u32) -> Result<(u32, Vec<u8>), ProbeError> {
    if read_u64(s)? != REPLY_MAGIC {
        return Err(ProbeError::Protocol("bad option reply magic".into()));
    }
    let got_opt = read_u32(s)?;
    if got_opt != opt {
        return Err(ProbeError::Protocol(format!(
            "reply for option {got_opt}, sent {opt}"
        )));
    }
    let typ = read_u32(s)?;
    let len = read_u32(s)?;
    if len > REPLY_LEN_MAX {
        return Err(ProbeError::Protocol(format!("option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)?;
    Ok((typ, data))
}

fn abort(s: &mut dyn Stream) {
    // Best effort: a soft disconnect; the answer does not matter.
    if send_option(s, OPT_ABORT, &[]).is_ok() {
        let _ = read_reply(s, OPT_ABORT);
    }
}

/// Ask the server about `export` with `NBD_OPT_INFO`; Ok(size in bytes) if offered.
pub fn nbd_info(addr: &NbdAddr, export: &str, timeout: Duration) -> Result<u64, ProbeError> {
    let mut s = connect(addr, timeout)?;
    handshake(&mut *s)?;
    let name = export.as_bytes();
    let name_len = u32::try_from(name.len()).map_err(|_| ProbeError::Protocol("name".into()))?;
    let mut data = Vec::new();
    data.extend_from_slice(&name_len.to_be_bytes());
    data.extend_from_slice(name);
    data.extend_from_slice(&0u16.to_be_bytes());
    send_option(&mut *s, OPT_INFO, &data)?;
    let mut size = None;
    for _ in 0..REPLIES_PER_OPTION_MAX {
        let (typ, payload) = read_reply(&mut *s, OPT_INFO)?;
        match typ {
            REP_ACK => {
                abort(&mut *s);
                return size
                    .ok_or_else(|| ProbeError::Protocol("ACK without NBD_INFO_EXPORT".into()));
            }
            REP_INFO if payload.len() >= 12 && payload[..2] == INFO_EXPORT.to_be_bytes() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload[2..10]);
                size = Some(u64::from_be_bytes(b));
            }
            REP_INFO => {}
            t if t & REP_ERR_BIT != 0 => {
                abort(&mut *s);
                return Err(ProbeError::Refused(t));
            }
            t => {
                return Err(ProbeError::Protocol(format!(
                    "unexpected reply type {t:#x}"
                )))
            }
        }
    }
    Err(ProbeError::Protocol("endless INFO replies".into()))
}

/// The export names the server lists with `NBD_OPT_LIST`.
pub fn nbd_list(addr: &NbdAddr, timeout: Duration) -> Result<Vec<String>, ProbeError> {
    let mut s = connect(addr, timeout)?;
    handshake(&mut *s)?;
    send_option(&mut *s, OPT_LIST, &[])?;
    let mut names = Vec::new();
    for _ in 0..REPLIES_PER_OPTION_MAX {
        let (typ, payload) = read_reply(&mut *s, OPT_LIST)?;
        match typ {
            REP_ACK => {
                abort(&mut *s);
                return Ok(names);
            }
            REP_SERVER if payload.len() >= 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(&payload[..4]);
                let n = u32::from_be_bytes(b) as usize;
                let name = payload
                    .get(4..4 + n)
                    .ok_or_else(|| ProbeError::Protocol("REP_SERVER name overruns".into()))?;
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            t if t & REP_ERR_BIT != 0 => {
                abort(&mut *s);
                return Err(ProbeError::Refused(t));
            }
            t => {
                return Err(ProbeError::Protocol(format!(
                    "unexpected reply type {t:#x}"
                )))
            }
        }
    }
    Err(ProbeError::Protocol("endless LIST replies".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_not_repeated() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn uris() {
        assert_eq!(NbdAddr::local(10809).uri("r0"), "nbd://127.0.0.1:10809/r0");
        assert_eq!(
            NbdAddr::Unix("/run/hast/r0.nbd".into()).uri("r0"),
            "nbd+unix:///r0?socket=/run/hast/r0.nbd"
        );
    }

    #[test]
    fn probe_of_a_closed_port_is_an_error() {
        let port = free_port();
        assert!(nbd_info(&NbdAddr::local(port), "r0", Duration::from_secs(2)).is_err());
    }
}
