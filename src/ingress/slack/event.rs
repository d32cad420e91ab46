//! What to do with a verified Events API body: answer a URL verification,
//! ignore the event (with a reason label), or queue a message.
//!
//! Rules:
//! - `app_mention`: always a message; a top-level mention roots a new thread
//!   at its own ts, a mention inside a thread joins that thread.
//! - `message` in a DM (`channel_type: im`): always a message. By default one
//!   conversation per DM channel (thread part `dm`, replies without a
//!   thread); with `dm_conversation = "thread"` threads as in channels.
//! - `message` in a channel that mentions the bot: the same message as its
//!   `app_mention` twin, with the same conversation and `slack:msg:` dedupe
//!   key, so whichever arrives first is queued and the other is a duplicate.
//! - `message` replying in a thread (`thread_ts != ts`) without a mention: a
//!   candidate only if the conversation already exists, which the caller
//!   checks (`needs_existing_conversation`).
//! - Ignored: subtypes other than `file_share` and `thread_broadcast` (both
//!   are a person's message), the bot's own messages, other bots' messages
//!   unless allowed, other apps' events, other event types, and channel
//!   messages that are neither mentions nor thread replies.

use serde_json::Value;

use super::payload::{Envelope, EventKind, File, MessageEvent};
use super::settings::{DmConversation, SlackIngressSettings};
use crate::domain::{ConversationId, Destination, FileRef, InboundMessage};

/// Thread part of the conversation id of a DM in `dm_conversation = "channel"` mode.
pub const DM_THREAD_PART: &str = "dm";

/// What to do with one verified request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer 200 with this challenge (plain text or `{"challenge": ...}`).
    UrlVerification { challenge: String },
    /// A message for a conversation: dedupe, then queue it.
    Message(Box<Candidate>),
    /// Answer 200 and queue nothing; count the reason.
    Ignore(IgnoreReason),
}

/// A message that should be queued unless it is a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The message, with its conversation id and dedupe keys.
    pub message: InboundMessage,
    /// Where the conversation's replies go; stored with the conversation
    /// record when this message creates it.
    pub destination: Destination,
    /// Queue only if the conversation record already exists (a thread reply
    /// that does not mention the bot). When it does not exist, drop the
    /// message without marking its dedupe keys seen: the same ts may still
    /// arrive as an `app_mention`.
    pub needs_existing_conversation: bool,
    pub kind: CandidateKind,
    /// The Slack event type it came from: `app_mention` or `message`.
    pub event_type: &'static str,
    /// Written by another bot (`bot_id` set; only when `allow_other_bots`).
    pub from_bot: bool,
    /// The sender belongs to another organisation (Slack Connect).
    pub external: bool,
}

/// Why a candidate is addressed to the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// The bot is @-mentioned (as `app_mention`, or a `message` naming it).
    Mention,
    /// A message in a DM with the bot.
    DirectMessage,
    /// A reply in a thread, without a mention.
    ThreadReply,
}

impl CandidateKind {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mention => "mention",
            Self::DirectMessage => "direct_message",
            Self::ThreadReply => "thread_reply",
        }
    }
}

/// Why an event is acknowledged but not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// `subtype: bot_message` (integrations and legacy bots).
    BotMessage,
    /// Written by this bot or this app.
    OwnMessage,
    /// Written by another bot or app (`bot_id` set) and `allow_other_bots` is off.
    OtherBot,
    MessageChanged,
    MessageDeleted,
    ChannelJoin,
    /// Any other message subtype (leave, topic, pinned, ...).
    OtherSubtype,
    /// `api_app_id` is not `slack.app_id`.
    OtherApp,
    /// An envelope other than `event_callback` / `url_verification`
    /// (e.g. `app_rate_limited`).
    UnsupportedEnvelope,
    /// An event type other than `app_mention` and `message`.
    UnsupportedEvent,
    /// A channel message that is neither a mention nor a thread reply.
    NotAddressed,
    /// A `message` / `app_mention` event whose fields have the wrong types.
    MalformedEvent,
    /// A needed field (team, channel, ts, user, event id) is missing.
    IncompleteEvent,
}

