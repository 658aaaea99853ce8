//! Runs an operator's command — `fence_peer` through `/bin/sh -c`, the
//! `exec` event hook directly — under a time bound: it gets the environment
//! it is given, no stdin, and its own process group, so that on timeout (or
//! when the caller gives up) it and everything it started are killed by
//! that group's id. Its
//! output is kept up to a bound for the log; the rest is read and dropped so
//! a chatty command never blocks on a full pipe.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long output is still read after the shell exited: a background
/// process it left behind may hold the pipes open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Exit status of the shell.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// Still running at the bound; its process group was killed.
    TimedOut,
    /// It could not be started.
    Failed(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => write!(f, "exit status {c}"),
            Ended::Signaled(s) => write!(f, "killed by signal {s}"),
            Ended::TimedOut => f.write_str("timed out (killed)"),
            Ended::Failed(e) => write!(f, "cannot start: {e}"),
        }
    }
}

/// The outcome and the first bytes of the output.
#[derive(Debug)]
pub struct Run {
    pub ended: Ended,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run {
    pub fn success(&self) -> bool {
        self.ended == Ended::Exited(0)
    }

    /// Output lines for the log (stdout then stderr), at most `max` of them.
    pub fn lines(&self, max: usize) -> Vec<String> {
        [&self.stdout, &self.stderr]
            .iter()
            .flat_map(|b| {
                String::from_utf8_lossy(b)
                    .into_owned()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.trim().is_empty())
            .take(max)
            .collect()
    }
}

/// Kills the process group of a child that is still ours to kill.
struct GroupKill(Option<u32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            if let Ok(pgid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) with the negated id of the process group we
                // created for this child (process_group(0)); the child is not
                // reaped yet, so the id cannot have been reused.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        // The caller dropped the run (demotion, shutdown): nothing it started
        // may outlive it.
        self.kill();
    }
}

/// Runs `command` with `/bin/sh -c` and `env` added to hastd's environment,
/// for at most `limit`; keeps at most `output_max` bytes of each stream.
pub async fn run(command: &str, env: &[(&str, String)], limit: Duration, output_max: usize) -> Run {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(command);
    supervise(cmd, env, limit, output_max).await
}

/// Runs `program` itself (no shell) with `args`, as FreeBSD hastd runs its
/// `exec` hook, under the same bounds as [`run`].
pub async fn run_program(
    program: &std::path::Path,
    args: &[String],
    env: &[(String, String)],
    limit: Duration,
    output_max: usize,
) -> Run {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    supervise(cmd, &env, limit, output_max).await
}

/// Starts `cmd` in its own process group with no stdin and piped output,
/// waits at most `limit`, and kills the whole group if it is still running
/// then (or if the caller drops the future).
async fn supervise(
    mut cmd: tokio::process::Command,
    env: &[(&str, String)],
    limit: Duration,
    output_max: usize,
) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                ended: Ended::Failed(e.to_string()),
                stdout: Vec::new(),
                stderr: Vec::new(),
            }
        }
    };
    let mut group = GroupKill(child.id());
    let out = child
        .stdout
        .take()
        .map(|p| tokio::spawn(read_bounded(p, output_max)));
    let err = child
        .stderr
        .take()
        .map(|p| tokio::spawn(read_bounded(p, output_max)));
    let ended = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(st)) => {
            group.0 = None;
            match (st.code(), st.signal()) {
                (Some(c), _) => Ended::Exited(c),
                (None, Some(s)) => Ended::Signaled(s),
                (None, None) => Ended::Failed(format!("unknown status {st}")),
            }
        }
        Ok(Err(e)) => {
            group.kill();
            Ended::Failed(e.to_string())
        }
        Err(_) => {
            group.kill();
            // Reap it; SIGKILL cannot be ignored, so this is quick.
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, child.wait()).await;
            Ended::TimedOut
        }
    };
    let stdout = collect(out).await;
    let stderr = collect(err).await;
    Run {
        ended,
        stdout,
        stderr,
    }
}

/// What a reader got, waiting at most [`DRAIN_AFTER_EXIT`] for the pipe to close.
async fn collect(task: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut task) = task else {
        return Vec::new();
    };
    match tokio::time::timeout(DRAIN_AFTER_EXIT, &mut task).await {
        Ok(Ok(v)) => v,
        _ => {
            task.abort();
            Vec::new()
        }
    }
}

/// Reads to EOF, keeping the first `max` bytes.
async fn read_bounded<R: AsyncRead + Unpin>(mut r: R, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn outcomes() {
        let env = [("HAST_TEST_X", "forty two".to_string())];
        #[rustfmt::skip]
        let cases: &[(&str, Ended, &str)] = &[
            ("true", Ended::Exited(0), ""),
            ("echo out; echo err >&2; exit 3", Ended::Exited(3), "out|err"),
            ("echo \"$HAST_TEST_X\"", Ended::Exited(0), "forty two"),
            ("kill -TERM $$", Ended::Signaled(libc::SIGTERM), ""),
            ("exec /nonexistent/fence", Ended::Exited(127), ""),
        ];
        for (cmd, want, lines) in cases {
            let r = run(cmd, &env, LIMIT, 1024).await;
            assert_eq!(&r.ended, want, "{cmd}");
            assert_eq!(r.success(), *want == Ended::Exited(0), "{cmd}");
            if !lines.is_empty() {
                assert_eq!(r.lines(10).join("|"), *lines, "{cmd}");
            }
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("hastd-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("survived");
        let _ = std::fs::remove_file(&marker);
        // A grandchild that would leave a mark if it outlived the kill.
        let cmd = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let t = Instant::now();
        let r = run(&cmd, &[], Duration::from_millis(300), 1024).await;
        assert_eq!(r.ended, Ended::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a process of the group survived the kill");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn output_is_bounded_and_a_background_process_does_not_hold_us() {
        let r = run("head -c 100000 /dev/zero | tr '\\0' x", &[], LIMIT, 100).await;
        assert!(r.success());
        assert_eq!(r.stdout.len(), 100);
        let t = Instant::now();
        let r = run("sleep 3 & echo started", &[], LIMIT, 100).await;
        assert!(r.success(), "{:?}", r.ended);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_command() {
        let dir = std::env::temp_dir().join(format!("hastd-cmd-drop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("survived");
        let _ = std::fs::remove_file(&marker);
        let cmd = format!("sleep 1; touch {}", marker.display());
        let r = tokio::time::timeout(Duration::from_millis(200), run(&cmd, &[], LIMIT, 10)).await;
        assert!(r.is_err(), "the command finished before the drop");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the command outlived its dropped run");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
