//! The Portcullis agent: policy files, kernel maps, loading and attaching, events.

pub mod enforcer;
pub mod events;
pub mod loader;
pub mod maps;
pub mod policy;
pub mod run;
pub mod stats;
pub mod tables;
pub mod watch;
