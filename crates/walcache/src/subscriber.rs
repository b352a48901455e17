//! The invalidation subscriber: one plain pub/sub connection per process, on its own thread and
//! runtime, so a busy application cannot delay it.
//!
//! Liveness (DESIGN contract 4): the stream is *live* only after
//! SUBSCRIBE is acknowledged → every generation is bumped and L1 flushed → the first in-sequence
//! heartbeat arrives. A gap, a reconnect, an epoch change, an undecodable message, or heartbeat
//! silence ends liveness and flushes L1 again; a gap, an epoch change or an undecodable message
//! also forgets the namespaces' generations (a lost message may have been a flush). Silence is
//! followed by a PING: unanswered within `heartbeat_timeout`, the connection is replaced. The connection is a plain `PubSub` whose stream
//! ends on disconnect: an auto-resubscribing manager would hide exactly the reconnect that must
//! flush L1.
//!
//! Heartbeats with details (wire v1.1) also say which namespaces the daemon certifies and its
//! full-refresh interval, which caps L1 entries of those; v1.2 lists the namespaces it serves
//! but cannot keep fresh (out of service: every tier is bypassed). A namespace in neither list
//! is one no rule covers: it works as before, with a warning.
//!
//! Sequencing: data messages carry `seq` 1, 2, 3, … per daemon epoch; heartbeats carry the last
//! data sequence number (`seq` and `last_data_seq` both), so a lost final message shows up at the
//! next heartbeat. Messages on the application channel are unsequenced (`seq` 0).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::time::Instant;
use walcache_protocol::{Body, Message};

use crate::auth::Rejected;
use crate::error::Error;
use crate::handle::{Invalidation, Shared};
use crate::metrics as m;

/// Why the whole L1 was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushReason {
    Subscribed,
    Reconnect,
    Gap,
    EpochChange,
    HeartbeatSilence,
    Undecodable,
}

impl FlushReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            FlushReason::Subscribed => "subscribed",
            FlushReason::Reconnect => "reconnect",
            FlushReason::Gap => "gap",
            FlushReason::EpochChange => "epoch_change",
            FlushReason::HeartbeatSilence => "heartbeat_silence",
            FlushReason::Undecodable => "undecodable",
        }
    }
}

const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Start the subscriber thread. `ready` fires once the first subscription is established and
/// L1 flushed (or the first attempt failed), so caches built after `build()` returns are not
/// flushed by it.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    client: Option<redis::Client>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    connect_timeout: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(crate::ErrorKind::Config)
                .with_message("could not start the subscriber runtime")
                .with_source(e)
        })?;
    std::thread::Builder::new()
        .name("walcache-subscriber".to_owned())
        .spawn(move || {
            runtime.block_on(run(shared, client, shutdown, connect_timeout, ready));
        })
        .map_err(|e| {
            Error::new(crate::ErrorKind::Config)
                .with_message("could not start the subscriber thread")
                .with_source(e)
        })?;
    Ok(())
}

async fn run(
    shared: Arc<Shared>,
    client: Option<redis::Client>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    connect_timeout: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let work = async {
        match client {
            Some(client) => subscribe_forever(&shared, &client, connect_timeout, ready).await,
            None => {
                drop(ready);
                std::future::pending::<()>().await;
            }
        }
    };
    let metrics = async {
        let mut tick = tokio::time::interval(METRICS_INTERVAL);
        loop {
            tick.tick().await;
            shared.publish_metrics();
        }
    };
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => {}
        () = work => {}
        () = metrics => {}
    }
    shared.publish_metrics();
}

/// Capped exponential backoff with full jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