impl IgnoreReason {
    /// A short label for metrics and logs (`reason="bot_message"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BotMessage => "bot_message",
            Self::OwnMessage => "own_message",
            Self::OtherBot => "other_bot",
            Self::MessageChanged => "message_changed",
            Self::MessageDeleted => "message_deleted",
            Self::ChannelJoin => "channel_join",
            Self::OtherSubtype => "other_subtype",
            Self::OtherApp => "other_app",
            Self::UnsupportedEnvelope => "unsupported_envelope",
            Self::UnsupportedEvent => "unsupported_event",
            Self::NotAddressed => "not_addressed",
            Self::MalformedEvent => "malformed_event",
            Self::IncompleteEvent => "incomplete_event",
        }
    }
}

/// The body is not a Slack request at all: answer 400, queue nothing.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("request body is not a Slack event envelope: {0}")]
    MalformedJson(#[from] serde_json::Error),
    #[error("url_verification request without a challenge")]
    MissingChallenge,
}

impl EventError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        "malformed_json"
    }
}

/// Decide what to do with a verified Events API request body.
/// `received_at_ms` is the receive time, in ms since the epoch.
pub fn decide(
    body: &[u8],
    settings: &SlackIngressSettings,
    received_at_ms: u64,
) -> Result<Decision, EventError> {
    // The body is checked as UTF-8 once, not string by string.
    let body = std::str::from_utf8(body)
        .map_err(|e| <serde_json::Error as serde::de::Error>::custom(format!("not UTF-8: {e}")))?;
    // A message event reads in one pass. Anything else (another kind of
    // event, a message with a field of the wrong type, a body that is not
    // JSON) fails that read and is read again the long way, which says which.
    match serde_json::from_str::<Envelope<MessageEvent>>(body) {
        Ok(envelope) => decide_envelope(envelope, settings, received_at_ms),
        Err(_) => decide_envelope(
            serde_json::from_str::<Envelope>(body)?,
            settings,
            received_at_ms,
        ),
    }
}

/// [`decide`] for a body already parsed as JSON, e.g. a Socket Mode
/// envelope's `payload` (the same `event_callback` object).
pub fn decide_value(
    body: Value,
    settings: &SlackIngressSettings,
    received_at_ms: u64,
) -> Result<Decision, EventError> {
    // The envelope keeps its event as raw JSON text, which only a parser of
    // text can give: write the tree out again.
    decide(&serde_json::to_vec(&body)?, settings, received_at_ms)
}

/// An event's `type`, when it is one we answer.
fn message_type(kind: Option<&str>) -> Result<&'static str, IgnoreReason> {
    match kind {
        Some("app_mention") => Ok("app_mention"),
        Some("message") => Ok("message"),
        _ => Err(IgnoreReason::UnsupportedEvent),
    }
}

/// An envelope's `event`, read as a message when it is one.
trait ReadEvent<'a> {
    /// The event's type and fields; why not when it is not a message.
    fn message(self) -> Result<(&'static str, MessageEvent<'a>), IgnoreReason>;
}

impl<'a> ReadEvent<'a> for MessageEvent<'a> {
    fn message(self) -> Result<(&'static str, MessageEvent<'a>), IgnoreReason> {
        Ok((message_type(self.kind.as_deref())?, self))
    }
}

impl<'a> ReadEvent<'a> for &'a serde_json::value::RawValue {
    fn message(self) -> Result<(&'static str, MessageEvent<'a>), IgnoreReason> {
        // Only an event that does not read as a message is parsed again, for
        // its type: another kind of event is not ours, a message that does
        // not read is malformed.
        match serde_json::from_str::<MessageEvent>(self.get()) {
            Ok(event) => event.message(),
            Err(_) => {
                let kind = serde_json::from_str::<EventKind>(self.get())
                    .map_err(|_| IgnoreReason::UnsupportedEvent)?;
                message_type(kind.kind.as_deref())?;
                Err(IgnoreReason::MalformedEvent)
            }
        }
    }
}

fn decide_envelope<'a, E: ReadEvent<'a>>(
    envelope: Envelope<'a, E>,
    settings: &SlackIngressSettings,
    received_at_ms: u64,
) -> Result<Decision, EventError> {
    match &*envelope.kind {
        "url_verification" => {
            let challenge = envelope.challenge.ok_or(EventError::MissingChallenge)?;
            Ok(Decision::UrlVerification {
                challenge: challenge.to_string(),
            })
        }
        "event_callback" => Ok(match candidate(envelope, settings, received_at_ms) {
            Ok(candidate) => Decision::Message(Box::new(candidate)),
            Err(reason) => Decision::Ignore(reason),
        }),
        _ => Ok(Decision::Ignore(IgnoreReason::UnsupportedEnvelope)),
    }
}

