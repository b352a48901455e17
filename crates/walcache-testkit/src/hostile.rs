//! The harness of the hostile-input property tests: at least [`MIN_CASES`] cases each (more
//! with `PROPTEST_CASES`), run in a child process whose address space is capped, so that
//! "never allocates from an untrusted length" is checked, not just hoped for: a decoder that
//! reserved a claimed length of gigabytes (even without touching it) aborts the child with
//! "memory allocation of N bytes failed", and the test fails with the child's output.
//!
//! [`mutate`] makes the hostile inputs out of valid encodings.

pub mod mutate;

use std::process::{Command, Output};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per property in CI. `PROPTEST_CASES` raises it (never lowers it).
pub const MIN_CASES: u32 = 10_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .map_or(MIN_CASES, |n: u32| n.max(MIN_CASES))
}

/// Checks `property` on [`MIN_CASES`] (or `PROPTEST_CASES`) values of `strategy`, in a child
/// capped at [`LIMIT_KIB`] of address space (see [`capped`]). Call as
/// `check(module_path!(), "test_fn_name", strategy, |value| ...)`.
pub fn check<S>(
    module: &str,
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    capped(module, name, || {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(failure) = runner.run(&strategy, property) {
            panic!("{failure}");
        }
    });
}

/// The child's address-space limit (`ulimit -v`, KiB): 1 GiB. A debug test binary needs well
/// under 200 MiB; any single allocation sized by a hostile 32-bit length is bigger than what
/// is left.
pub const LIMIT_KIB: u64 = 1 << 20;

/// Set in the child, which runs the property itself.
const CHILD_ENV: &str = "WALCACHE_HOSTILE_INPUT_CHILD";

/// Whether this process is the capped child.
fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs one test of this binary, `path` (without the crate name), in a capped child.
fn run_child(path: &str) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args([path, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("sh runs the test binary")
}

/// The test's path inside the binary: `module_path!()` without the crate, then `name`.
fn test_path(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    }
}

/// `body` runs in a child capped at [`LIMIT_KIB`]; the test fails with the child's output
/// unless exactly that one test ran there and passed. Call as
/// `capped(module_path!(), "test_fn_name", || ...)`.
pub fn capped(module: &str, name: &str, body: impl FnOnce()) {
    if in_child() {
        body();
        return;
    }
    let output = run_child(&test_path(module, name));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the capped child ({} KiB of address space) failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        LIMIT_KIB,
        output.status,
    );
}

/// The cap bites: in the child, reserving twice the limit (never touched) aborts; the parent
/// asserts the child died of exactly that.
pub fn assert_cap_bites(module: &str, name: &str) {
    if in_child() {
        let reserved: Vec<u8> = Vec::with_capacity(usize::try_from(2 * LIMIT_KIB * 1024).unwrap());
        std::hint::black_box(&reserved);
        return;
    }
    let output = run_child(&test_path(module, name));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("memory allocation of"),
        "a 2 GiB reservation should abort under a {LIMIT_KIB} KiB cap: {}\n{stderr}",
        output.status
    );
}
