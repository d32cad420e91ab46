//! Egress: replies leave the gateway. `slack` holds the Slack side (Web API
//! client, Markdown to mrkdwn, message splitting); the outbox consumer that
//! drives it lives beside it.

mod console;
pub mod outbox;
pub mod slack;

pub use outbox::Egress;
