//! CPU time of the three processes a miss runs on: this one (the library or the hand-written
//! client), the Redis server and the PostgreSQL backend serving the SELECT. On 2 shared cores
//! a case with many callers is bound by their sum: the throughput cannot exceed cores ÷ CPU
//! per read, and the p50 of a closed loop of `c` callers is about `c` ÷ that throughput.

use std::ops::{Add, Sub};

use redis::aio::MultiplexedConnection;

use crate::pipeline::BoxError;

/// CPU seconds used so far by each process.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Cpu {
    pub(crate) bench_s: f64,
    pub(crate) redis_s: f64,
    pub(crate) pg_s: f64,
}

impl Cpu {
    /// Read the three clocks now: this process and the backend `pg_pid` from `/proc` (clock
    /// ticks), Redis from `INFO cpu` (µs).
    pub(crate) async fn now(redis: &mut MultiplexedConnection, pg_pid: u32) -> Cpu {
        Cpu {
            bench_s: proc_cpu_s("self"),
            redis_s: redis_cpu_s(redis).await.expect("INFO cpu"),
            pg_s: proc_cpu_s(&pg_pid.to_string()),
        }
    }

    pub(crate) fn total_s(&self) -> f64 {
        self.bench_s + self.redis_s + self.pg_s
    }

    /// Per operation, in µs.
    pub(crate) fn per_op_us(&self, ops: u64) -> Cpu {
        let k = 1e6 / ops.max(1) as f64;
        Cpu {
            bench_s: self.bench_s * k,
            redis_s: self.redis_s * k,
            pg_s: self.pg_s * k,
        }
    }
}

impl Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            bench_s: self.bench_s - o.bench_s,
            redis_s: self.redis_s - o.redis_s,
            pg_s: self.pg_s - o.pg_s,
        }
    }
}

impl Add for Cpu {
    type Output = Cpu;
    fn add(self, o: Cpu) -> Cpu {
        Cpu {
            bench_s: self.bench_s + o.bench_s,
            redis_s: self.redis_s + o.redis_s,
            pg_s: self.pg_s + o.pg_s,
        }
    }
}

/// Redis's own CPU time so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`, seconds).
pub(crate) async fn redis_cpu_s(conn: &mut MultiplexedConnection) -> Result<f64, BoxError> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| -> Result<f64, BoxError> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("INFO cpu has no {name}").into())
    };
    Ok(field("used_cpu_sys")? + field("used_cpu_user")?)
}

/// CPU seconds process `pid` has used so far; `None` once it is gone.
pub(crate) fn process_cpu_s(pid: u32) -> Option<f64> {
    read_cpu_s(&pid.to_string())
}

/// utime + stime of `/proc/<pid>/stat`, in seconds (Linux's clock ticks are 1/100 s).
fn proc_cpu_s(pid: &str) -> f64 {
    read_cpu_s(pid).unwrap_or_else(|| panic!("reading /proc/{pid}/stat"))
}

fn read_cpu_s(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The whole machine's CPU time (`/proc/stat`'s first line), to tell how busy its cores were
/// over a run: a run with the cores busy throughout is bound by them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Machine {
    busy_s: f64,
    total_s: f64,
}

impl Machine {
    pub(crate) fn now() -> Machine {
        let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
        let line = stat.lines().next().expect("/proc/stat's cpu line");
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse::<f64>().expect("a tick count") / 100.0)
            .collect();
        let idle = f[3] + f[4];
        let total: f64 = f.iter().sum();
        Machine {
            busy_s: total - idle,
            total_s: total,
        }
    }

    /// CPU seconds the machine's cores were busy since `earlier`, and the fraction of their
    /// time that is.
    pub(crate) fn since(&self, earlier: &Machine) -> (f64, f64) {
        let busy = self.busy_s - earlier.busy_s;
        let total = self.total_s - earlier.total_s;
        (busy, busy / total.max(1e-9))
    }
}
