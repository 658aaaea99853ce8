//! Runs the resource's `exec` script, HASTMON(8)'s contract:
//! `exec start|stop|status|role <role>|connect|disconnect|complain` (plus
//! our `lease <ms>`), exit 0 = success. The script gets the resource, node,
//! role and epoch in its environment (`HASTMON_*`), runs bounded by a
//! timeout (then it is killed by PID), and its output is kept short: the
//! first line of stdout is returned (a storage script reports replication
//! state there, see `contrib/hastmon/hastmon-hastd`), stderr goes to the log.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Output kept from each stream.
const OUTPUT_MAX: u64 = 4096;

/// What the script is told about the resource besides its arguments.
#[derive(Debug, Clone)]
pub struct Env {
    pub resource: String,
    pub node: String,
    pub role: &'static str,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// The first line of stdout.
    pub line: String,
    /// Why it failed, for the log.
    pub error: Option<String>,
}

impl Outcome {
    /// Success with nothing to report.
    pub fn success() -> Outcome {
        Outcome {
            ok: true,
            line: String::new(),
            error: None,
        }
    }

    /// Failure, for this reason.
    pub fn failed(why: String) -> Outcome {
        Outcome {
            ok: false,
            line: String::new(),
            error: Some(why),
        }
    }
}

pub async fn run(script: &Path, args: &[String], env: &Env, timeout: Duration) -> Outcome {
    let mut cmd = Command::new(script);
    cmd.args(args)
        .env("HASTMON_RESOURCE", &env.resource)
        .env("HASTMON_NODE", &env.node)
        .env("HASTMON_ROLE", env.role)
        .env("HASTMON_EPOCH", env.epoch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                ok: false,
                line: String::new(),
                error: Some(format!("cannot run {}: {e}", script.display())),
            }
        }
    };
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let work = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let read_o = async {
            if let Some(s) = out.as_mut() {
                let _ = s.take(OUTPUT_MAX).read_to_end(&mut o).await;
            }
        };
        let read_e = async {
            if let Some(s) = err.as_mut() {
                let _ = s.take(OUTPUT_MAX).read_to_end(&mut e).await;
            }
        };
        tokio::join!(read_o, read_e);
        let status = child.wait().await;
        (status, o, e)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((status, o, e)) => {
            let line = String::from_utf8_lossy(&o)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            let stderr = String::from_utf8_lossy(&e).trim().to_owned();
            match status {
                Ok(s) if s.success() => Outcome {
                    ok: true,
                    line,
                    error: None,
                },
                Ok(s) => Outcome {
                    ok: false,
                    line,
                    error: Some(format!(
                        "{} {}: {s}{}{}",
                        script.display(),
                        args.join(" "),
                        if stderr.is_empty() { "" } else { ": " },
                        stderr.lines().last().unwrap_or("")
                    )),
                },
                Err(e) => Outcome {
                    ok: false,
                    line,
                    error: Some(format!("{}: {e}", script.display())),
                },
            }
        }
        // Dropping `work` dropped the child: kill_on_drop kills it by PID.
        Err(_) => Outcome {
            ok: false,
            line: String::new(),
            error: Some(format!(
                "{} {}: no answer within {} s, killed",
                script.display(),
                args.join(" "),
                timeout.as_secs()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            resource: "r0".into(),
            node: "nodea".into(),
            role: "primary",
            epoch: 4,
        }
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        let dir = std::env::temp_dir().join(format!("hastmon-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase $1 in\n status) echo \"in-sync $HASTMON_EPOCH 2 $HASTMON_RESOURCE\"; exit 0;;\n stop) echo bad >&2; exit 3;;\n start) sleep 30;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let t = Duration::from_secs(5);
        let o = run(&script, &["status".into()], &env(), t).await;
        assert_eq!((o.ok, o.line.as_str()), (true, "in-sync 4 2 r0"));
        let o = run(&script, &["stop".into()], &env(), t).await;
        assert!(!o.ok);
        assert!(o.error.unwrap().ends_with(": bad"));
        let begun = std::time::Instant::now();
        let o = run(
            &script,
            &["start".into()],
            &env(),
            Duration::from_millis(300),
        )
        .await;
        assert!(!o.ok && o.error.unwrap().contains("killed"));
        assert!(begun.elapsed() < Duration::from_secs(5));
        let o = run(&dir.join("missing"), &[], &env(), t).await;
        assert!(o.error.unwrap().contains("cannot run"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
