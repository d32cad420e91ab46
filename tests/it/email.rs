//! The email channel end to end against real mail servers (see
//! `mail_support`): mail sent over SMTP to Exim lands in Dovecot, the
//! gateway's IMAP watcher queues it, a worker with stand-in agents answers,
//! and the reply goes out through Exim into the sender's Dovecot mailbox.

use std::time::Duration;

use mail_parser::MessageParser;
use switchboard::app::Role;
use switchboard::config::{MailboxSettings, Secret, Settings, TlsMode};
use switchboard::domain::ConversationId;
use switchboard::queue::Queue;

use crate::helpers::*;
use crate::mail_support::*;
use crate::pool_support::*;
use crate::queue_support::*;

const ANN: &str = "ann@example.test";
const MAILBOX: &str = "support";
const PASSWORD_ENV: &str = "SUPPORT_IMAP_PASSWORD";

/// Mail servers, Redis, and (when started) the gateway and a worker.
struct EmailWorld {
    servers: MailServers,
    redis: TestRedis,
    queue: Queue,
    settings: Settings,
    app: Option<TestApp>,
    worker: Option<TestWorker>,
    dir: tempfile::TempDir,
}

fn mailbox(servers: &MailServers) -> MailboxSettings {
    MailboxSettings {
        name: MAILBOX.into(),
        imap_host: "127.0.0.1".into(),
        imap_port: servers.imap_port,
        imap_tls: TlsMode::Plain,
        imap_user: BOT.into(),
        imap_password_env: PASSWORD_ENV.into(),
        folder: "INBOX".into(),
        move_to: None,
        smtp_host: "127.0.0.1".into(),
        smtp_port: servers.smtp_port,
        smtp_tls: TlsMode::Plain,
        smtp_user: None,
        smtp_password_env: None,
        from_address: BOT.into(),
        from_name: Some("Support bot".into()),
        allow: vec!["example.test".into()],
        replies_per_thread_per_hour: 10,
        max_attachment_bytes: 1024 * 1024,
        max_message_bytes: 25 * 1024 * 1024,
        idle_renew: Duration::from_secs(600),
        poll_interval: Duration::from_secs(30),
    }
}

impl EmailWorld {
    /// Servers and Redis; the gateway and worker only when asked.
    async fn start(test: &str, gateway: bool, worker: bool) -> Self {
        let servers = MailServers::start(&[
            ANN,
            "noreply@example.test",
            "lists@example.test",
            "mallory@evil.test",
        ]);
        let redis = TestRedis::start();
        let (queue, prefix) = test_queue(&redis, test, pool_queue_settings());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(&redis, test);
        settings.redis.key_prefix = prefix;
        settings.queue = pool_queue_settings();
        settings.email.attachments_dir = dir.path().join("attachments");
        settings.email.mailboxes = vec![mailbox(&servers)];
        settings
            .secrets
            .mail_passwords
            .insert(PASSWORD_ENV.into(), Secret::new(BOT_PASSWORD));
        let mut world = Self {
            servers,
            redis,
            queue,
            settings,
            app: None,
            worker: None,
            dir,
        };
        if gateway {
            world.start_gateway().await;
        }
        if worker {
            world.start_worker().await;
        }
        world
    }

    async fn start_gateway(&mut self) {
        self.app = Some(spawn_app(self.settings.clone(), Role::Gateway).await);
        self.watching().await;
    }

    async fn start_worker(&mut self) {
        let slots = self.dir.path().join("slots");
        let worker =
            TestWorker::start(&self.queue, "email", pool(2, 1), agent_settings(&slots)).await;
        self.worker = Some(worker);
    }

    /// Wait until the watcher has caught up once (its progress is stored).
    async fn watching(&self) {
        let key = format!("{}:{{s0}}:email:{MAILBOX}", self.settings.redis.key_prefix);
        wait_until(Duration::from_secs(30), "the mailbox watcher", || {
            let mut conn = self.redis.client();
            let key = key.clone();
            async move {
                let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap_or(0);
                (exists == 1).then_some(())
            }
        })
        .await;
    }

    fn send(&self, from: &str, raw: &[u8]) -> u64 {
        self.servers.send(from, BOT, raw)
    }

    /// Replies from the bot in `user`'s inbox.
    fn replies(&self, user: &str) -> Vec<Vec<u8>> {
        self.servers
            .inbox(user)
            .into_iter()
            .map(|(_, raw)| raw)
            .filter(|raw| header(raw, "Auto-Submitted") == "auto-replied")
            .collect()
    }

