//! Peak RSS (`VmHWM`) of a `walcached run` process through one large transaction.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BoxError, Env, DEADLINE};

pub(crate) struct RssResult {
    pub(crate) rows: u64,
    pub(crate) idle_hwm_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) follow_s: f64,
    pub(crate) generation: String,
}

/// `$WALCACHED_BIN`, else `walcached` next to this binary (`cargo build [--release] -p
/// walcached` puts it there).
pub(super) fn walcached_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("WALCACHED_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("walcached"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no walcached binary at {} (build it with `cargo build --release -p walcached`, or \
             set WALCACHED_BIN)",
            path.display()
        ))
    }
}

/// `VmHWM` and `VmRSS` of process `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64), BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64, BoxError> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}").into())
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

pub(super) fn rss(env: &Env<'_>, bin: &Path, n: u64) -> Result<RssResult, BoxError> {
    env.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL) \
         WITH (autovacuum_enabled = false);",
    )?;
    // The slot exists beforehand, so the daemon's start is not a new slot's namespace flush.
    env.create_slot("rss", "pgoutput")?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("walcached.toml");
    std::fs::write(&config, env.daemon_toml("rss", "rss_pub", "big"))?;
    let log = dir.path().join("walcached.log");
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let result = rss_measure(env, n, pid, &mut child, &log);
    // SIGTERM: the daemon's clean shutdown path.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let t = Instant::now();
    loop {
        match child.try_wait()? {
            Some(status) => {
                if !status.success() {
                    eprintln!("suite: walcached exited with {status} after SIGTERM");
                }
                break;
            }
            None if t.elapsed() > Duration::from_secs(10) => {
                eprintln!("suite: walcached did not stop within 10 s of SIGTERM: killed");
                child.kill()?;
                child.wait()?;
                break;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    result
}

fn rss_measure(
    env: &Env<'_>,
    n: u64,
    pid: u32,
    child: &mut std::process::Child,
    log: &Path,
) -> Result<RssResult, BoxError> {
    let log_tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    // Streaming: the slot is in use.
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("walcached exited with {status}:\n{}", log_tail()).into());
        }
        let active: bool = env
            .rt
            .block_on(env.db.query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'rss'",
                &[],
            ))?
            .get(0);
        if active {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("walcached did not start streaming:\n{}", log_tail()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (idle_hwm, _) = memory_kib(pid)?;
    env.sql(&format!(
        "INSERT INTO big SELECT g, 0 FROM generate_series(1, {n}) g"
    ))?;
    let end = env.current_lsn()?;
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("walcached exited with {status}:\n{}", log_tail()).into());
        }
        if env.confirmed_flush_lsn("rss")? >= end {
            break;
        }
        if t.elapsed() > DEADLINE {
            return Err(
                format!("walcached did not confirm the transaction:\n{}", log_tail()).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let follow_s = t.elapsed().as_secs_f64();
    let (hwm, _) = memory_kib(pid)?;
    let generation: Option<String> = env.rt.block_on(async {
        let mut conn = env
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("GET")
            .arg("wc:{big}:gen")
            .query_async::<Option<String>>(&mut conn)
            .await
    })?;
    eprintln!(
        "suite: rss: VmHWM {idle_hwm} kB idle, {hwm} kB after {n} rows ({follow_s:.2} s){}",
        crate::caveat::figure_label()
    );
    Ok(RssResult {
        rows: n,
        idle_hwm_kib: idle_hwm,
        hwm_kib: hwm,
        follow_s,
        generation: generation.unwrap_or_else(|| "(none)".to_owned()),
    })
}
