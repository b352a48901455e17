//! Running PostgreSQL's programs as an unprivileged user when the tests run as root.
//!
//! `initdb` and `postgres` refuse to run as root. As root, every PostgreSQL program is run
//! through `setpriv` (util-linux, essential on Debian), which changes user and then `exec`s the
//! program: unlike `runuser` it leaves no watching parent behind, so the server stays our direct
//! child and dies with the test's process group.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::process::{output_text, program_name};

/// Overrides the unprivileged user chosen when running as root.
const USER_ENV: &str = "WALCACHE_TESTKIT_PG_USER";
/// Preferred user: the one the `postgresql` package creates.
const PACKAGE_USER: &str = "postgres";
/// Created with `useradd --system` when no other user is available.
const FALLBACK_USER: &str = "walcache-test";

/// Who PostgreSQL's programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunAs {
    /// We are not root: run programs as ourselves.
    CurrentUser,
    /// We are root: switch to this user.
    User {
        /// The user's name.
        name: String,
        /// Its user id.
        uid: u32,
        /// Its primary group id.
        gid: u32,
    },
}

impl RunAs {
    /// The process-wide choice, made once.
    pub(crate) fn get() -> Result<&'static RunAs> {
        static RUN_AS: OnceLock<RunAs> = OnceLock::new();
        if let Some(run_as) = RUN_AS.get() {
            return Ok(run_as);
        }
        let run_as = choose()?;
        Ok(RUN_AS.get_or_init(|| run_as))
    }

    /// A command that runs `program` as this user.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match self {
            RunAs::CurrentUser => Command::new(program),
            RunAs::User { uid, gid, .. } => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                command
            }
        }
    }

    /// A name for this identity, part of the template's cache key.
    pub(crate) fn describe(&self) -> String {
        match self {
            RunAs::CurrentUser => "current-user".to_owned(),
            RunAs::User { name, uid, gid } => format!("{name}:{uid}:{gid}"),
        }
    }

    /// Gives `path` and everything below it to this user (a no-op when not root).
    pub(crate) fn chown_recursive(&self, path: &Path) -> Result<()> {
        let RunAs::User { uid, gid, .. } = self else {
            return Ok(());
        };
        std::os::unix::fs::lchown(path, Some(*uid), Some(*gid))
            .map_err(|e| Error::io("changing the owner of", path, e))?;
        let metadata = fs::symlink_metadata(path).map_err(|e| Error::io("inspecting", path, e))?;
        if metadata.is_dir() {
            let entries = fs::read_dir(path).map_err(|e| Error::io("listing", path, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("listing", path, e))?;
                self.chown_recursive(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// This process's effective uid, read from the `Uid:` line of `/proc/self/status` (real,
/// effective, saved and file-system uids), without `unsafe` or `libc`.
pub(crate) fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

fn choose() -> Result<RunAs> {
    if !is_root() {
        return Ok(RunAs::CurrentUser);
    }
    if let Ok(name) = std::env::var(USER_ENV) {
        return lookup(&name).ok_or_else(|| Error::NoUnprivilegedUser {
            reason: format!("{USER_ENV}={name} names no user in /etc/passwd"),
        });
    }
    if let Some(user) = lookup(PACKAGE_USER).or_else(|| lookup(FALLBACK_USER)) {
        return Ok(user);
    }
    let mut useradd = Command::new("useradd");
    useradd.args([
        "--system",
        "--no-create-home",
        "--user-group",
        FALLBACK_USER,
    ]);
    let output = useradd.output().map_err(|source| Error::Spawn {
        program: program_name(&useradd),
        source,
    })?;
    // A concurrent test process may have created the user first: look it up either way.
    lookup(FALLBACK_USER).ok_or_else(|| Error::NoUnprivilegedUser {
        reason: format!(
            "`useradd --system {FALLBACK_USER}` failed: {}",
            output_text(&output)
        ),
    })
}

/// Finds `name` in `/etc/passwd` (the users that matter here are local system users).
fn lookup(name: &str) -> Option<RunAs> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        (uid != 0).then(|| RunAs::User {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}