async fn subscribe_forever(
    shared: &Shared,
    client: &redis::Client,
    connect_timeout: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Backoff {
        min: shared.config.reconnect_min,
        max: shared.config.reconnect_max,
        attempt: 0,
    };
    let mut first = true;
    loop {
        if !first {
            metrics::counter!(m::SUBSCRIBER_RECONNECTS_TOTAL).increment(1);
            tokio::time::sleep(backoff.next()).await;
        }
        first = false;
        let ended = session(shared, client, connect_timeout, &mut backoff, &mut ready).await;
        ready = None;
        match ended {
            Ok(()) => tracing::warn!("invalidation subscription ended; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "invalidation subscription failed; reconnecting"),
        }
        if matches!(shared.config.invalidation, Invalidation::Stream { .. }) {
            shared.set_live(false);
        }
        // Whatever arrived while we were away is unknown.
        shared.flush_l1(FlushReason::Reconnect);
    }
}

/// What the subscriber knows of the daemon's sequence.
#[derive(Debug, Default)]
struct Tracker {
    epoch: Option<u64>,
    last_seq: Option<u64>,
    /// The send time of the last message accepted from `epoch` (µs; signed streams only).
    last_sent_at: Option<i64>,
}

impl Tracker {
    /// Whether `message` was sent after the last message accepted from its epoch (or is the
    /// first of a new one).
    fn sent_after_last(&self, message: &Message) -> bool {
        self.epoch != Some(message.epoch)
            || self
                .last_sent_at
                .is_none_or(|last| message.sent_at_micros > last)
    }

    /// `message` was accepted: its send time is the one to beat in its epoch.
    fn accepted(&mut self, message: &Message) {
        if self.epoch != Some(message.epoch) {
            self.last_sent_at = None;
        }
        self.last_sent_at = Some(message.sent_at_micros);
    }
}

/// One connection's life: subscribe, resync, then apply messages until it ends.
async fn session(
    shared: &Shared,
    client: &redis::Client,
    connect_timeout: Duration,
    backoff: &mut Backoff,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), Error> {
    let naming = &shared.naming;
    let stream_channel = naming.invalidation_channel();
    let app_channel = naming.app_channel();
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&stream_channel).await?;
        pubsub.subscribe(&app_channel).await?;
        let cmd = client.get_multiplexed_async_connection().await?;
        Ok::<_, redis::RedisError>((pubsub, cmd))
    };
    let (pubsub, mut cmd) = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| Error::timeout().with_message("subscribing to the invalidation channels"))?
        .map_err(Error::redis)?;
    // SUBSCRIBE is acknowledged: from here on every invalidation reaches us. Everything before
    // it is unknown, so drop every fill in flight and all of L1, and relearn the generations.
    shared.flush_l1(FlushReason::Subscribed);
    let all = shared.all_namespaces();
    let names: Vec<&str> = all.iter().map(|ns| ns.name.as_str()).collect();
    let generations =
        tokio::time::timeout(connect_timeout, read_generations(shared, &mut cmd, &names))
            .await
            .map_err(|_| Error::timeout())?
            .map_err(Error::redis)?;
    for (ns, g) in all.iter().zip(generations) {
        ns.generations.set_l2_generation(g.unwrap_or(0));
    }
    backoff.reset();
    tracing::info!("subscribed to the invalidation channels");
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }

    let heartbeat_timeout = match shared.config.invalidation {
        Invalidation::Stream { heartbeat_timeout } => Some(heartbeat_timeout),
        Invalidation::TtlOnly => None,
    };
    let mut tracker = Tracker::default();
    let mut last_heartbeat = Instant::now();
    let (mut sink, mut messages) = pubsub.split();
    let mut app_flushes = AppFlushes::default();
    loop {
        let silence_deadline = heartbeat_timeout.map(|t| last_heartbeat + t);
        let event = tokio::select! {
            msg = messages.next() => Event::Message(msg),
            () = sleep_until(silence_deadline) => Event::Silence,
            () = sleep_until(app_flushes.next_due()) => Event::AppFlushesDue,
        };
        let msg = match event {
            Event::Message(Some(msg)) => msg,
            Event::Message(None) => return Ok(()), // disconnected
            Event::AppFlushesDue => {
                let due = app_flushes.take_due(Instant::now());
                flush_from_app(shared, &due);
                relearn_generations(shared, &mut cmd, &due, connect_timeout).await;
                continue;
            }
            Event::Silence => {
                // Heartbeat silence: the daemon is dead, lagging or cut off, or this socket is.
                if shared.live.load(std::sync::atomic::Ordering::Acquire) {
                    tracing::warn!(
                        timeout = ?heartbeat_timeout,
                        "no heartbeat from the daemon: L1 flushed and bypassed"
                    );
                    shared.set_live(false);
                    shared.flush_l1(FlushReason::HeartbeatSilence);
                }
                // A half-open socket (the peer gone without a FIN or RST, a middlebox dropping
                // the flow) reads as silence too, and the kernel may take many minutes to
                // notice, or never, while something still acknowledges our packets. Ask Redis
                // itself: an answered PING means the daemon is quiet and the subscription fine
                // (stay subscribed, live again at the next in-sequence heartbeat); an
                // unanswered one ends the session, and the reconnect resubscribes and resyncs.
                let deadline = heartbeat_timeout.unwrap_or(connect_timeout);
                match tokio::time::timeout(deadline, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(Error::redis(e).with_message("PING after silence")),
                    Err(_) => {
                        return Err(Error::timeout()
                            .with_message("no reply to a PING after heartbeat silence"))
                    }
                }
                last_heartbeat = Instant::now();
                continue;
            }
        };
        let sequenced = msg.get_channel_name() == stream_channel;
        let channel = if sequenced {
            &stream_channel
        } else {
            &app_channel
        };
        let opened = shared
            .auth
            .open(msg.get_payload_bytes(), channel)
            .and_then(|m| {
                // A replay of a message already accepted (a heartbeat recorded and sent again
                // after the daemon died) is not sent after the last one of its epoch.
                if sequenced && shared.auth.enforcing() && !tracker.sent_after_last(&m) {
                    Err(Rejected::Replayed)
                } else {
                    Ok(m)
                }
            });
        match opened {
            Ok(message) if sequenced => {
                tracker.accepted(&message);
                if let Some(ns_flushes) =
                    on_stream_message(shared, &mut tracker, &message, heartbeat_timeout)
                {
                    relearn_generations(shared, &mut cmd, &ns_flushes, connect_timeout).await;
                }
                if message.is_heartbeat() {
                    last_heartbeat = Instant::now();
                }
            }
            Ok(message) => {
                if message.epoch == shared.process_epoch {
                    continue; // our own
                }
                if let Body::Flush(namespaces) = &message.body {
                    // Coalesced, never dropped: one flush per namespace per window now, the
                    // rest at its end.
                    let now = app_flushes.admit(namespaces, Instant::now());
                    metrics::counter!(m::INVALIDATIONS_RECEIVED_TOTAL, "channel" => "app", "kind" => "flush")
                        .increment(1);
                    flush_from_app(shared, &now);
                    relearn_generations(shared, &mut cmd, &now, connect_timeout).await;
                } else if let Some(flushed) = apply(shared, &message, "app") {
                    relearn_generations(shared, &mut cmd, &flushed, connect_timeout).await;
                }
            }
            // The application channel is every service's to publish on: what does not open
            // there is dropped and counted, never a flush or a loss of liveness.
            Err(why) if !sequenced => {
                crate::auth::count_rejected("app", &why);
                shared
                    .hooks
                    .record(crate::hooks::HookEvent::MessageRejected("app", why.label()));
            }
            // With signing keys, what does not verify on the daemon's channel is not the
            // daemon's: ignored whole (a real message lost on the way shows as a gap at the
            // next heartbeat).
            Err(why) if shared.auth.enforcing() => {
                crate::auth::count_rejected("stream", &why);
                shared
                    .hooks
                    .record(crate::hooks::HookEvent::MessageRejected(
                        "stream",
                        why.label(),
                    ));
            }
            Err(e) => {
                // Unsigned: anyone may have sent it, and it may have been the daemon's.
                metrics::counter!(m::UNDECODABLE_MESSAGES_TOTAL).increment(1);
                crate::auth::count_rejected("stream", &e);
                shared
                    .hooks
                    .record(crate::hooks::HookEvent::UndecodableMessage);
                tracing::warn!(error = ?e, "undecodable invalidation message");
                if heartbeat_timeout.is_some() {
                    shared.set_live(false);
                    // It may have carried a sequence number: re-anchor at the next heartbeat.
                    tracker.last_seq = None;
                }
                // It may have been a namespace flush.
                let all = shared.lose_track(FlushReason::Undecodable);
                relearn_generations(shared, &mut cmd, &all, connect_timeout).await;
            }
        }
    }
}

