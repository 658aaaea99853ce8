//! What the test machine offers: root, tools on PATH, python's libnbd, /dev/fuse.
//!
//! Outside CI a missing prerequisite skips the test with a loud `SKIPPED:` line
//! written straight to the terminal (not through libtest's capture, so it shows even
//! when the test "passes"). In CI (`CI` set) every prerequisite is installed by
//! `.ci/run`, so a missing one is a failure: nothing may skip silently there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The python that has Debian's `nbd` module (the first `python3` on PATH may not).
pub const PYTHON: &str = "/usr/bin/python3";

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Report a missing prerequisite: panic in CI, print `SKIPPED: why` and return false
/// otherwise. Callers do `if !require_x() { return; }`.
pub fn skip(why: &str) -> bool {
    if in_ci() {
        panic!("prerequisite missing in CI (nothing may skip there): {why}");
    }
    // Straight to fd 2: libtest only captures the print macros.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {} : {why} ***",
        std::thread::current().name().unwrap_or("test")
    );
    false
}

/// The workspace root (where `Cargo.toml`, `tests/` and `bench/` are).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// A python script under `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    repo_root().join("tests").join("py").join(name)
}

/// Running as root (needed to mount, to use loop devices and /dev/fuse).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || skip("needs root (mount, loop devices, /dev/fuse)")
}

/// Full path of an executable found on PATH or in the sbin directories, which a
/// non-login root shell may lack on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The tool `name` is installed (see `.ci/run` for the package that ships it).
pub fn require_tool(name: &str) -> bool {
    which(name).is_some() || skip(&format!("tool `{name}` not found on PATH"))
}

/// Every tool in `names` is installed.
pub fn require_tools(names: &[&str]) -> bool {
    names.iter().all(|n| require_tool(n))
}

/// `/usr/bin/python3` can `import nbd` (package python3-libnbd).
pub fn require_python_nbd() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import nbd"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok || skip(&format!(
        "{PYTHON} cannot `import nbd` (install python3-libnbd)"
    ))
}

/// `/dev/fuse` exists (nbdfuse needs it).
pub fn require_fuse() -> bool {
    Path::new("/dev/fuse").exists()
        || skip("/dev/fuse is missing (no FUSE in this kernel/container)")
}

/// A factor applied to every harness timeout, for slow machines:
/// `HAST_TEST_TIME_SCALE=3` triples them.
pub fn time_scale() -> u32 {
    std::env::var("HAST_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| *v >= 1)
        .unwrap_or(1)
}

/// `secs` seconds, scaled by [`time_scale`].
pub fn timeout_s(secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(secs * u64::from(time_scale()))
}
