//! Admission control: who may talk to the bot, how often, and what it may
//! spend. Checked at ingress before anything is queued; every limit lives in
//! Redis, so it holds across all gateways and workers. Settings can be
//! replaced while running ([`Admission::update`]).

mod policy;
mod settings;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::{ConversationId, Destination};
use crate::ingress::slack::Candidate;
use crate::queue::{
    AdmitLimits, Admitted, Bucket, Charge, Queue, QueueError, ScriptBucket, micro_usd,
};

pub use policy::{Refusal, Sender, email_sender_allowed};
pub use settings::{AdmissionSettings, WorkspacePolicy};

/// The wall clock admission reads (injected in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Admission checks, shared by every ingress path.
#[derive(Clone)]
pub struct Admission {
    queue: Queue,
    current: Arc<RwLock<Arc<Current>>>,
    clock: Clock,
}

/// The settings, and their numbers as the admit script takes them
/// (formatting an `f64` costs more than the rest of a bucket's arguments,
/// and they change only on a reload).
struct Current {
    settings: Arc<AdmissionSettings>,
    user_rate: Arc<str>,
    user_burst: Arc<str>,
    channel_rate: Arc<str>,
    channel_burst: Arc<str>,
    /// User, channel and workspace daily caps, in millionths of a dollar
    /// (as the usage fields count).
    caps: [String; 3],
}

impl Current {
    fn new(settings: AdmissionSettings) -> Self {
        Self {
            user_rate: (settings.user_per_minute / 60.0).to_string().into(),
            user_burst: settings.user_burst.to_string().into(),
            channel_rate: (settings.channel_per_minute / 60.0).to_string().into(),
            channel_burst: settings.channel_burst.to_string().into(),
            caps: [
                micro_usd(settings.user_daily_usd).to_string(),
                micro_usd(settings.channel_daily_usd).to_string(),
                micro_usd(settings.workspace_daily_usd).to_string(),
            ],
            settings: Arc::new(settings),
        }
    }
}

/// Admission's part of a one-script admit and enqueue: the limits, and the
/// refusal each one stands for.
#[derive(Debug, Clone, Default)]
pub struct ScriptCheck {
    pub limits: AdmitLimits,
    rate_refusals: Vec<Refusal>,
    budget_refusals: Vec<Refusal>,
}

impl ScriptCheck {
    /// The refusal `admitted` stands for, if any.
    pub fn refusal(&self, admitted: &Admitted) -> Option<Refusal> {
        match admitted {
            Admitted::Enqueued(_) => None,
            Admitted::RateShort(i) => self.rate_refusals.get(*i).copied(),
            Admitted::Busy => Some(Refusal::Busy),
            Admitted::OverBudget(i) => self.budget_refusals.get(*i).copied(),
        }
    }
}

impl Admission {
    pub fn new(queue: Queue, settings: AdmissionSettings, clock: Clock) -> Self {
        Self {
            queue,
            current: Arc::new(RwLock::new(Arc::new(Current::new(settings)))),
            clock,
        }
    }

