//! Reader 0 runs in a child process: this binary's hidden `__reader` subcommand. It streams
//! one line per read over stdout (`r KEY VERSION|- T_START T_END`, `e MESSAGE` for an error),
//! after `ready` once its stream is live, and `done` when the parent closes its stdin.

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use walcache::Freshness;
use walcache_audit::{Read, Zipf};

use crate::workload::{read_loop, Db, Reader, ReaderConfig};
use crate::BoxError;

const SETUP_DEADLINE: Duration = Duration::from_secs(30);

/// The hidden `__reader` subcommand's arguments.
#[derive(Parser, Debug)]
pub(crate) struct ChildArgs {
    #[arg(long)]
    redis_url: String,
    #[arg(long)]
    pg: String,
    #[arg(long)]
    rows: usize,
    #[arg(long)]
    zipf: f64,
    #[arg(long)]
    read_rate: f64,
    #[arg(long)]
    heartbeat_timeout_ms: u64,
    #[arg(long)]
    strict: bool,
    #[arg(long)]
    reader: u32,
}

/// What a reader reports back.
#[derive(Default)]
pub(crate) struct ReaderResult {
    pub(crate) reads: Vec<Read>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl ReaderResult {
    /// Record one read or error.
    pub(crate) fn record(&mut self, r: Result<Read, String>) {
        match r {
            Ok(r) => self.reads.push(r),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The child's side.
pub(crate) async fn child_main(args: ChildArgs) -> Result<(), BoxError> {
    let db = Db::connect(&args.pg).await?;
    let reader = Reader::new(&ReaderConfig {
        redis_url: args.redis_url.clone(),
        heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
        freshness: if args.strict {
            Freshness::Strict
        } else {
            Freshness::Available
        },
    })
    .await?;
    reader.wait_live(SETUP_DEADLINE).await?;
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;

    // Stop when the parent closes our stdin.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_eof = Arc::clone(&stop);
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        while matches!(stdin.read_line(&mut line).await, Ok(n) if n > 0) {
            line.clear();
        }
        stop_on_eof.store(true, Ordering::Relaxed);
    });

    // Lines are buffered here and written by a separate task, so a slow pipe never sits in
    // the middle of a read.
    let buffer = Arc::new(Mutex::new(String::new()));
    let writer_buffer = Arc::clone(&buffer);
    let writer_stop = Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        loop {
            let done = writer_stop.load(Ordering::Relaxed);
            let chunk = match writer_buffer.lock() {
                Ok(mut b) => std::mem::take(&mut *b),
                Err(_) => return Err(std::io::Error::other("buffer lock poisoned")),
            };
            if !chunk.is_empty() {
                out.write_all(chunk.as_bytes()).await?;
                out.flush().await?;
            }
            if done {
                return Ok::<_, std::io::Error>(out);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let sink_buffer = Arc::clone(&buffer);
    read_loop(
        reader,
        db,
        Zipf::new(args.rows, args.zipf),
        args.read_rate,
        args.reader,
        Arc::clone(&stop),
        move |r| {
            let Ok(mut b) = sink_buffer.lock() else {
                return;
            };
            match r {
                Ok(r) => {
                    let _ = write!(b, "r {} ", r.id);
                    match r.version {
                        Some(v) => {
                            let _ = write!(b, "{v}");
                        }
                        None => b.push('-'),
                    }
                    let _ = writeln!(b, " {} {}", r.t_ns, r.t_end_ns);
                }
                Err(e) => {
                    b.push_str("e ");
                    b.push_str(&e.replace('\n', " "));
                    b.push('\n');
                }
            }
        },
    )
    .await;
    let mut out = writer.await??;
    out.write_all(b"done\n").await?;
    out.flush().await?;
    Ok(())
}

/// The parent's side of a child reader.
pub(crate) struct ChildReader {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    collector: tokio::task::JoinHandle<Result<ReaderResult, BoxError>>,
}

/// What the child is started with.
pub(crate) struct ChildSpec<'a> {
    pub(crate) redis_url: &'a str,
    pub(crate) pg_conn: &'a str,
    pub(crate) rows: usize,
    pub(crate) zipf: f64,
    pub(crate) read_rate: f64,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) strict: bool,
    pub(crate) reader: u32,
}

fn parse_line(line: &str, reader: u32) -> Option<Read> {
    let mut f = line.strip_prefix("r ")?.split(' ');
    let id = f.next()?.parse().ok()?;
    let version = match f.next()? {
        "-" => None,
        v => Some(v.parse().ok()?),
    };
    let t_ns = f.next()?.parse().ok()?;
    let t_end_ns = f.next()?.parse().ok()?;
    f.next().is_none().then_some(Read {
        id,
        version,
        t_ns,
        t_end_ns,
        reader,
    })
}

impl ChildReader {
    /// Start the child and wait until its stream is live.
    pub(crate) async fn spawn(spec: ChildSpec<'_>) -> Result<ChildReader, BoxError> {
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("__reader")
            .args(["--redis-url", spec.redis_url, "--pg", spec.pg_conn])
            .args(["--rows", &spec.rows.to_string()])
            .args(["--zipf", &spec.zipf.to_string()])
            .args(["--read-rate", &spec.read_rate.to_string()])
            .args([
                "--heartbeat-timeout-ms",
                &spec.heartbeat_timeout.as_millis().to_string(),
            ])
            .args(["--reader", &spec.reader.to_string()]);
        if spec.strict {
            cmd.arg("--strict");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reader = spec.reader;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready_tx = Some(ready_tx);
            let mut result = ReaderResult::default();
            let mut done = false;
            while let Some(line) = lines.next_line().await? {
                if line == "ready" {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                } else if line == "done" {
                    done = true;
                } else if let Some(msg) = line.strip_prefix("e ") {
                    result.record(Err(msg.to_owned()));
                } else {
                    let read = parse_line(&line, reader)
                        .ok_or_else(|| format!("bad line from the reader: {line:?}"))?;
                    result.reads.push(read);
                }
            }
            if !done {
                return Err("the child reader exited without finishing".into());
            }
            Ok(result)
        });
        tokio::time::timeout(SETUP_DEADLINE, ready_rx)
            .await
            .map_err(|_| "the child reader did not become live in time")?
            .map_err(|_| "the child reader exited before becoming live")?;
        Ok(ChildReader {
            child,
            stdin,
            collector,
        })
    }

    /// Tell it to stop, and collect its reads.
    pub(crate) async fn finish(mut self) -> Result<ReaderResult, BoxError> {
        drop(self.stdin.take());
        let r = tokio::time::timeout(SETUP_DEADLINE, self.collector)
            .await
            .map_err(|_| "the child reader did not finish")???;
        self.child.wait().await?;
        Ok(r)
    }
}
