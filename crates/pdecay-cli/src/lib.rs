//! The `pdecay` application: data sets, models, the training loop and the commands.
//!
//! Data flows one way: CLI config -> data + model + optimizer -> training loop -> metrics
//! stream -> run folder (config.toml, metrics.jsonl, summary.json).

pub mod checkpoint;
pub mod cli_train;
pub mod data;
pub mod demo;
pub mod models;
pub mod train;