fn candidate<'a, E: ReadEvent<'a>>(
    mut envelope: Envelope<'a, E>,
    settings: &SlackIngressSettings,
    received_at_ms: u64,
) -> Result<Candidate, IgnoreReason> {
    if let Some(ours) = settings.app_id.as_deref()
        && envelope.api_app_id.as_deref() != Some(ours)
    {
        return Err(IgnoreReason::OtherApp);
    }
    let (event_type, event) = envelope
        .event
        .take()
        .ok_or(IgnoreReason::IncompleteEvent)?
        .message()?;
    check_subtype(event.subtype.as_deref())?;
    let own = OwnBot::new(settings, &envelope);
    if own.wrote(&event) {
        return Err(IgnoreReason::OwnMessage);
    }
    if present(&event.bot_id).is_some() && !settings.allow_other_bots {
        return Err(IgnoreReason::OtherBot);
    }

    let fields = Fields::new(&envelope, &event).ok_or(IgnoreReason::IncompleteEvent)?;
    let text = event.text.as_deref().unwrap_or_default();
    let mentioned = event_type == "app_mention" || own.user_ids.iter().any(|b| mentions(text, b));
    let route = route(&fields, &event, mentioned, settings.dm_conversation)?;

    let message = InboundMessage {
        conversation: route.conversation,
        dedupe_keys: vec![
            ["slack:event:", fields.event_id].concat(),
            [
                "slack:msg:",
                fields.team,
                ":",
                fields.channel,
                ":",
                fields.ts,
            ]
            .concat(),
        ],
        sender: fields.user.to_owned(),
        sender_name: None,
        text: own.strip_mention(text).to_owned(),
        files: event.files.iter().flatten().filter_map(file_ref).collect(),
        external_id: fields.ts.to_owned(),
        received_at_ms,
    };
    let profile = event.user_profile.as_ref();
    let user_team = present(&event.user_team).or(profile.and_then(|p| present(&p.team)));
    let external = profile.and_then(|p| p.is_stranger).unwrap_or(false)
        || user_team.is_some_and(|t| t != fields.team);
    Ok(Candidate {
        from_bot: present(&event.bot_id).is_some(),
        external,
        message,
        destination: Destination::Slack {
            team: fields.team.to_owned(),
            channel: fields.channel.to_owned(),
            thread_ts: route.thread_ts,
        },
        needs_existing_conversation: route.kind == CandidateKind::ThreadReply,
        kind: route.kind,
        event_type,
    })
}

/// Subtypes that are a person's message; every other subtype is ignored.
fn check_subtype(subtype: Option<&str>) -> Result<(), IgnoreReason> {
    match subtype {
        None | Some("") | Some("file_share") | Some("thread_broadcast") => Ok(()),
        Some("bot_message") => Err(IgnoreReason::BotMessage),
        Some("message_changed") => Err(IgnoreReason::MessageChanged),
        Some("message_deleted") => Err(IgnoreReason::MessageDeleted),
        Some("channel_join") | Some("group_join") => Err(IgnoreReason::ChannelJoin),
        Some(_) => Err(IgnoreReason::OtherSubtype),
    }
}

/// This bot's user ids and this app's ids, from config and the envelope.
struct OwnBot<'a> {
    user_ids: Vec<&'a str>,
    app_ids: Vec<&'a str>,
}

impl<'a> OwnBot<'a> {
    fn new<E>(settings: &'a SlackIngressSettings, envelope: &'a Envelope<'_, E>) -> Self {
        let from_authorizations = envelope
            .authorizations
            .iter()
            .flatten()
            .filter(|a| a.is_bot == Some(true))
            .filter_map(|a| present(&a.user_id));
        let user_ids = present(&settings.bot_user_id)
            .into_iter()
            .chain(from_authorizations)
            .collect();
        let app_ids = [present(&settings.app_id), present(&envelope.api_app_id)]
            .into_iter()
            .flatten()
            .collect();
        Self { user_ids, app_ids }
    }