    /// Replies to the mail with `message_id`.
    fn replies_to(&self, user: &str, message_id: &str) -> Vec<Vec<u8>> {
        let wanted = format!("<{message_id}>");
        self.replies(user)
            .into_iter()
            .filter(|raw| header(raw, "In-Reply-To") == wanted)
            .collect()
    }

    /// Wait for the reply to `message_id` in `user`'s inbox.
    async fn reply_to(&self, user: &str, message_id: &str) -> Vec<u8> {
        let what = format!("a reply to {message_id}");
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(raw) = self.replies_to(user, message_id).into_iter().next() {
                    return raw;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for {what}; {}", self.servers.logs()))
    }

    async fn wait_delivered(&self, message_id: &str) {
        wait_until(Duration::from_secs(30), "delivery to the bot", || {
            let seen = self.servers.is_seen(BOT, message_id);
            async move { seen.map(|_| ()) }
        })
        .await;
    }

    fn conversation(&self, root: &str) -> ConversationId {
        ConversationId::new(format!("email:{MAILBOX}:{root}"))
    }

    /// Wait until nothing is in flight: every outbox entry delivered (or
    /// dead-lettered), no turn running, nothing waiting for a slot.
    async fn settle(&self) {
        let keys = self.queue.keys().shard(0);
        wait_until(Duration::from_secs(60), "the queue to settle", || {
            let mut conn = self.redis.client();
            let (outbox, leases, ready) = (keys.outbox(), keys.leases(), keys.ready());
            async move {
                let pending: i64 = redis::cmd("XLEN").arg(outbox).query(&mut conn).unwrap_or(1);
                let running: i64 = redis::cmd("ZCARD")
                    .arg(leases)
                    .query(&mut conn)
                    .unwrap_or(1);
                let waiting: i64 = redis::cmd("ZCARD").arg(ready).query(&mut conn).unwrap_or(1);
                (pending == 0 && running == 0 && waiting == 0).then_some(())
            }
        })
        .await;
    }

    async fn stop(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await;
        }
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

/// The reply's plain text.
fn body(raw: &[u8]) -> String {
    MessageParser::default()
        .parse(raw)
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_to_the_bot_gets_one_threaded_reply_and_is_seen_only_after_it_was_queued() {
    let mut world = EmailWorld::start("email-one", true, false).await;
    // With Redis frozen nothing can be queued: the mail must stay unseen.
    world.redis.pause();
    world.send(
        ANN,
        &mail(ANN, "Printer", "m1@example.test", "", "It is on fire."),
    );
    world.wait_delivered("m1@example.test").await;
    assert_eq!(world.servers.is_seen(BOT, "m1@example.test"), Some(false));
    world.redis.resume();
    // The moment the mail shows as \Seen, it must already be queued.
    let cid = world.conversation("m1@example.test");
    wait_until(Duration::from_secs(30), "the mail to be \\Seen", || {
        let seen = world.servers.is_seen(BOT, "m1@example.test");
        let (queue, cid) = (world.queue.clone(), cid.clone());
        async move {
            if seen != Some(true) {
                return None;
            }
            assert!(
                queue.conversation_exists(&cid).await.expect("redis"),
                "\\Seen before it was queued"
            );
            Some(())
        }
    })
    .await;

    world.start_worker().await;
    let reply = world.reply_to(ANN, "m1@example.test").await;
    assert_eq!(header(&reply, "Subject"), "Re: Printer");
    assert_eq!(header(&reply, "References"), "<m1@example.test>");
    assert!(header(&reply, "From").contains(BOT));
    assert!(header(&reply, "Content-Type").contains("multipart/alternative"));
    assert!(body(&reply).contains("It is on fire."), "{}", body(&reply));
    world.settle().await;
    assert_eq!(world.replies(ANN).len(), 1, "exactly one reply");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reply_to_the_reply_continues_the_same_agent_session() {
    let world = EmailWorld::start("email-thread", true, true).await;
    world.send(ANN, &mail(ANN, "Printer", "t1@example.test", "", "first"));
    let first = world.reply_to(ANN, "t1@example.test").await;
    let reply_id = header(&first, "Message-ID");
    assert!(body(&first).contains("earlier: 0"), "{}", body(&first));
    let threading = format!("In-Reply-To: {reply_id}\nReferences: <t1@example.test> {reply_id}\n");
    world.send(
        ANN,
        &mail(ANN, "Re: Printer", "t2@example.test", &threading, "second"),
    );
    let second = world.reply_to(ANN, "t2@example.test").await;
    assert!(body(&second).contains("earlier: 1"), "{}", body(&second));
    assert_eq!(header(&second, "Subject"), "Re: Printer");
    assert_eq!(
        header(&second, "References"),
        format!("<t1@example.test> {reply_id} <t2@example.test>")
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_delivered_while_the_gateway_is_stopped_is_all_answered_once() {
    let mut world = EmailWorld::start("email-down", false, true).await;
    for i in 1..=3 {
        let id = format!("d{i}@example.test");
        world.send(
            ANN,
            &mail(ANN, &format!("Down {i}"), &id, "", "while you were out"),
        );
        world.wait_delivered(&id).await;
    }
    world.start_gateway().await;
    for i in 1..=3 {
        world.reply_to(ANN, &format!("d{i}@example.test")).await;
    }
    world.settle().await;
    assert_eq!(world.replies(ANN).len(), 3);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_imap_connection_killed_mid_idle_reconnects_and_misses_nothing() {
    let world = EmailWorld::start("email-kill", true, true).await;
    world.send(ANN, &mail(ANN, "One", "k1@example.test", "", "before"));
    world.reply_to(ANN, "k1@example.test").await;
    wait_until(
        Duration::from_secs(10),
        "an IMAP connection to kill",
        || {
            let killed = world.servers.kill_imap_connections();
            async move { (killed >= 1).then_some(()) }
        },
    )
    .await;
    world.send(ANN, &mail(ANN, "Two", "k2@example.test", "", "during"));
    world.send(ANN, &mail(ANN, "Three", "k3@example.test", "", "after"));
    world.reply_to(ANN, "k2@example.test").await;
    world.reply_to(ANN, "k3@example.test").await;
    world.settle().await;
    assert_eq!(world.replies(ANN).len(), 3);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_from_auto_responders_lists_no_reply_and_unknown_senders_gets_no_reply() {
    let world = EmailWorld::start("email-guards", true, true).await;
    let auto = mail(
        ANN,
        "Out of office",
        "g1@example.test",
        "Auto-Submitted: auto-replied\n",
        "away",
    );
    world.send(ANN, &auto);
    let list = mail(
        "lists@example.test",
        "Newsletter",
        "g2@example.test",
        "List-Id: <news.example.test>\nList-Unsubscribe: <mailto:u@example.test>\n",
        "news",
    );
    world.send("lists@example.test", &list);
    let noreply = mail(
        "noreply@example.test",
        "Receipt",
        "g3@example.test",
        "",
        "paid",
    );
    world.send("noreply@example.test", &noreply);
    let outsider = mail(
        "mallory@evil.test",
        "Hi",
        "g4@example.test",
        "",
        "let me in",
    );
    world.send("mallory@evil.test", &outsider);
    // A barrier: mail after those, from an allowed sender, is answered.
    world.send(
        ANN,
        &mail(ANN, "Real", "g5@example.test", "", "a real question"),
    );
    world.reply_to(ANN, "g5@example.test").await;
    world.settle().await;
    assert_eq!(world.replies(ANN).len(), 1);
    for user in [
        "lists@example.test",
        "noreply@example.test",
        "mallory@evil.test",
    ] {
        assert!(world.replies(user).is_empty(), "{user} got a reply");
    }
    for id in ["g1", "g2", "g3", "g4"] {
        let cid = world.conversation(&format!("{id}@example.test"));
        assert!(
            !world.queue.conversation_exists(&cid).await.expect("redis"),
            "{id} was queued"
        );
    }
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reply_due_while_smtp_is_down_is_sent_once_when_it_returns() {
    let mut world = EmailWorld::start("email-smtp-down", true, true).await;
    world.servers.stop_smtp();
    // Exim is down: deliver the question straight into Dovecot.
    world.servers.deliver_lmtp(
        ANN,
        BOT,
        &mail(ANN, "Outage", "s1@example.test", "", "hello?"),
    );
    let cid = world.conversation("s1@example.test");
    wait_until(Duration::from_secs(30), "the answer to be due", || {
        let queue = world.queue.clone();
        let cid = cid.to_string();
        async move { (!replies_for(&queue, &cid).await.is_empty()).then_some(()) }
    })
    .await;
    // Exim is down, so nothing can have been sent.
    assert!(world.replies(ANN).is_empty());
    world.servers.start_smtp();
    world.reply_to(ANN, "s1@example.test").await;
    world.settle().await;
    assert_eq!(world.replies(ANN).len(), 1);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_malformed_and_oversized_mail_is_dead_lettered_and_the_next_is_answered() {
    let world = EmailWorld::start("email-dead", true, true).await;
    let broken = format!(
        "From: {ANN}\r\nTo: {BOT}\r\nSubject: broken\r\nMessage-ID: <x1@example.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n--oops\r\nhalf a part\r\n"
    );
    world.send(ANN, broken.as_bytes());
    let line = "A".repeat(76);
    let mut huge = String::with_capacity(31 * 1024 * 1024);
    while huge.len() < 30 * 1024 * 1024 {
        huge.push_str(&line);
        huge.push_str("\r\n");
    }
    world.send(ANN, &mail(ANN, "Big", "x2@example.test", "", &huge));
    world.send(
        ANN,
        &mail(ANN, "Small", "x3@example.test", "", "still there?"),
    );
    world.reply_to(ANN, "x3@example.test").await;
    let letters = world.queue.dead_letters(50).await.expect("dead letters");
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("broken MIME")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("larger than")),
        "{reasons:?}"
    );
    assert_eq!(world.replies(ANN).len(), 1);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_attachment_reaches_the_agents_turn() {
    let world = EmailWorld::start("email-attach", true, true).await;
    let raw = format!(
        "From: {ANN}\nTo: {BOT}\nSubject: Data\nMessage-ID: <a1@example.test>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"XX\"\n\n\
         --XX\nContent-Type: text/plain; charset=utf-8\n\nsee the numbers\n\
         --XX\nContent-Type: text/csv; name=\"data.csv\"\n\
         Content-Disposition: attachment; filename=\"data.csv\"\n\
         Content-Transfer-Encoding: base64\n\nYSxiCjEsMgo=\n--XX--\n"
    )
    .replace('\n', "\r\n");
    world.send(ANN, raw.as_bytes());
    let reply = world.reply_to(ANN, "a1@example.test").await;
    let text = body(&reply);
    assert!(text.contains("see the numbers"), "{text}");
    let marker = "[attached file: data.csv (text/csv, 8 bytes), saved at ";
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no attachment in {text}"));
    let path = text[at + marker.len()..]
        .split(']')
        .next()
        .expect("path")
        .trim()
        .to_string();
    assert_eq!(
        std::fs::read(&path).expect("saved attachment"),
        b"a,b\n1,2\n"
    );
    world.stop().await;
}

/// Not a timing assertion: prints how long mail takes from the SMTP
/// server's acceptance to the queue (IDLE path), over 100 mails. A
/// benchmark (about a minute), so not part of the default run:
/// `cargo nextest run --run-ignored only email_idle_latency --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --run-ignored only"]
async fn email_idle_latency_from_smtp_accept_to_queued() {
    let world = EmailWorld::start("email-latency", true, false).await;
    let n = 100;
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("l{i}@example.test");
        let raw = mail(ANN, &format!("Latency {i}"), &id, "", "ping");
        let accepted = if std::env::var_os("EMAIL_BENCH_LMTP").is_some() {
            world.servers.deliver_lmtp(ANN, BOT, &raw);
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        } else {
            world.send(ANN, &raw)
        };
        let key = format!(
            "{}:{{s0}}:inbox:email:{MAILBOX}:{id}",
            world.settings.redis.key_prefix
        );
        let queued: u64 = wait_until(Duration::from_secs(30), "the mail to be queued", || {
            let mut conn = world.redis.client();
            let key = key.clone();
            async move {
                let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .unwrap_or_default();
                entries
                    .first()
                    .and_then(|(id, _)| id.split('-').next()?.parse().ok())
            }
        })
        .await;
        latencies.push(queued.saturating_sub(accepted));
    }
    latencies.sort_unstable();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "email IDLE path, SMTP accepted -> queued, {n} mails: p50 {} ms, p99 {} ms, max {} ms",
        p(0.5),
        p(0.99),
        latencies[latencies.len() - 1]
    );
    world.stop().await;
}
