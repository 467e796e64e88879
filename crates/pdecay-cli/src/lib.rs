//! The `pdecay` application: data sets, models, the training loop and the commands.
//!
//! Data flows one way: CLI config -> data + model + optimizer -> training loop -> metrics
//! stream -> run folder (config.toml, metrics.jsonl, summary.json). A sweep runs a grid of
//! trainings into one folder; a report reads run folders back and draws them.

pub mod checkpoint;
pub mod cli_deploy;
pub mod cli_sweep;
pub mod cli_train;
pub mod compact;
pub mod data;
pub mod demo;
pub mod device;
pub mod gpt;
pub mod gpt_train;
pub mod infer;
pub mod model_file;
pub mod models;
pub mod parallel;
pub mod plots;
pub mod report;
pub mod sweep;
pub mod train;