    fn wrote(&self, event: &MessageEvent) -> bool {
        let user = present(&event.user);
        let app = present(&event.app_id)
            .or_else(|| event.bot_profile.as_ref().and_then(|p| present(&p.app_id)));
        user.is_some_and(|u| self.user_ids.contains(&u))
            || (present(&event.bot_id).is_some() && app.is_some_and(|a| self.app_ids.contains(&a)))
    }

    /// The text without a leading `<@BOT>` (or `<@BOT|name>`) of this bot.
    fn strip_mention<'t>(&self, text: &'t str) -> &'t str {
        self.user_ids
            .iter()
            .find_map(|bot| strip_leading_mention(text, bot))
            .unwrap_or(text)
    }
}

fn strip_leading_mention<'t>(text: &'t str, bot: &str) -> Option<&'t str> {
    let rest = text.trim_start().strip_prefix("<@")?.strip_prefix(bot)?;
    let rest = match rest.strip_prefix('>') {
        Some(rest) => rest,
        None => rest.strip_prefix('|')?.split_once('>')?.1,
    };
    Some(rest.trim_start())
}

fn mentions(text: &str, bot: &str) -> bool {
    text.match_indices("<@").any(|(at, _)| {
        text[at + 2..]
            .strip_prefix(bot)
            .is_some_and(|rest| rest.starts_with(['>', '|']))
    })
}

/// The fields every candidate needs, present and non-empty.
struct Fields<'a> {
    event_id: &'a str,
    team: &'a str,
    channel: &'a str,
    ts: &'a str,
    user: &'a str,
}

impl<'a> Fields<'a> {
    fn new<E>(envelope: &'a Envelope<'_, E>, event: &'a MessageEvent) -> Option<Self> {
        Some(Self {
            event_id: present(&envelope.event_id)?,
            team: present(&envelope.team_id).or_else(|| present(&event.team))?,
            channel: present(&event.channel)?,
            ts: present(&event.ts)?,
            user: present(&event.user)?,
        })
    }
}

struct Route {
    kind: CandidateKind,
    conversation: ConversationId,
    /// The thread replies go to; None: the channel itself (DM channel mode).
    thread_ts: Option<String>,
}

fn route(
    fields: &Fields<'_>,
    event: &MessageEvent,
    mentioned: bool,
    dm_mode: DmConversation,
) -> Result<Route, IgnoreReason> {
    let Fields {
        team, channel, ts, ..
    } = *fields;
    // A reply names its thread root; a root (or a lone message) is its own.
    let reply_to = present(&event.thread_ts).filter(|root| *root != ts);
    let thread_root = reply_to.unwrap_or(ts);
    // `app_mention` has no channel_type; DM channel ids start with D.
    let is_dm = match present(&event.channel_type) {
        Some(kind) => kind == "im",
        None => channel.starts_with('D'),
    };
    let in_thread = |kind| Route {
        kind,
        conversation: ConversationId::slack(team, channel, thread_root),
        thread_ts: Some(thread_root.to_owned()),
    };
    if is_dm {
        return Ok(match dm_mode {
            DmConversation::Channel => Route {
                kind: CandidateKind::DirectMessage,
                conversation: ConversationId::slack(team, channel, DM_THREAD_PART),
                thread_ts: None,
            },
            DmConversation::Thread => in_thread(CandidateKind::DirectMessage),
        });
    }
    if mentioned {
        Ok(in_thread(CandidateKind::Mention))
    } else if reply_to.is_some() {
        Ok(in_thread(CandidateKind::ThreadReply))
    } else {
        Err(IgnoreReason::NotAddressed)
    }
}

fn file_ref(file: &File) -> Option<FileRef> {
    Some(FileRef {
        id: present(&file.id)?.to_owned(),
        name: present(&file.name)
            .or_else(|| present(&file.title))
            .unwrap_or_default()
            .to_owned(),
        mimetype: file.mimetype.as_deref().map(str::to_owned),
        size: file.size,
        url: file.url_private.as_deref().map(str::to_owned),
    })
}

/// The value, unless absent or empty.
fn present<T: std::ops::Deref<Target = str>>(value: &Option<T>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}