/// What woke the subscriber.
enum Event {
    Message(Option<redis::Msg>),
    Silence,
    AppFlushesDue,
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How long an applied application-channel flush holds back the next one of its namespace.
const APP_FLUSH_WINDOW: Duration = Duration::from_millis(100);

/// Application-channel flushes: at most one applied per namespace per [`APP_FLUSH_WINDOW`];
/// a request inside a window is applied at the window's end (never dropped), so a service
/// calling `invalidate_all` in a loop cannot keep every process's L1 empty.
#[derive(Debug, Default)]
struct AppFlushes {
    /// By namespace: when a flush was last applied, and whether one waits for the window's end.
    windows: std::collections::HashMap<String, (Instant, bool)>,
}

impl AppFlushes {
    /// The namespaces of `requested` to flush now; the others wait for their window's end.
    fn admit(&mut self, requested: &[String], now: Instant) -> Vec<String> {
        let mut flush_now = Vec::new();
        for ns in requested {
            match self.windows.get_mut(ns) {
                Some((applied, pending)) if now < *applied + APP_FLUSH_WINDOW => {
                    if !*pending {
                        metrics::counter!(m::APP_FLUSHES_COALESCED_TOTAL, "namespace" => ns.clone())
                            .increment(1);
                    }
                    *pending = true;
                }
                _ => {
                    self.windows.insert(ns.clone(), (now, false));
                    flush_now.push(ns.clone());
                }
            }
        }
        self.windows
            .retain(|_, (applied, pending)| *pending || now < *applied + APP_FLUSH_WINDOW);
        flush_now
    }