    /// Replace the settings (a reload); applies to the next message.
    pub fn update(&self, settings: AdmissionSettings) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(Current::new(settings));
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn settings(&self) -> Arc<AdmissionSettings> {
        self.current().settings.clone()
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `candidate` may be queued: `Some(refusal)` when not.
    /// `waiting`: conversations waiting for a slot in its shard (read by the
    /// caller together with its duplicate check, see
    /// [`Queue::seen_and_waiting`]).
    pub async fn check(
        &self,
        candidate: &Candidate,
        waiting: u64,
    ) -> Result<Option<Refusal>, QueueError> {
        let Destination::Slack { team, channel, .. } = &candidate.destination else {
            return Ok(None);
        };
        let settings = self.settings();
        let sender = Sender {
            team,
            channel,
            user: &candidate.message.sender,
            external: candidate.external,
            bot: candidate.from_bot,
        };
        if let Err(refusal) = policy::check(&settings, &sender) {
            return Ok(Some(refusal));
        }
        if candidate.from_bot
            && self
                .bot_loop(&candidate.message.conversation, &settings)
                .await?
        {
            return Ok(Some(Refusal::BotLoop));
        }
        let (user_bucket, channel_bucket) = (
            format!("user:{team}:{}", sender.user),
            format!("channel:{team}:{channel}"),
        );
        let rates = [
            (
                Bucket {
                    name: &user_bucket,
                    rate: settings.user_per_minute / 60.0,
                    burst: settings.user_burst,
                },
                Refusal::UserRate,
            ),
            (
                Bucket {
                    name: &channel_bucket,
                    rate: settings.channel_per_minute / 60.0,
                    burst: settings.channel_burst,
                },
                Refusal::ChannelRate,
            ),
        ];
        // Only limited rates; the user's bucket first, and the channel's only
        // if the user's had a token (one round trip for both).
        let (buckets, refusals): (Vec<Bucket>, Vec<Refusal>) =
            rates.into_iter().filter(|(b, _)| b.rate > 0.0).unzip();
        if !buckets.is_empty()
            && let Some((i, _)) = self.queue.take_tokens_in_order(&buckets, 1.0, 0.0).await?
        {
            return Ok(refusals.get(i).copied());
        }
        if waiting >= settings.max_waiting {
            return Ok(Some(Refusal::Busy));
        }
        self.over_budget(team, channel, sender.user, &settings)
            .await
    }

    /// The limits to check inside the enqueue script, with the refusal each
    /// one means, when `candidate` can take that path (see
    /// [`Queue::admit_and_enqueue`]): not for a message the policy refuses
    /// (it must first be found ours and not a duplicate), a bot's message
    /// (its loop counter is a step of its own), or a conversation in
    /// another shard than the limits.
    pub fn script_check(&self, candidate: &Candidate) -> Option<ScriptCheck> {
        let Destination::Slack { team, channel, .. } = &candidate.destination else {
            return None;
        };
        if candidate.from_bot
            || !self
                .queue
                .admits_in_one_script(&candidate.message.conversation)
        {
            return None;
        }
        let current = self.current();
        let settings = &current.settings;
        let user = &candidate.message.sender;
        let sender = Sender {
            team,
            channel,
            user,
            external: candidate.external,
            bot: candidate.from_bot,
        };
        policy::check(settings, &sender).ok()?;
        let mut check = ScriptCheck::default();
        let rates = [
            (
                settings.user_per_minute,
                &current.user_rate,
                &current.user_burst,
                ["user:", team, ":", user].concat(),
                Refusal::UserRate,
            ),
            (
                settings.channel_per_minute,
                &current.channel_rate,
                &current.channel_burst,
                ["channel:", team, ":", channel].concat(),
                Refusal::ChannelRate,
            ),
        ];
        for (per_minute, rate, burst, name, refusal) in rates {
            if per_minute > 0.0 {
                check.limits.buckets.push(ScriptBucket {
                    name,
                    rate: rate.clone(),
                    burst: burst.clone(),
                });
                check.rate_refusals.push(refusal);
            }
        }
        check.limits.max_waiting = settings.max_waiting;
        let caps = daily_caps(team, channel, user, settings);
        let mut fields = Vec::new();
        for ((field, cap, refusal), formatted) in caps.into_iter().zip(&current.caps) {
            if cap > 0.0 {
                fields.push((field, formatted.clone()));
                check.budget_refusals.push(refusal);
            }
        }
        if !fields.is_empty() {
            check.limits.budget = Some((day(self.now()), fields));
        }
        Some(check)
    }

    /// Count a bot-authored message; true past the loop limit.
    async fn bot_loop(
        &self,
        cid: &ConversationId,
        settings: &AdmissionSettings,
    ) -> Result<bool, QueueError> {
        let key = self
            .queue
            .keys()
            .for_conversation(cid)
            .mark(&format!("botloop:{cid}"));
        let mut conn = self.queue.connection().await?;
        let (count,): (u64,) = redis::pipe()
            .incr(&key, 1)
            .expire(&key, settings.bot_loop_window.as_secs().max(1) as i64)
            .ignore()
            .query_async(&mut *conn)
            .await?;
        Ok(count > u64::from(settings.bot_loop_limit))
    }

    async fn over_budget(
        &self,
        team: &str,
        channel: &str,
        user: &str,
        settings: &AdmissionSettings,
    ) -> Result<Option<Refusal>, QueueError> {
        let caps = daily_caps(team, channel, user, settings);
        // Only caps that are on have a field to read.
        let on: Vec<_> = caps.iter().filter(|c| c.1 > 0.0).collect();
        if on.is_empty() {
            return Ok(None);
        }
        let key = self.queue.keys().shard(0).usage(&day(self.now()));
        let mut conn = self.queue.connection().await?;
        let fields: Vec<&str> = on.iter().map(|c| c.0.as_str()).collect();
        let spent: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&fields)
            .query_async(&mut *conn)
            .await?;
        for ((_, cap, refusal), spent) in on.into_iter().zip(spent) {
            if spent.unwrap_or(0) >= micro_usd(*cap) {
                return Ok(Some(*refusal));
            }
        }
        Ok(None)
    }

