//! The `walcached` process under audit: found, configured, started, killed.

use std::path::PathBuf;
use std::process::Stdio;

use crate::{BoxError, DAEMON_HEARTBEAT_MS, KEY_PREFIX, NAMESPACE};

/// Where the `walcached` binary is: `WALCACHED_BIN`, else next to this executable.
pub(crate) fn walcached_bin() -> Result<PathBuf, BoxError> {
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

/// A `walcached` process the auditor can start, SIGKILL and restart.
pub(crate) struct Daemon {
    /// The `walcached` binary.
    pub(crate) bin: PathBuf,
    /// Its configuration file.
    pub(crate) config: PathBuf,
    /// Where its stdout and stderr go (appended across restarts).
    pub(crate) log: PathBuf,
    /// The running process, if any.
    pub(crate) child: Option<tokio::process::Child>,
}

impl Daemon {
    /// Start the daemon (`walcached run --config …`), with no `WALCACHED_*` overrides.
    pub(crate) fn spawn(&mut self) -> Result<(), BoxError> {
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

    /// Kill it with SIGKILL and reap it.
    pub(crate) async fn sigkill(&mut self) -> Result<(), BoxError> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?; // SIGKILL
            c.wait().await?;
        }
        Ok(())
    }

    /// The last 20 lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The daemon's configuration for the audit tables.
pub(crate) fn daemon_config(pg_url: &str, redis_url: &str) -> String {
    format!(
        r#"
[postgres]
url = "{pg_url}"

[redis]
url = "{redis_url}"
key_prefix = "{KEY_PREFIX}"

[stream]
batch_max_delay_ms = 1
heartbeat_interval_ms = {DAEMON_HEARTBEAT_MS}
status_interval_ms = 500

[http]
listen = ""

[[rules]]
table = "public.audit_rows"
namespace = "{NAMESPACE}"
keys = ["{{id}}"]
"#
    )
}

