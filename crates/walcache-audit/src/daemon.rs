//! The `walcached` process under audit: found, configured, started, killed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

use crate::BoxError;

/// Where the `walcached` binary is: `WALCACHED_BIN`, else next to this executable.
pub fn walcached_bin() -> Result<PathBuf, BoxError> {
    if let Some(p) = std::env::var_os("WALCACHED_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or("the executable has no directory")?;
    // target/<profile>/walcache-audit, or target/<profile>/deps/… for a test binary.
    for candidate in [dir.join("walcached"), dir.join("../walcached")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no walcached binary next to {}: run `cargo build -p walcached` (same profile) first, \
         or set WALCACHED_BIN",
        exe.display()
    )
    .into())
}

/// A `walcached` process the auditor can start, stop (SIGTERM or SIGKILL) and restart.
pub struct Daemon {
    /// The `walcached` binary.
    pub bin: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Where its stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    /// The running process, if any.
    pub child: Option<tokio::process::Child>,
}

impl Daemon {
    /// Start the daemon (`walcached run --config …`), with no `WALCACHED_*` overrides.
    pub fn spawn(&mut self) -> Result<(), BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WALCACHED_") {
                cmd.env_remove(name);
            }
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// Run `walcached ddl-capture install --config …` (the configuration's role must be a
    /// superuser) to completion.
    pub async fn ddl_capture_install(&self) -> Result<(), BoxError> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["ddl-capture", "install", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WALCACHED_") {
                cmd.env_remove(name);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await??;
        if !out.status.success() {
            return Err(format!(
                "walcached ddl-capture install failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }

    /// Kill it with SIGKILL and reap it.
    pub async fn sigkill(&mut self) -> Result<(), BoxError> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?; // SIGKILL
            c.wait().await?;
        }
        Ok(())
    }

    /// Stop it cleanly with SIGTERM (it publishes what is in flight, confirms it and exits)
    /// and reap it. If it has not exited within `deadline` it is SIGKILLed and this is an
    /// error: a clean stop that hangs is a daemon bug.
    pub async fn sigterm(&mut self, deadline: Duration) -> Result<(), BoxError> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let pid = c
            .id()
            .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?))
            .ok_or("walcached has already exited")?;
        kill_process(pid, Signal::TERM)?;
        match tokio::time::timeout(deadline, c.wait()).await {
            Ok(status) => {
                let status = status?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("walcached exited with {status} after SIGTERM").into())
                }
            }
            Err(_) => {
                c.start_kill()?;
                c.wait().await?;
                Err(format!("walcached did not exit within {deadline:?} of SIGTERM").into())
            }
        }
    }

    /// The last 20 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// One `[[rules]]` entry of the daemon's configuration.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// `schema.table`.
    pub table: String,
    /// The namespace the library's caches use.
    pub namespace: String,
    /// Key templates, e.g. `{id}`.
    pub keys: Vec<String>,
    /// Tags bumped by every change of the table, in `namespace` and in each of
    /// `tag_namespaces`.
    pub tags: Vec<String>,
    /// Other namespaces the tags are bumped in (tags are scoped to a namespace).
    pub tag_namespaces: Vec<String>,
}

/// The daemon's configuration: PostgreSQL, Redis with `key_prefix`, a 1 ms batch delay, a
/// heartbeat every `heartbeat_interval_ms`, no HTTP listener, the full-refresh schedule off
/// (`walcached refresh --config …` runs a cycle on demand), and `rules`.
pub fn daemon_config(
    pg_url: &str,
    redis_url: &str,
    key_prefix: &str,
    heartbeat_interval_ms: u64,
    rules: &[RuleSpec],
) -> String {
    let mut config = format!(
        r#"
[postgres]
url = "{pg_url}"

[redis]
url = "{redis_url}"
key_prefix = "{key_prefix}"

[stream]
batch_max_delay_ms = 1
heartbeat_interval_ms = {heartbeat_interval_ms}
status_interval_ms = 500

[refresh]
interval_secs = 0

[http]
listen = ""
"#
    );
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for r in rules {
        config.push_str(&format!(
            "\n[[rules]]\ntable = {:?}\nnamespace = {:?}\nkeys = [{}]\ntags = [{}]\n\
             tag_namespaces = [{}]\n",
            r.table,
            r.namespace,
            list(&r.keys),
            list(&r.tags),
            list(&r.tag_namespaces)
        ));
    }
    config
}
