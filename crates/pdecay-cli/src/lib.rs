//! The `pdecay` application. Each folder is one layer; a module imports only from the layers
//! below it (and from `pdecay` / `pdecay-burn`), never from one above:
//!
//! ```text
//!   cli/          clap flags -> calls (train, sample, sweep, report, export, ...); progress bars
//!    |
//!    +--> experiments/   the demos, sweeps, reports: scores, plots, report.md
//!    |        |
//!    |        v
//!   train/        one loop skeleton; the classifier and GPT steps plugged in; data parallel
//!    |
//!    |   deploy/  model files (dense, CSR, compact), sparse inference (below cli, beside
//!    |      |     experiments and train, which it does not import)
//!    v      v
//!   run/          the run folder: every file name, config/metrics/summary/checkpoint I/O,
//!    |            atomic writes, the run's state
//!    v
//!   config/       TrainConfig: one default per key, validation, the optimizer factory
//!    |
//!    v
//!   models/       MLP, CNN, GPT, sampling
//!    |
//!    v
//!   data/         IDX files, the embedded Fashion-MNIST subset, text
//! ```
//!
//! `experiments/` and `deploy/` sit side by side and do not import each other. Data flows one
//! way: flags or a config file -> [`config::TrainConfig`] -> data + model + optimizer ->
//! [`train`] loop -> metrics -> the [`run::RunDir`] folder; a sweep runs a grid of trainings
//! into one folder; a report reads run folders back and draws them.

pub mod cli;
pub mod config;
pub mod data;
pub mod deploy;
pub mod experiments;
pub mod models;
pub mod run;
pub mod train;
