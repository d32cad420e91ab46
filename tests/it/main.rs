//! One integration-test binary; each module covers one area.

mod admission;
mod agent;
mod anthropic_stub;
mod claude_cli;
mod console;
mod deploy;
mod email;
mod foundation;
mod helpers;
mod mail_support;
mod pool;
mod pool_process;
mod pool_support;
mod queue;
mod queue_chaos;
mod queue_metrics;
mod queue_process;
mod queue_support;
mod slack_api_stub;
mod slack_client;
mod slack_crash;
mod slack_e2e;
mod slack_events;
mod slack_support;
mod socket_mode;
mod socket_stub;