    /// When the next held-back flush is due.
    fn next_due(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|(_, pending)| *pending)
            .map(|(applied, _)| *applied + APP_FLUSH_WINDOW)
            .min()
    }

    /// The held-back flushes due at `now`; each opens a new window.
    fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (ns, (applied, pending)) in &mut self.windows {
            if *pending && now >= *applied + APP_FLUSH_WINDOW {
                *applied = now;
                *pending = false;
                due.push(ns.clone());
            }
        }
        due
    }
}

/// Apply application-channel flushes of `namespaces` (those this process has).
fn flush_from_app(shared: &Shared, namespaces: &[String]) {
    for name in namespaces {
        if let Some(ns) = shared.namespace(name) {
            shared.apply_flush(&ns, None);
            shared.hooks.record(crate::hooks::HookEvent::AppFlush);
        }
    }
}

/// Apply a message from the daemon's channel and track sequence and liveness. Returns the
/// namespaces whose generation must be relearned: the flushed ones, or all of them when
/// messages may have been lost (a lost message may have been a flush).
fn on_stream_message(
    shared: &Shared,
    tracker: &mut Tracker,
    message: &Message,
    heartbeat_timeout: Option<Duration>,
) -> Option<Vec<String>> {
    let tracking = heartbeat_timeout.is_some();
    let mut lost: Option<Vec<String>> = None;
    if tracker.epoch.is_some_and(|e| e != message.epoch) {
        tracing::warn!("daemon epoch changed: L1 flushed");
        if tracking {
            shared.set_live(false);
        }
        lost = Some(shared.lose_track(FlushReason::EpochChange));
        tracker.last_seq = None;
    }
    tracker.epoch = Some(message.epoch);
    if let Body::Heartbeat {
        last_data_seq,
        details,
    } = &message.body
    {
        let last_data_seq = *last_data_seq;
        metrics::counter!(m::INVALIDATIONS_RECEIVED_TOTAL, "channel" => "stream", "kind" => "heartbeat")
            .increment(1);
        // What it says of the namespaces (certified, out of service, the refresh interval
        // capping L1) holds whatever its sequence says, and is in force before it can make
        // the stream live.
        shared.apply_heartbeat(details.as_ref());
        match tracker.last_seq {
            Some(s) if s != last_data_seq => {
                tracing::warn!(
                    expected = s,
                    got = last_data_seq,
                    "invalidation gap at heartbeat"
                );
                if tracking {
                    shared.set_live(false);
                }
                lost = Some(shared.lose_track(FlushReason::Gap));
                tracker.last_seq = Some(last_data_seq);
            }
            _ => {
                tracker.last_seq = Some(last_data_seq);
                if tracking {
                    shared.set_live(true);
                }
            }
        }
        return lost;
    }
    let flushed = apply(shared, message, "stream");
    match tracker.last_seq {
        Some(s) if message.seq != s.wrapping_add(1) => {
            tracing::warn!(
                expected = s.wrapping_add(1),
                got = message.seq,
                "invalidation gap"
            );
            if tracking {
                shared.set_live(false);
            }
            lost = Some(shared.lose_track(FlushReason::Gap));
            tracker.last_seq = Some(message.seq);
        }
        Some(_) => tracker.last_seq = Some(message.seq),
        None => {}
    }
    lost.or(flushed)
}

