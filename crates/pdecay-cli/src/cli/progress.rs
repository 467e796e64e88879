//! Progress on the terminal: bars while a run trains, plain lines in logs.

use anyhow::{Context, Result};

use crate::run::Unit;
use crate::train::{PlainProgress, Progress};

/// A progress bar per epoch or evaluation interval (step, loss, ETA) and a line after it, on
/// a terminal.
/// The bars live in `multi`, so a caller can show its own bar above them (`pdecay sweep`).
pub struct BarProgress {
    bar: Option<indicatif::ProgressBar>,
    multi: indicatif::MultiProgress,
    print_start: bool,
}

impl BarProgress {
    /// Bars drawn in `multi`; `print_start` prints which tensors decay before the first step.
    pub fn new(multi: indicatif::MultiProgress, print_start: bool) -> Self {
        Self {
            bar: None,
            multi,
            print_start,
        }
    }

    fn println(&self, line: &str) {
        // println on a MultiProgress prints above its bars; it fails only when stdout is gone.
        let _ = self.multi.println(line);
    }
}

impl Progress for BarProgress {
    fn start(&mut self, decay: &pdecay_burn::DecaySummary) {
        if self.print_start {
            self.println(&decay.to_string());
        }
    }

    fn step(&mut self, unit: Unit, end: usize, done: usize, total: usize, loss: f64) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = self.multi.add(indicatif::ProgressBar::new(total as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} steps, loss {msg}, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(match unit {
                Unit::Epoch => format!("epoch {end}"),
                Unit::Iteration => format!("to iteration {end}"),
            });
            bar
        });
        bar.set_position(done as u64);
        bar.set_message(format!("{loss:.4}"));
    }

    fn evaluation(&mut self, _done: usize, _total: usize, line: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.println(line);
    }
}

/// A bar on a terminal, plain lines otherwise (logs, CI).
pub fn for_stdout() -> Box<dyn Progress + Send> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        Box::new(BarProgress::new(indicatif::MultiProgress::new(), true))
    } else {
        Box::new(PlainProgress::default())
    }
}

/// More threads than this many per core are refused: they only compete for the cores (and
/// starting 100,000 of them stalls the process before it prints anything).
const MAX_THREADS_PER_CORE: usize = 4;

/// Sizes rayon's global pool (the CPU threads of every kernel) when `threads` is given: at
/// least 1, a warning above the machine's cores, an error above `MAX_THREADS_PER_CORE` times
/// them. Then flushes subnormals to zero on every thread of the pool and on this one
/// (`pdecay::kernel::flush_subnormals_on_this_thread`): training must not slow down as pWD
/// drives dead weights' moments through the subnormal range.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(threads) = threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        check_threads(threads, cores)?;
        if threads > cores {
            eprintln!(
                "warning: --threads {threads} is more than this machine's {cores} cores; the extra threads wait for a core"
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("setting the number of threads")?;
    }
    // the pool's threads live as long as the process: set once, it holds for every kernel
    rayon::broadcast(|_| pdecay::kernel::flush_subnormals_on_this_thread());
    pdecay::kernel::flush_subnormals_on_this_thread();
    Ok(())
}

fn check_threads(threads: usize, cores: usize) -> Result<()> {
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    let most = MAX_THREADS_PER_CORE * cores;
    anyhow::ensure!(
        threads <= most,
        "--threads {threads} is far more than this machine's {cores} cores: threads beyond the cores only compete for them. Use at most {most} (all cores: leave --threads out)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_bounded_by_the_cores() {
        assert!(check_threads(2, 2).is_ok());
        assert!(check_threads(8, 2).is_ok());
        let message = check_threads(100_000, 2).unwrap_err().to_string();
        assert!(message.contains("at most 8"), "{message}");
        assert!(check_threads(0, 2).is_err());
    }
}
