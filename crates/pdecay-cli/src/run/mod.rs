//! The run folder: one type, [`RunDir`], owns every file a run writes and how it is read back.
//!
//! | file | written | holds |
//! |---|---|---|
//! | `config.toml` | at the start | the [`TrainConfig`], everything needed to rerun the run |
//! | `metrics.jsonl` | after each evaluation | one [`Evaluation`] per line |
//! | `checkpoint.json`, `checkpoint-N.*.bpk` | after each evaluation | model, optimizer, position |
//! | `vocab.json` | at the start (GPT) | the characters |
//! | `summary.json` | at the end | the [`RunSummary`]: the run finished |
//! | `diverged.json` | when the loss or weights became NaN/Inf | the [`Diverged`] record |
//!
//! Every file is written atomically ([`write_atomic`]); a crash leaves the previous version. A
//! process that trains into the folder holds its lock ([`RunDir::lock`]); a second one is
//! refused with the first one's pid.

pub mod atomic;
pub mod checkpoint;
pub mod lock;
pub mod records;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use pdecay_burn::SparseOptimizer;
use serde::Serialize;

use crate::config::TrainConfig;
use crate::data::text::Vocabulary;
use crate::models::ModelKind;

pub use atomic::write_atomic;
pub use checkpoint::{RunPosition, Unit};
pub use lock::{FolderLock, lock_folder};
pub use records::{
    ClassifierSummary, Diverged, EpochMetrics, Evaluation, GptEval, GptSummary, Outcome,
    RunSummary, SparseLayer, StepAt,
};

const CONFIG: &str = "config.toml";
const METRICS: &str = "metrics.jsonl";
const SUMMARY: &str = "summary.json";
const DIVERGED: &str = "diverged.json";
const VOCAB: &str = "vocab.json";

/// What a run folder holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No folder (or one without config.toml).
    New,
    /// Started, not finished: resumable from its last checkpoint.
    Started,
    /// summary.json written.
    Finished,
    /// The loss became NaN or infinite (diverged.json written).
    Diverged,
}

