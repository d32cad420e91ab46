//! Egress: replies leave the gateway. `slack` holds the Slack side (Web API
//! client, Markdown to mrkdwn, message splitting); the outbox consumer that
//! drives it lives beside it.

pub mod slack;
