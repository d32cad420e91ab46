//! Switchboard: a gateway that runs AI agents on Slack and email.
//!
//! Modules follow the data flow: `ingress` takes messages in, `queue` holds
//! them in Redis, `pool` and `agent` run them, `egress` sends replies, on
//! top of `domain` types shared by all. `config`, `telemetry`, `store`
//! (Redis connections) and `app` (wiring and shutdown) hold it together.

pub mod admission;
pub mod agent;
pub mod app;
pub mod config;
pub mod console;
pub mod domain;
pub mod egress;
pub mod http;
pub mod ingress;
pub mod pool;
pub mod process;
pub mod queue;
pub mod shutdown;
pub mod store;
pub mod telemetry;
