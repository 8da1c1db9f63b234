//! The Portcullis agent: policy files, kernel maps, loading and attaching, the control
//! socket, events.

pub mod bpf_stats;
pub mod census;
pub mod cli;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod default_route;
pub mod enforcer;
pub mod events;
pub mod history;
pub mod http;
pub mod http_client;
pub mod lists;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod routes;
pub mod rule_ids;
pub mod run;
pub mod state_file;
pub mod tables;
pub mod telemetry;
pub mod watch;