    /// Count a refusal and tell the sender, once per reason and day.
    pub async fn refuse(&self, candidate: &Candidate, refusal: Refusal) -> Result<(), QueueError> {
        metrics::counter!("switchboard_admission_refused_total", "reason" => refusal.label())
            .increment(1);
        tracing::info!(conversation = %candidate.message.conversation, reason = refusal.label(), "message refused");
        let settings = self.settings();
        if !settings.refusal_replies || !refusal.tell() {
            return Ok(());
        }
        let Destination::Slack { team, .. } = &candidate.destination else {
            return Ok(());
        };
        let now = self.now();
        let mark = format!(
            "told:{}:{team}:{}:{}",
            day(now),
            candidate.message.sender,
            refusal.label()
        );
        let key = self
            .queue
            .keys()
            .for_conversation(&candidate.message.conversation)
            .mark(&mark);
        let mut conn = self.queue.connection().await?;
        let first: bool = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(86_400)
            .query_async::<Option<String>>(&mut *conn)
            .await?
            .is_some();
        drop(conn);
        if first {
            let text = refusal_text(refusal, now);
            let reply_id = format!(
                "{}/notice/{}",
                candidate.message.conversation, candidate.message.external_id
            );
            self.queue
                .notice(
                    &candidate.message.conversation,
                    &candidate.destination,
                    &reply_id,
                    &text,
                )
                .await?;
        }
        Ok(())
    }

    /// After a message was queued with `ahead` conversations waiting before
    /// it (from [`crate::queue::Enqueued::Queued`]): tell its sender their
    /// place in line (once, for this message).
    pub async fn tell_position(
        &self,
        candidate: &Candidate,
        ahead: Option<u64>,
    ) -> Result<(), QueueError> {
        let cid = &candidate.message.conversation;
        let Some(ahead) = ahead.filter(|n| *n > 0) else {
            return Ok(());
        };
        let reply_id = format!("{cid}/queued/{}", candidate.message.external_id);
        let text = format!("Queued: {ahead} ahead of you. I will answer here as soon as I can.");
        self.queue
            .notice(cid, &candidate.destination, &reply_id, &text)
            .await
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }
}

/// The daily spend caps of a sender: (usage field, cap in USD, refusal).
/// A cap that is off (0) gets no field name.
fn daily_caps(
    team: &str,
    channel: &str,
    user: &str,
    settings: &AdmissionSettings,
) -> [(String, f64, Refusal); 3] {
    let field = |cap: f64, parts: &[&str]| {
        if cap > 0.0 {
            parts.concat()
        } else {
            String::new()
        }
    };
    let (u, c, w) = (
        settings.user_daily_usd,
        settings.channel_daily_usd,
        settings.workspace_daily_usd,
    );
    [
        (
            field(u, &[SPEND_PREFIX, "user:", team, ":", user]),
            u,
            Refusal::UserBudget,
        ),
        (
            field(c, &[SPEND_PREFIX, "channel:", team, ":", channel]),
            c,
            Refusal::ChannelBudget,
        ),
        (
            field(w, &[SPEND_PREFIX, "team:", team]),
            w,
            Refusal::WorkspaceBudget,
        ),
    ]
}

/// What a finished turn adds to its user's, channel's and workspace's
/// usage for the UTC day of `now` (workers commit it with the turn).
/// `None` for destinations admission does not budget (email).
pub fn turn_charge(
    destination: &Destination,
    user: &str,
    cost_usd: f64,
    now: SystemTime,
) -> Option<Charge> {
    let Destination::Slack { team, channel, .. } = destination else {
        return None;
    };
    Some(Charge {
        day: day(now),
        spend_fields: vec![
            format!("{SPEND_PREFIX}user:{team}:{user}"),
            format!("{SPEND_PREFIX}channel:{team}:{channel}"),
            format!("{SPEND_PREFIX}team:{team}"),
        ],
        turns_field: format!("turns:user:{team}:{user}"),
        cost_usd,
    })
}

/// Where a day's usage hash counts spend: `<prefix><scope>:<key>`, in
/// millionths of a dollar (`micro_usd`).
const SPEND_PREFIX: &str = "spend_micro:";