/// A run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The run folder at `dir` (which need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default folder of a new run: `runs/<model>-<optim>-<unix seconds>`.
    pub fn default_for(config: &TrainConfig) -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let word = |v: serde_json::Result<serde_json::Value>| {
            v.ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let optim = word(serde_json::to_value(config.optim));
        let model = word(serde_json::to_value(config.model));
        Self::new(PathBuf::from("runs").join(format!("{model}-{optim}-{stamp}")))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The folder's name (its path when it has none).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// Whether a run was started here (config.toml exists).
    pub fn holds_run(&self) -> bool {
        self.dir.join(CONFIG).exists()
    }

    /// Whether this is a run folder pdecay wrote: config.toml beside metrics.jsonl or a
    /// checkpoint (a project folder with a config.toml of its own is not one).
    pub fn is_written_run(&self) -> bool {
        self.holds_run()
            && (self.dir.join(METRICS).exists() || self.dir.join(checkpoint::POSITION).exists())
    }

    /// Removes the temporary files of [`write_atomic`] that a killed process left in `dir`;
    /// call it only while holding the folder's lock (nobody else writes there then).
    pub fn remove_stale_temps(dir: &Path) -> Result<()> {
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
        {
            if atomic::is_temp_file(&entry.file_name().to_string_lossy()) {
                std::fs::remove_file(entry.path()).with_context(|| {
                    format!(
                        "removing the stale temporary file {}",
                        entry.path().display()
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The run's config.toml.
    pub fn read_config(&self) -> Result<TrainConfig> {
        let path = self.dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a run folder (no readable {CONFIG})",
                self.dir.display()
            )
        })?;
        TrainConfig::from_toml(&text, &path.display().to_string())
    }

    /// Takes the folder for this process (making it if needed): its lock, held until the
    /// returned value is dropped, and then the removal of temporary files that an earlier
    /// process left when it was killed mid-write (no other process writes here now).
    pub fn lock(&self) -> Result<FolderLock> {
        std::fs::create_dir_all(&self.dir).with_context(|| {
            format!(
                "cannot create run folder {} (is --out writable?)",
                self.dir.display()
            )
        })?;
        let lock = lock_folder(&self.dir)?;
        Self::remove_stale_temps(&self.dir)?;
        Ok(lock)
    }

    /// Writes the config.toml, an empty metrics.jsonl (open for appending) and the
    /// `checkpoint.json` of no checkpoint yet of a new run counted in `unit`s into the folder
    /// [`RunDir::lock`] made; refuses a folder that holds a run already.
    pub fn create(&self, config: &TrainConfig, unit: Unit) -> Result<File> {
        if self.holds_run() {
            bail!(
                "{} already holds a run ({CONFIG} exists); choose another --out, or delete the folder to start over",
                self.dir.display()
            );
        }
        write_atomic(&self.dir.join(CONFIG), config.to_toml()?.as_bytes())?;
        let metrics =
            File::create(self.dir.join(METRICS)).with_context(|| format!("creating {METRICS}"))?;
        checkpoint::save_start(&self.dir, unit)?;
        Ok(metrics)
    }

    /// Where the run stands, from the files it wrote.
    pub fn state(&self) -> RunState {
        if !self.holds_run() {
            RunState::New
        } else if self.dir.join(SUMMARY).exists() {
            RunState::Finished
        } else if self.dir.join(DIVERGED).exists() {
            RunState::Diverged
        } else {
            RunState::Started
        }
    }

    /// How the run ended (`None` while it runs or was stopped); `model` says which summary.
    pub fn outcome(&self, model: ModelKind) -> Result<Option<Outcome>> {
        Ok(match self.state() {
            RunState::Finished => Some(Outcome::Finished(self.read_summary(model)?)),
            RunState::Diverged => Some(Outcome::Diverged(self.read_json(DIVERGED)?)),
            RunState::New | RunState::Started => None,
        })
    }

    /// summary.json of a finished run of `model`.
    pub fn read_summary(&self, model: ModelKind) -> Result<RunSummary> {
        Ok(if model == ModelKind::Gpt {
            RunSummary::Gpt(self.read_json(SUMMARY)?)
        } else {
            RunSummary::Classifier(self.read_json(SUMMARY)?)
        })
    }

    /// Marks the run finished.
    pub fn write_summary(&self, summary: &impl Serialize) -> Result<()> {
        write_atomic(
            &self.dir.join(SUMMARY),
            serde_json::to_string_pretty(summary)?.as_bytes(),
        )
    }

    /// Marks the run diverged.
    pub fn write_diverged(&self, diverged: &Diverged) -> Result<()> {
        write_atomic(
            &self.dir.join(DIVERGED),
            serde_json::to_string_pretty(diverged)?.as_bytes(),
        )
    }

    /// A GPT run's vocabulary.
    pub fn read_vocab(&self) -> Result<Vocabulary> {
        let path = self.dir.join(VOCAB);
        if !path.exists() {
            bail!(
                "{} has no {VOCAB}: is it a GPT run folder?",
                self.dir.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is unreadable or not UTF-8", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes a GPT run's vocabulary.
    pub fn write_vocab(&self, vocab: &Vocabulary) -> Result<()> {
        write_atomic(
            &self.dir.join(VOCAB),
            serde_json::to_string(vocab)?.as_bytes(),
        )
    }

    /// The complete lines of metrics.jsonl: a torn last line (a run still appending it, or
    /// killed while it did) is left out; none if there is no file yet.
    pub fn read_metrics<T: Evaluation>(&self) -> Result<Vec<T>> {
        let path = self.dir.join(METRICS);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{} line {} is corrupt", path.display(), i + 1))
            })
            .collect()
    }

    /// For a resumed run: the metrics lines up to `done` epochs or iterations (the last
    /// checkpoint's), kept in the file byte for byte. The lines after it, which the resumed run
    /// writes again, are dropped unread (a torn or damaged one included), and the file is
    /// returned open for appending.
    pub fn resume_metrics<T: Evaluation>(&self, done: usize) -> Result<(Vec<T>, File)> {
        let path = self.dir.join(METRICS);
        let mut kept: Vec<T> = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut body = String::new();
            // the checkpoint's own line comes last (it is written before the checkpoint)
            for (i, line) in text.lines().enumerate() {
                if kept.last().map_or(done == 0, |m| m.done() >= done) {
                    break;
                }
                let m: T = serde_json::from_str(line).with_context(|| {
                    format!(
                        "{} line {} is corrupt, before the checkpoint at {done}: restore the file from a copy, or start the run again",
                        path.display(),
                        i + 1
                    )
                })?;
                if m.done() > done {
                    break;
                }
                kept.push(m);
                body.push_str(line);
                body.push('\n');
            }
            write_atomic(&path, body.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {METRICS}"))?;
        Ok((kept, file))
    }

    /// Appends one metrics line to `file` (from [`RunDir::create`] or [`RunDir::resume_metrics`])
    /// and writes the checkpoint that goes with it.
    pub fn record<M: Module>(
        &self,
        file: &mut File,
        line: &impl Evaluation,
        model: &M,
        optim: &SparseOptimizer,
        position: &RunPosition,
    ) -> Result<()> {
        writeln!(file, "{}", serde_json::to_string(line)?)
            .with_context(|| format!("writing {METRICS}"))?;
        file.flush()?;
        checkpoint::save(&self.dir, model, optim, position)
    }

    /// The last checkpoint loaded into `model` and `optim`; `None` if there is none yet.
    ///
    /// Checkpoint files without the `checkpoint.json` that names them mean it was lost (a
    /// run folder has one from its creation on): starting again would throw the checkpoint
    /// away, so that is an error.
    pub fn load_checkpoint<M: Module>(
        &self,
        model: M,
        optim: SparseOptimizer,
    ) -> Result<Option<(M, SparseOptimizer, RunPosition)>> {
        self.refuse_orphans()?;
        checkpoint::load(&self.dir, model, optim)
    }

    /// The model of the last checkpoint, loaded into `model` (built for the run's config);
    /// `None` if there is no checkpoint yet.
    pub fn load_model<M: Module>(&self, model: M) -> Result<Option<(M, RunPosition)>> {
        self.refuse_orphans()?;
        checkpoint::load_model(&self.dir, model)
    }

    /// Checks the last checkpoint's files against the SHA-256 hashes it recorded: an error
    /// names a damaged or edited file.
    pub fn verify_checkpoint(&self) -> Result<()> {
        checkpoint::verify(&self.dir)
    }

    fn refuse_orphans(&self) -> Result<()> {
        let orphans = checkpoint::orphans(&self.dir);
        if orphans.is_empty() {
            return Ok(());
        }
        bail!(
            "{} has {} and {} evaluations in {METRICS}, but no {}, which names the complete checkpoint: it was deleted or lost. Restore it from a copy; or, to train the run again from the beginning, delete the checkpoint-*.bpk files and resume",
            self.dir.display(),
            orphans.join(", "),
            self.complete_metrics_lines()?,
            checkpoint::POSITION
        )
    }

    /// How many complete lines metrics.jsonl has (0 without the file).
    fn complete_metrics_lines(&self) -> Result<usize> {
        let path = self.dir.join(METRICS);
        if !path.exists() {
            return Ok(0);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(bytes.iter().filter(|&&b| b == b'\n').count())
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    struct Line {
        epoch: usize,
    }

    impl Evaluation for Line {
        fn done(&self) -> usize {
            self.epoch
        }
        fn line(&self, _: usize) -> String {
            String::new()
        }
        fn set_seconds(&mut self, _: f64) {}
    }

    fn run_with_metrics(name: &str, text: &str) -> RunDir {
        let dir =
            std::env::temp_dir().join(format!("pdecay-metrics-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(METRICS), text).unwrap();
        RunDir::new(dir)
    }

    #[test]
    fn a_resume_drops_the_lines_after_its_checkpoint_unread() {
        // a torn line and a damaged one after the checkpoint at epoch 2 are written again anyway
        for (name, tail) in [
            ("torn", "{\"epoch\":3,\"st"),
            ("damaged", "garbage\n{\"epoch\":4}\n"),
        ] {
            let run = run_with_metrics(name, &format!("{{\"epoch\":1}}\n{{\"epoch\":2}}\n{tail}"));
            let (kept, _) = run.resume_metrics::<Line>(2).unwrap();
            assert_eq!(kept, [Line { epoch: 1 }, Line { epoch: 2 }], "{name}");
            let text = std::fs::read_to_string(run.path().join(METRICS)).unwrap();
            assert_eq!(text, "{\"epoch\":1}\n{\"epoch\":2}\n", "{name}");
            // and a report reads the complete lines only
            let read: Vec<Line> = run.read_metrics().unwrap();
            assert_eq!(read.len(), 2);
            std::fs::remove_dir_all(run.path()).unwrap();
        }
        // no checkpoint yet: nothing is kept, nothing is parsed
        let run = run_with_metrics("fresh", "garbage");
        let (kept, _) = run.resume_metrics::<Line>(0).unwrap();
        assert!(kept.is_empty());
        std::fs::remove_dir_all(run.path()).unwrap();
    }

    #[test]
    fn taking_a_run_folder_removes_the_temporary_files_a_killed_process_left() {
        let run = run_with_metrics("stale", "");
        let dir = run.path().to_path_buf();
        for name in [
            ".checkpoint.json.99999.tmp",
            ".metrics.jsonl.12.tmp",
            "notes.tmp",
        ] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let lock = run.lock().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [lock::LOCK_FILE, METRICS, "notes.tmp"]);
        // while it is held, nobody else takes it
        let message = RunDir::new(&dir).lock().unwrap_err().to_string();
        assert!(message.contains("in use by"), "{message}");
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_before_the_checkpoint_is_an_error_that_says_how_to_repair() {
        let run = run_with_metrics("before", "{\"epoch\":1}\ngarbage\n{\"epoch\":3}\n");
        let message = format!("{:#}", run.resume_metrics::<Line>(3).unwrap_err());
        assert!(message.contains("line 2 is corrupt"), "{message}");
        assert!(message.contains("before the checkpoint"), "{message}");
        // the file is left as it was
        let text = std::fs::read_to_string(run.path().join(METRICS)).unwrap();
        assert!(text.contains("garbage"));
        std::fs::remove_dir_all(run.path()).unwrap();
    }
}
