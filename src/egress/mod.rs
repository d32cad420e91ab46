//! Egress: replies leave the gateway. `email` sends SMTP replies; `slack` holds the Slack side (Web API
//! client, Markdown to mrkdwn, message splitting); the outbox consumer that
//! drives it lives beside it.

mod console;
pub mod email;
pub mod outbox;
pub mod slack;

pub use outbox::Egress;
