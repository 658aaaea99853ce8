//! Per-test temporary directories.
//!
//! Short paths (Unix socket paths are limited to 107 bytes) under `$HAST_TEST_TMPDIR`
//! or the system temp dir. Removed on drop unless `HAST_KEEP_TMP` is set, and never
//! while something is still mounted below them: deleting through a leftover mount
//! would reach into that filesystem.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A directory that lives as long as the value.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Create `<tmp>/hast-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::var_os("HAST_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("hast-{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            // A leftover of a crashed run with the same pid: not ours to keep.
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HAST_KEEP_TMP").is_some() {
            eprintln!("HAST_KEEP_TMP: keeping {}", self.path.display());
            return;
        }
        let mounted = mounts_below(&self.path);
        if !mounted.is_empty() {
            eprintln!(
                "NOT removing {}: still mounted below it: {mounted:?}",
                self.path.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn temp_dirs_are_distinct_and_removed() {
        let a = TempDir::new("unit");
        let b = TempDir::new("unit");
        assert_ne!(a.path(), b.path());
        let p = a.path().to_path_buf();
        std::fs::write(a.join("f"), b"x").expect("write");
        drop(a);
        if std::env::var_os("HAST_KEEP_TMP").is_none() {
            assert!(!p.exists());
        }
    }
}
