//! Experiments: the main demo, the linear-teacher demo, sweeps of runs, and reports of them
//! (scores, plots, report.md).

pub mod demo;
pub mod linear_demo;
pub mod plots;
pub mod report;
pub mod score;
pub mod sweep;
