//! Control sockets: root-only Unix sockets that a second daemon on the same
//! path refuses to steal.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds the control socket at `path` (mode 0600). A stale socket left by a
/// dead daemon is replaced; one that still answers is an error naming
/// `program`.
pub fn bind_control(program: &str, path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another {program} answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    bind_private(path)
}

/// Binds a Unix socket with mode 0600: the umask is narrowed around the bind
/// so the socket never exists with looser permissions, even briefly.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file mode mask; restored below.
    let old = unsafe { libc::umask(0o177) };
    let res = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    res
}

/// Binds a Unix socket for an export: created 0600 and root's (as
/// [`bind_private`]), then handed to `uid:gid` and widened to `mode`, so it is
/// never reachable by more users than intended, even for an instant.
pub fn bind_shared(path: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = bind_private(path)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))?;
    Ok(l)
}

/// The uid of a user name, or a numeric id as it is.
pub fn uid_of(name: &str) -> std::io::Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    lookup(name, "user", |n, buf| {
        // SAFETY: all-zero is a valid `passwd` (integers and null pointers).
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `n` is NUL-terminated, `buf` is valid for writes of its
        // length, `pw`/`out` live for the call; getpwnam_r writes only there.
        let rc = unsafe {
            libc::getpwnam_r(
                n.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        (rc, (!out.is_null()).then_some(pw.pw_uid))
    })
}

/// The gid of a group name, or a numeric id as it is.
pub fn gid_of(name: &str) -> std::io::Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    lookup(name, "group", |n, buf| {
        // SAFETY: all-zero is a valid `group` (integers and null pointers).
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `uid_of`, for getgrnam_r.
        let rc = unsafe {
            libc::getgrnam_r(
                n.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        (rc, (!out.is_null()).then_some(gr.gr_gid))
    })
}

/// Calls a `get*nam_r` wrapper with a growing buffer (ERANGE), bounded.
fn lookup(
    name: &str,
    what: &str,
    call: impl Fn(&std::ffi::CStr, &mut [u8]) -> (libc::c_int, Option<u32>),
) -> std::io::Result<u32> {
    let n = std::ffi::CString::new(name).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad {what} name"))
    })?;
    let mut buf = vec![0u8; 4096];
    loop {
        match call(&n, &mut buf) {
            (0, Some(id)) => return Ok(id),
            (0, None) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no such {what} \"{name}\""),
                ))
            }
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            (rc, _) => return Err(std::io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(uid_of("root").unwrap(), 0);
        assert_eq!(gid_of("root").unwrap(), 0);
        assert_eq!(uid_of("4242").unwrap(), 4242);
        let e = gid_of("no-such-group-hast").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no such group"), "{e}");
    }
}
