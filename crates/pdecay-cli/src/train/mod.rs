//! Training: one loop skeleton ([`skeleton::run_loop`]) that owns the run's lifecycle — start
//! or resume, periods of steps, evaluations, metrics lines and checkpoints, the summary — with
//! the model-specific parts plugged in through [`skeleton::Trainer`]: the image classifiers
//! ([`classifier`], per epoch, optionally data parallel) and the GPT ([`gpt`], per iteration).

pub mod classifier;
pub mod gpt;
pub mod parallel;
pub mod skeleton;
pub mod sparse_training;

pub use classifier::train_classifier;
pub use gpt::train_gpt;
pub use skeleton::{PlainProgress, Progress, RunOptions, Silent, step_or_diverge};
