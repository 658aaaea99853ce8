//! The watchdog's durable state, one small JSON file per resource under
//! `state_dir`, replaced crash-atomically: write a temporary file, fsync it,
//! rename it over the old one, fsync the directory. A granted epoch or an
//! outdated mark is on disk before anyone hears of it, so a watchdog that
//! restarts never grants an epoch twice or forgets an outdated node.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::policy::WitnessState;

/// Largest state file read back (it holds a few names and numbers).
const STATE_MAX: u64 = 64 * 1024;

pub fn path(state_dir: &Path, resource: &str) -> PathBuf {
    state_dir.join(format!("{resource}.json"))
}

/// Loads the state of `resource`; a missing file is a fresh state.
pub fn load(state_dir: &Path, resource: &str) -> Result<WitnessState, String> {
    let p = path(state_dir, resource);
    let file = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WitnessState::default()),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let mut text = String::new();
    file.take(STATE_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if text.len() as u64 > STATE_MAX {
        return Err(format!("{}: larger than {STATE_MAX} bytes", p.display()));
    }
    serde_json::from_str(&text).map_err(|e| format!("{}: corrupt state: {e}", p.display()))
}

/// Persists `state` durably (see the module header).
pub fn save(state_dir: &Path, resource: &str, state: &WitnessState) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    fs::create_dir_all(state_dir).map_err(|e| err(state_dir, e))?;
    let p = path(state_dir, resource);
    let tmp = state_dir.join(format!(".{resource}.json.tmp"));
    let body = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    let mut f = File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(&body).map_err(|e| err(&tmp, e))?;
    f.sync_all().map_err(|e| err(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, &p).map_err(|e| err(&p, e))?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(state_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = std::env::temp_dir().join(format!("hastmon-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(load(&dir, "r0").unwrap(), WitnessState::default());
        let mut st = WitnessState {
            epoch: 7,
            primary: Some("nodeb".into()),
            ..Default::default()
        };
        st.outdated.insert("nodea".into(), (7, 2));
        save(&dir, "r0", &st).unwrap();
        assert_eq!(load(&dir, "r0").unwrap(), st);
        fs::write(path(&dir, "r0"), b"{\"epoch\": \"x\"").unwrap();
        let e = load(&dir, "r0").unwrap_err();
        assert!(e.contains("corrupt state"), "{e}");
        fs::write(path(&dir, "r0"), vec![b' '; STATE_MAX as usize + 10]).unwrap();
        assert!(load(&dir, "r0").unwrap_err().contains("larger than"));
        let _ = fs::remove_dir_all(&dir);
    }
}
