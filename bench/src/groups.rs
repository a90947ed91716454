//! Group fan-out (issue 18): what one message to a group costs.
//!
//! 1. One group of `--group-size` members (default 1,000), every member online on a WebSocket.
//!    One member sends `--group-messages` messages over HTTP, one at a time; for each, the time
//!    from the send to the *last* member's push (and to the first), p50/p99/max.
//! 2. One group of `--busy-group-size` members (default 50), all online: every member sends over
//!    its WebSocket as fast as the server acknowledges, `--concurrency` sends in flight in all,
//!    for `--seconds`: messages per second stored, pushes per second delivered, and the send →
//!    push latency of every delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

use crate::{Args, Server, User, create_users, open_socket};

/// How long the bench waits for every member's push of one message before giving up on it.
const ALL_PUSHED_WITHIN: Duration = Duration::from_secs(30);

/// What every member's reader reports: per message number, how many pushes came and when.
struct Arrivals {
    epoch: Instant,
    count: Vec<AtomicU64>,
    first_us: Vec<AtomicU64>,
    last_us: Vec<AtomicU64>,
    /// Every (send → push) latency, for the throughput run.
    latencies: std::sync::Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    changed: Notify,
}

impl Arrivals {
    fn new(messages: usize) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            count: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            first_us: (0..messages).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last_us: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            latencies: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ),
            delivered: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A push whose content is `group <n> <sent at, µs>`.
    fn record(&self, content: &str) {
        let mut parts = content.split(' ');
        let (Some("group"), Some(n), Some(sent)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(sent) = sent.parse::<u64>() else {
            return;
        };
        let now = self.now_us();
        if let Some(n) = n.parse::<usize>().ok().filter(|n| *n < self.count.len()) {
            let count = &self.count[n];
            count.fetch_add(1, Ordering::SeqCst);
            self.first_us[n].fetch_min(now, Ordering::SeqCst);
            self.last_us[n].fetch_max(now, Ordering::SeqCst);
        }
        if let Ok(mut h) = self.latencies.lock() {
            let _ = h.record(now.saturating_sub(sent).max(1));
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// A member's socket: frames out through `outgoing`, `sent` acks back through `acks`.
struct Member {
    outgoing: mpsc::UnboundedSender<Message>,
    /// One per answered send: true for `sent`, false for `error`.
    acks: Mutex<mpsc::UnboundedReceiver<bool>>,
}

async fn connect(server: &Server, user: &User, arrivals: Arc<Arrivals>) -> anyhow::Result<Member> {
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let outgoing = open_socket(
        server.ws_url(&user.token),
        move |frame| match frame["type"].as_str() {
            Some("message") => {
                arrivals.record(frame["message"]["content"].as_str().unwrap_or_default())
            }
            Some(answer @ ("sent" | "error")) => {
                let _ = ack_tx.send(answer == "sent");
            }
            _ => {}
        },
    )
    .await?;
    Ok(Member {
        outgoing,
        acks: Mutex::new(acks),
    })
}

async fn create_group(server: &Server, owner: &User, others: &[User]) -> anyhow::Result<String> {
    let members: Vec<&str> = others.iter().map(|u| u.id.as_str()).collect();
    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/conversations", server.url))
        .bearer_auth(&owner.token)
        .json(&json!({"title": "bench", "members": members}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(created["id"].as_str().context("no group id")?.to_owned())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Both group runs, on a server of their own.
pub async fn fan_out(args: &Args) -> anyhow::Result<()> {
    let server = Server::start_or_target(args).await?;
    let size = args.group_size.max(2);
    println!("palaver-bench: registering {size} users for the group runs");
    let users = create_users(&server, size).await?;

    // 1. One message to a big group, one at a time.
    let messages = args.group_messages.max(1);
    let arrivals = Arrivals::new(messages);
    let group = create_group(&server, &users[0], &users[1..]).await?;
    let mut members = Vec::with_capacity(size);
    for user in &users {
        members.push(connect(&server, user, arrivals.clone()).await?);
    }
    let http = reqwest::Client::new();
    let url = format!("{}/api/conversations/{group}/messages", server.url);
    let (mut to_last, mut to_first) = (
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    );
    let mut incomplete = 0;
    for n in 0..messages {
        let sent = arrivals.now_us();
        http.post(&url)
            .bearer_auth(&users[0].token)
            .json(&json!({"content": format!("group {n} {sent}")}))
            .send()
            .await?
            .error_for_status()?;
        let deadline = tokio::time::Instant::now() + ALL_PUSHED_WITHIN;
        while arrivals.count[n].load(Ordering::SeqCst) < size as u64 {
            let changed = arrivals.changed.notified();
            if arrivals.count[n].load(Ordering::SeqCst) >= size as u64 {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        if arrivals.count[n].load(Ordering::SeqCst) < size as u64 {
            incomplete += 1;
            continue;
        }
        to_last.record(
            arrivals.last_us[n]
                .load(Ordering::SeqCst)
                .saturating_sub(sent),
        )?;
        to_first.record(
            arrivals.first_us[n]
                .load(Ordering::SeqCst)
                .saturating_sub(sent),
        )?;
    }
    println!();
    println!(
        "group of {size}, all online on /ws: one message at a time over HTTP ({messages} messages{})",
        if incomplete > 0 {
            format!(", {incomplete} not pushed to everyone within 30 s")
        } else {
            String::new()
        }
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8}",
        "send -> push", "p50 ms", "p99 ms", "max ms"
    );
    for (label, h) in [
        ("to the first member", &to_first),
        ("to the last member", &to_last),
    ] {
        println!(
            "{:<34} {:>8.2} {:>8.2} {:>8.2}",
            label,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
    }
    drop(members);

    // 2. A busy group of 50: everyone sends.
    let busy = args.busy_group_size.clamp(2, size);
    let arrivals = Arrivals::new(0);
    let group = create_group(&server, &users[0], &users[1..busy]).await?;
    let mut members = Vec::with_capacity(busy);
    for user in &users[..busy] {
        members.push(Arc::new(connect(&server, user, arrivals.clone()).await?));
    }
    let stop_at = Instant::now() + Duration::from_secs(args.seconds);
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..args.concurrency.max(1))
        .map(|i| {
            let member = members[i % busy].clone();
            let (group, arrivals) = (group.clone(), arrivals.clone());
            let (acked, failed) = (acked.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let frame = json!({
                        "type": "send",
                        "conversation": group,
                        "content": format!("group x {}", arrivals.now_us()),
                    });
                    // Acks of one socket come back in order; one lock per socket keeps each
                    // sender's ack its own.
                    let mut acks = member.acks.lock().await;
                    if member
                        .outgoing
                        .send(Message::text(frame.to_string()))
                        .is_err()
                    {
                        break;
                    }
                    match acks.recv().await {
                        Some(true) => acked.fetch_add(1, Ordering::SeqCst),
                        Some(false) => failed.fetch_add(1, Ordering::SeqCst),
                        None => break,
                    };
                }
            })
        })
        .collect();
    for sender in senders {
        let _ = sender.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stored = acked.load(Ordering::SeqCst);
    let expected = stored * busy as u64;
    let deadline = tokio::time::Instant::now() + ALL_PUSHED_WITHIN;
    while arrivals.delivered.load(Ordering::SeqCst) < expected {
        let changed = arrivals.changed.notified();
        if arrivals.delivered.load(Ordering::SeqCst) >= expected
            || tokio::time::timeout_at(deadline, changed).await.is_err()
        {
            break;
        }
    }
    let delivered = arrivals.delivered.load(Ordering::SeqCst);
    let latencies = arrivals
        .latencies
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    println!();
    println!(
        "group of {busy}, everyone sending over /ws ({} sends in flight, {} s)",
        args.concurrency, args.seconds
    );
    println!(
        "{:>10} {:>12} {:>10} {:>8} {:>14} {:>8} {:>8} {:>8}",
        "msg/s", "pushes/s", "stored", "failed", "pushed", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:>10.0} {:>12.0} {:>10} {:>8} {:>14} {:>8.2} {:>8.2} {:>8.2}",
        stored as f64 / elapsed,
        delivered as f64 / elapsed,
        stored,
        failed.load(Ordering::SeqCst),
        format!("{delivered}/{expected}"),
        ms(latencies.value_at_quantile(0.5)),
        ms(latencies.value_at_quantile(0.99)),
        ms(latencies.max())
    );
    println!();
    drop(members);
    server.stop().await;
    Ok(())
}