/// Apply one invalidation to L1. Returns flushed namespaces, whose generation must be relearned.
fn apply(shared: &Shared, message: &Message, channel: &'static str) -> Option<Vec<String>> {
    let (kind, flushed) = match &message.body {
        Body::Keys(keys) => {
            // Group by namespace; messages are small, a linear pass is fine.
            let mut i = 0;
            while i < keys.len() {
                let ns_name = &keys[i].namespace;
                let mut j = i;
                let mut batch: Vec<&str> = Vec::new();
                while j < keys.len() && &keys[j].namespace == ns_name {
                    batch.push(&keys[j].key);
                    j += 1;
                }
                if let Some(ns) = shared.namespace(ns_name) {
                    shared.apply_keys(&ns, &batch);
                }
                i = j;
            }
            ("keys", None)
        }
        Body::Tags(tags) => {
            shared.apply_tags(tags);
            ("tags", None)
        }
        Body::Flush(namespaces) => {
            for name in namespaces {
                if let Some(ns) = shared.namespace(name) {
                    shared.apply_flush(&ns, None);
                }
            }
            ("flush", Some(namespaces.clone()))
        }
        Body::Heartbeat { .. } => ("heartbeat", None),
        _ => {
            // A body kind this version does not know: we cannot tell what it invalidates (it
            // may be a flush).
            ("unknown", Some(shared.lose_track(FlushReason::Undecodable)))
        }
    };
    metrics::counter!(m::INVALIDATIONS_RECEIVED_TOTAL, "channel" => channel, "kind" => kind)
        .increment(1);
    flushed
}

async fn relearn_generations(
    shared: &Shared,
    cmd: &mut redis::aio::MultiplexedConnection,
    namespaces: &[String],
    timeout: Duration,
) {
    let known: Vec<_> = namespaces
        .iter()
        .filter_map(|name| shared.namespace(name))
        .collect();
    // Taken before the GETs: if another flush lands meanwhile, a reply may predate it.
    let seen: Vec<_> = known
        .iter()
        .map(|ns| ns.generations.flushes(&shared.global_generation))
        .collect();
    let names: Vec<&str> = known.iter().map(|ns| ns.name.as_str()).collect();
    match tokio::time::timeout(timeout, read_generations(shared, cmd, &names)).await {
        // Readers use the generation-reading script until these land.
        Ok(Ok(generations)) => {
            for ((ns, seen), g) in known.iter().zip(&seen).zip(generations) {
                ns.generations
                    .learn_l2_generation(&shared.global_generation, seen, g.unwrap_or(0));
            }
        }
        _ => tracing::warn!("could not read the namespace generations after a flush"),
    }
}

/// The generations of `namespaces` in Redis, in one round trip (a pipeline of `GET`s: the
/// keys sit in each namespace's own hash slot, so not one `MGET`). 500 namespaces read one
/// after another took 30–100 ms on reconnect, gap and epoch change.
async fn read_generations(
    shared: &Shared,
    cmd: &mut redis::aio::MultiplexedConnection,
    namespaces: &[&str],
) -> redis::RedisResult<Vec<Option<u64>>> {
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for name in namespaces {
        pipe.cmd("GET").arg(shared.naming.generation_key(name));
    }
    pipe.query_async(cmd).await
}
