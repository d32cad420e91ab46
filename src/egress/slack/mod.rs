//! The Slack side of egress: a Web API client with classified errors
//! ([`SlackApi`], [`SlackError`]), the conversion of the agent's Markdown to
//! Slack mrkdwn ([`markdown_to_mrkdwn`]) and the splitting of long text into
//! messages within Slack's limits ([`split_message`]).

pub mod client;
pub mod error;
pub mod mrkdwn;
pub mod split;

pub use client::{
    DEFAULT_TIMEOUT, PostMessage, Posted, REPLY_EVENT_TYPE, SlackApi, SlackSetupError,
    ThreadMessage, install_crypto_provider,
};
pub use error::SlackError;
pub use mrkdwn::markdown_to_mrkdwn;
pub use split::{DEFAULT_LIMIT, split_message};
