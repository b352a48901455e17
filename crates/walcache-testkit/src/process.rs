//! Small helpers shared by the Redis and PostgreSQL servers: finding programs, picking ports,
//! reading logs, checking processes.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Once, OnceLock};

use tempfile::TempDir;

use crate::error::{Error, Result};

/// Overrides where servers' temporary directories are created.
const SERVER_DIR_ENV: &str = "WALCACHE_TESTKIT_SERVER_DIR";
/// How much room `/dev/shm` must have to hold servers' directories.
const MIN_SHM_BYTES: u64 = 1 << 30;

/// The file in a server directory naming the test process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// Prefixes of the servers' directories.
pub(crate) const PG_DIR_PREFIX: &str = "walcache-pg-";
/// See [`PG_DIR_PREFIX`].
pub(crate) const REDIS_DIR_PREFIX: &str = "walcache-redis-";
/// The file in a Redis server directory holding the server's pid.
pub(crate) const REDIS_PID_FILE: &str = "redis-server.pid";

/// How many bytes of a log [`log_tail`] returns at most.
const LOG_TAIL_BYTES: u64 = 4096;

/// Finds `program` in `$PATH`, then in the usual Debian locations.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A port that was free on 127.0.0.1 a moment ago (the caller retries if it is taken by the
/// time the server binds it).
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("binding a free port on", "127.0.0.1:0", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading the address of", "127.0.0.1:0", e))?
        .port();
    Ok(port)
}

/// The size of a file, 0 if it does not exist: where to start reading a log for this attempt.
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last few lines of `path` written after byte `from`, for error messages.
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(could not read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_end();
    if text.is_empty() {
        format!("(nothing in {})", path.display())
    } else {
        text.to_owned()
    }
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Runs `command` to completion, failing with its output unless it succeeds.
pub(crate) fn run(command: &mut Command) -> Result<Output> {
    let output = command.output().map_err(|source| Error::Spawn {
        program: program_name(command),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            program: program_name(command),
            status: output.status.to_string(),
            output: output_text(&output),
        })
    }
}

/// The program and arguments of `command`, for messages.
pub(crate) fn program_name(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command's standard error and output, trimmed.
pub(crate) fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    format!("{}\n{}", stderr.trim(), stdout.trim())
        .trim()
        .to_owned()
}

/// Whether a server log says the listening address was already taken.
pub(crate) fn mentions_address_in_use(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("could not bind")
        || log.contains("could not create any TCP/IP sockets")
}

/// Creates a server's temporary directory, marked with this process's pid.
///
/// The first call in a process also sweeps directories left behind by test processes that
/// were killed before their servers' `Drop` ran, stopping any server still running in them.
pub(crate) fn create_server_dir(prefix: &str) -> Result<TempDir> {
    static SWEEP: Once = Once::new();
    let parent = server_dir_parent();
    SWEEP.call_once(|| sweep_orphans(&parent));
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .map_err(|e| Error::io("creating a temporary directory in", &parent, e))?;
    let owner = dir.path().join(OWNER_FILE);
    fs::write(&owner, std::process::id().to_string())
        .map_err(|e| Error::io("writing", &owner, e))?;
    Ok(dir)
}

fn sweep_orphans(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(PG_DIR_PREFIX) && !name.starts_with(REDIS_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        // No owner file: being created right now (or by an older testkit); leave it alone.
        let Some(owner) = owner else { continue };
        if process_alive(owner) {
            continue;
        }
        // SIGQUIT lets a postmaster take its backends and shared memory down with it.
        let servers = [
            (dir.join("data/postmaster.pid"), "QUIT"),
            (dir.join(REDIS_PID_FILE), "KILL"),
        ];
        for (pid_file, signal_name) in servers {
            let pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
            // Only a process working in this directory is ours to stop (pids get reused).
            if let Some(pid) = pid.filter(|pid| process_works_in(*pid, &dir)) {
                signal(pid, signal_name);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Whether process `pid`'s working directory is `dir` or below it.
fn process_works_in(pid: u32, dir: &Path) -> bool {
    fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
}

/// Sends `signal` (a name such as `QUIT`) to `pid` with `sh`'s built-in `kill` (`/bin/kill`,
/// from procps, is not essential on Debian). Returns whether it was delivered.
pub(crate) fn signal(pid: u32, signal: &str) -> bool {
    Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Where servers' temporary directories go: `$WALCACHE_TESTKIT_SERVER_DIR`, else `/dev/shm`
/// when it is a tmpfs with at least 1 GiB free (a cluster is about 1,000 files, and creating
/// files is much slower on some disks than in memory), else the system temporary directory.
pub(crate) fn server_dir_parent() -> PathBuf {
    static PARENT: OnceLock<PathBuf> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os(SERVER_DIR_ENV) {
                return PathBuf::from(dir);
            }
            let shm = Path::new("/dev/shm");
            if shm_has_room(shm) {
                shm.to_owned()
            } else {
                std::env::temp_dir()
            }
        })
        .clone()
}

/// Whether `dir` is a tmpfs with [`MIN_SHM_BYTES`] available, asked of coreutils' `df`
/// (`statvfs` would need `unsafe` or another dependency).
fn shm_has_room(dir: &Path) -> bool {
    let Ok(output) = Command::new("df")
        .args(["--output=fstype,avail", "-B1"])
        .arg(dir)
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(line) = text.lines().nth(1) else {
        return false;
    };
    let mut fields = line.split_whitespace();
    let fstype = fields.next();
    let avail = fields.next().and_then(|avail| avail.parse::<u64>().ok());
    output.status.success() && fstype == Some("tmpfs") && avail.is_some_and(|a| a >= MIN_SHM_BYTES)
}