/// Spend (`spend:<scope>:<key>`, in USD) and turn counts
/// (`turns:<scope>:<key>`) of one UTC day, for `/admin/usage`.
pub async fn usage(
    queue: &Queue,
    day: &str,
) -> Result<std::collections::BTreeMap<String, f64>, QueueError> {
    let key = queue.keys().shard(0).usage(day);
    let mut conn = queue.connection().await?;
    let fields: Vec<(String, f64)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut *conn)
        .await?;
    Ok(usage_in_usd(fields))
}

/// A usage hash's fields as `/admin/usage` shows them: spend in USD. A
/// day's hash written before spend was counted in millionths holds
/// `spend:` fields in USD; they are added in, so nothing spent that day is
/// lost from the total shown.
fn usage_in_usd(fields: Vec<(String, f64)>) -> std::collections::BTreeMap<String, f64> {
    let mut shown = std::collections::BTreeMap::new();
    for (field, value) in fields {
        let (field, value) = match field.strip_prefix(SPEND_PREFIX) {
            Some(rest) => (format!("spend:{rest}"), value / 1e6),
            None => (field, value),
        };
        *shown.entry(field).or_insert(0.0) += value;
    }
    shown
}

/// Export today's spend and turn counts as metrics
/// (`switchboard_usage_spend_usd`, `switchboard_usage_turns`), refreshed
/// every few seconds from Redis, until `shutdown`.
pub async fn export_usage(queue: Queue, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        match usage(&queue, &day(SystemTime::now())).await {
            Ok(fields) => {
                for (field, value) in fields {
                    let (metric, rest) = match field.split_once(':') {
                        Some(("spend", rest)) => ("switchboard_usage_spend_usd", rest),
                        Some(("turns", rest)) => ("switchboard_usage_turns", rest),
                        _ => continue,
                    };
                    let (scope, key) = rest.split_once(':').unwrap_or((rest, ""));
                    metrics::gauge!(metric, "scope" => scope.to_string(), "key" => key.to_string())
                        .set(value);
                }
            }
            Err(e) => tracing::debug!(error = %e, "usage not exported"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// The UTC day of `now`, as `YYYY-MM-DD`.
pub fn day(now: SystemTime) -> String {
    let days = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn refusal_text(refusal: Refusal, now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let left = Duration::from_secs(86_400 - secs % 86_400);
    let reset = format!(
        "It resets at 00:00 UTC, in {}h {}m.",
        left.as_secs() / 3600,
        left.as_secs() % 3600 / 60
    );
    match refusal {
        Refusal::Channel => "Sorry, I am not available in this channel.".into(),
        Refusal::User => "Sorry, I am not set up to take requests from you.".into(),
        Refusal::External => "Sorry, I only take requests from members of this organisation.".into(),
        Refusal::UserRate | Refusal::ChannelRate => {
            "You are sending messages faster than I can take them; please wait a minute and try again.".into()
        }
        Refusal::Busy => "I am busy right now; please try again later.".into(),
        Refusal::UserBudget => format!("You have reached today's budget for requests. {reset}"),
        Refusal::ChannelBudget => format!("This channel has reached today's budget for requests. {reset}"),
        Refusal::WorkspaceBudget => format!("This workspace has reached today's budget for requests. {reset}"),
        Refusal::Bot | Refusal::BotLoop => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_shows_spend_in_usd_with_older_fields_added_in() {
        let fields = vec![
            ("spend_micro:user:T:U".to_string(), 2_250_000.0),
            ("spend:user:T:U".to_string(), 0.5),
            ("spend_micro:team:T".to_string(), 1.0),
            ("turns:user:T:U".to_string(), 3.0),
        ];
        let shown = usage_in_usd(fields);
        assert_eq!(shown.get("spend:user:T:U"), Some(&2.75), "{shown:?}");
        assert_eq!(shown.get("spend:team:T"), Some(&0.000_001), "{shown:?}");
        assert_eq!(shown.get("turns:user:T:U"), Some(&3.0), "{shown:?}");
        assert_eq!(shown.len(), 3, "{shown:?}");
    }

    #[test]
    fn utc_days() {
        assert_eq!(day(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            day(UNIX_EPOCH + Duration::from_secs(1_795_651_200)),
            "2026-11-26"
        );
        assert_eq!(
            day(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
    }

    #[test]
    fn budget_refusals_say_when_they_reset() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_651_200 + 22 * 3600 + 30 * 60);
        let text = refusal_text(Refusal::UserBudget, t);
        assert!(text.contains("in 1h 30m"), "{text}");
    }
}
