//! What a run folder survives: damaged and edited files, lost checkpoints, kills at any moment,
//! a full disk, a second process. Through the real binary, on the embedded subset.

mod common;
use common::{checkpoint_weights, fails, ok, path, pdecay, stderr, tempdir, without_times};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A short MLP run's flags (`--out` or `--resume` is added): sparse training on, so that its
/// plan is part of what must survive (`auto` times the products: two runs may choose apart).
const RUN: [&str; 12] = [
    "train",
    "--embedded",
    "--epochs",
    "4",
    "--optim",
    "padam",
    "--lambda",
    "0.1",
    "--seed",
    "5",
    "--sparse-training",
    "on",
];

fn train(extra: &[&str]) -> std::process::Output {
    let mut args = RUN.to_vec();
    args.extend_from_slice(extra);
    pdecay(&args)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// XORs 40 bytes in the middle of `file`.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 40] {
        *b ^= 0x5a;
    }
    std::fs::write(file, bytes).unwrap();
}

/// The file names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `run` against `reference`, an uninterrupted run with the same flags: the same files, each
/// byte for byte but for the clock (the checkpoints' weights bit for bit: their files also hold
/// random parameter ids), and no temporary file left.
fn assert_same_run(reference: &Path, run: &Path, what: &str) {
    assert_eq!(names(reference), names(run), "{what}: the files differ");
    for name in ["config.toml", "metrics.jsonl", "summary.json"] {
        let text = |dir: &Path| without_times(&std::fs::read_to_string(dir.join(name)).unwrap());
        assert_eq!(text(reference), text(run), "{what}: {name}");
    }
    let position = |dir: &Path| {
        let v = common::json(&dir.join("checkpoint.json"));
        (
            v["epoch"].clone(),
            v["step"].clone(),
            v["sha256"]["config.toml"].clone(),
        )
    };
    assert_eq!(
        position(reference),
        position(run),
        "{what}: checkpoint.json"
    );
    assert_eq!(
        checkpoint_weights(reference),
        checkpoint_weights(run),
        "{what}: the weights differ"
    );
}

#[test]
fn a_damaged_or_edited_checkpoint_file_is_named_and_never_trained_on() {
    let root = tempdir("damaged");
    let run = root.join("run");
    let out = train(&["--stop-after", "2", "--out", path(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let checkpoint = common::json(&run.join("checkpoint.json"));
    assert_eq!(
        checkpoint["sha256"].as_object().unwrap().len(),
        3,
        "{checkpoint}"
    );

    for (file, words) in [
        (
            "checkpoint-00002.model.bpk",
            "was damaged after it was written",
        ),
        // damaged optimizer state once read as "diverged, lower --lr"
        (
            "checkpoint-00002.optim.bpk",
            "was damaged after it was written",
        ),
    ] {
        let copy = root.join(file);
        copy_dir(&run, &copy);
        damage(&copy.join(file));
        let message = fails(
            &["train", "--resume", path(&copy)],
            &[file, words, "SHA-256"],
        );
        assert!(!message.contains("diverged"), "{message}");
        // nothing was trained: the damaged checkpoint is still the last one
        assert!(!copy.join("checkpoint-00003.model.bpk").exists());
        if file.contains("model") {
            let to = root.join("exported.safetensors");
            fails(
                &["export", path(&copy), "--out", path(&to)],
                &[file, "damaged"],
            );
            fails(&["report", path(&copy)], &[file, "damaged"]);
            assert!(!to.exists());
        }
    }
    // editing the run's settings (its seed) is no longer a silently different run
    let edited = root.join("edited");
    copy_dir(&run, &edited);
    let config = std::fs::read_to_string(edited.join("config.toml")).unwrap();
    assert!(config.contains("seed = 5\n"), "{config}");
    std::fs::write(
        edited.join("config.toml"),
        config.replace("seed = 5\n", "seed = 6\n"),
    )
    .unwrap();
    fails(
        &["train", "--resume", path(&edited)],
        &["config.toml was edited or damaged", "SHA-256"],
    );

    // the undamaged run resumes, and ends as one that never stopped
    let reference = root.join("reference");
    assert!(train(&["--out", path(&reference)]).status.success());
    ok(&["train", "--resume", path(&run)]);
    assert_same_run(&reference, &run, "resumed");
}

#[test]
fn a_lost_checkpoint_json_is_an_error_that_keeps_the_checkpoint() {
    let root = tempdir("lost-position");
    // it once started from scratch without a word (after the first epoch: with a wrong
    // warning), and then replaced the checkpoint
    for epochs in ["1", "2"] {
        let run = root.join(format!("after-{epochs}"));
        assert!(
            train(&["--stop-after", epochs, "--out", path(&run)])
                .status
                .success()
        );
        std::fs::remove_file(run.join("checkpoint.json")).unwrap();
        let model = format!("checkpoint-0000{epochs}.model.bpk");
        let before = std::fs::read(run.join(&model)).unwrap();
        fails(
            &["train", "--resume", path(&run)],
            &[&model, "no checkpoint.json", "deleted or lost"],
        );
        assert_eq!(std::fs::read(run.join(&model)).unwrap(), before);
        fails(
            &[
                "export",
                path(&run),
                "--out",
                path(&root.join("m.safetensors")),
            ],
            &["no checkpoint.json"],
        );
    }

    // a run folder has its checkpoint.json from the start (no checkpoint yet), so a kill
    // mid-checkpoint never looks like a lost one
    let fresh = root.join("fresh");
    fails(
        &[&RUN[..], &["--stop-after", "0", "--out", path(&fresh)]].concat(),
        &["no epoch was trained"],
    );
    let position = common::json(&fresh.join("checkpoint.json"));
    assert_eq!(
        (position["epoch"].as_u64(), position["step"].as_u64()),
        (Some(0), Some(0))
    );
    ok(&["train", "--resume", path(&fresh)]);
    let reference = root.join("reference");
    assert!(train(&["--out", path(&reference)]).status.success());
    assert_same_run(&reference, &fresh, "resumed before its first checkpoint");
}

#[test]
fn a_divergence_says_whether_a_checkpoint_is_kept() {
    let root = tempdir("diverge-kept");
    let run = root.join("run");
    fails(
        &[
            "train",
            "--embedded",
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--optim",
            "adam",
            "--lr",
            "1e30",
            "--out",
            path(&run),
        ],
        &["diverged at epoch 1", "no checkpoint had been written yet"],
    );
    assert!(!run.join("checkpoint-00001.model.bpk").exists());
}

/// A pseudo-random sequence (an LCG), so the kill moments are the same on every run of the test.
struct Moments(u64);

impl Moments {
    /// A moment in `[0, span)`.
    fn next(&mut self, span: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        span.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Runs `args` and kills it (SIGKILL) after `after`; whether it finished first.
fn run_or_kill(args: &[String], after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pdecay"))
        .args(args)
        .env_remove("PDECAY_DATA")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < after {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(status.success(), "{args:?} failed after a kill: {err}");
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    false
}

/// Kills `command(fresh)` at `kills` pseudo-random moments (from `seed`) within `span`,
/// running it again after each kill (`fresh`: nothing was started yet, as `started` tells),
/// then lets it finish. Should it finish before the first kill, `clear` empties its folder
/// and it starts over with half the span: every call kills at least once.
fn kill_repeatedly(
    command: impl Fn(bool) -> Vec<String>,
    started: impl Fn() -> bool,
    clear: impl Fn(),
    mut span: Duration,
    kills: usize,
    seed: u64,
) {
    let mut moments = Moments(seed);
    let mut killed = 0;
    while killed < kills {
        if run_or_kill(&command(!started()), moments.next(span)) {
            if killed > 0 {
                return;
            }
            clear();
            span /= 2;
        } else {
            killed += 1;
        }
    }
    assert!(run_or_kill(&command(!started()), Duration::from_secs(600)));
}

#[test]
fn a_resume_removes_the_older_checkpoint_a_killed_run_left() {
    // `checkpoint.json` already names the last checkpoint, the one before is still there and
    // summary.json is not written yet: a kill between the rename and the removal (found by the
    // random kills of a sweep, where the resumed run then kept both checkpoints)
    let root = tempdir("kill-before-removal");
    let reference = root.join("reference");
    assert!(train(&["--out", path(&reference)]).status.success());
    let earlier = root.join("earlier");
    assert!(
        train(&["--stop-after", "3", "--out", path(&earlier)])
            .status
            .success()
    );
    let killed = root.join("killed");
    copy_dir(&reference, &killed);
    std::fs::remove_file(killed.join("summary.json")).unwrap();
    for name in ["checkpoint-00003.model.bpk", "checkpoint-00003.optim.bpk"] {
        std::fs::copy(earlier.join(name), killed.join(name)).unwrap();
    }
    let out = train(&["--resume", path(&killed)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_run(&reference, &killed, "resumed");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_files_of_one_never_killed() {
    let root = tempdir("kill-run");
    let reference = root.join("reference");
    let clock = Instant::now();
    assert!(train(&["--out", path(&reference)]).status.success());
    let span = clock.elapsed();
    // each try is killed at another moment: while it starts, trains, writes metrics or a
    // checkpoint; every file must end as the uninterrupted run's
    for attempt in 0..3 {
        let run = root.join(format!("killed-{attempt}"));
        let command = |fresh: bool| {
            let mut args: Vec<String> = RUN.iter().map(|s| s.to_string()).collect();
            args.push(if fresh { "--out" } else { "--resume" }.into());
            args.push(path(&run).into());
            args
        };
        let started = || run.join("config.toml").exists();
        let clear = || std::fs::remove_dir_all(&run).unwrap();
        kill_repeatedly(command, started, clear, span, 6, attempt);
        assert_same_run(&reference, &run, &format!("attempt {attempt}"));
    }
}

#[test]
fn a_sweep_killed_at_random_moments_ends_with_the_files_of_one_never_killed() {
    let root = tempdir("kill-sweep");
    let grid = root.join("grid.toml");
    std::fs::write(
        &grid,
        "data = \"embedded\"\nepochs = 2\nhidden = [64]\nsparse_training = \"off\"\n[[grid]]\noptim = \"adamw\"\nlambda = 1e-2\n[[grid]]\noptim = \"padam\"\nlambda = [1e-2, 1e-1]\n",
    )
    .unwrap();
    let sweep = |out: &Path| -> Vec<String> {
        ["sweep", "--config", path(&grid), "--out", path(out)]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let reference = root.join("reference");
    let clock = Instant::now();
    assert!(run_or_kill(&sweep(&reference), Duration::from_secs(600)));
    let span = clock.elapsed();
    let killed = root.join("killed");
    let clear = || std::fs::remove_dir_all(&killed).unwrap();
    kill_repeatedly(|_| sweep(&killed), || true, clear, span, 8, 17);
    let runs: Vec<PathBuf> = names(&reference)
        .into_iter()
        .filter(|n| n.starts_with("optim="))
        .map(PathBuf::from)
        .collect();
    assert_eq!(runs.len(), 3);
    for run in &runs {
        assert_same_run(
            &reference.join(run),
            &killed.join(run),
            &run.display().to_string(),
        );
    }
    let csv =
        |dir: &Path| without_time_columns(&std::fs::read_to_string(dir.join("sweep.csv")).unwrap());
    assert_eq!(csv(&reference), csv(&killed));
    assert_eq!(names(&reference), names(&killed));

    // a sweep run again over finished runs rewrites sweep.csv byte for byte, clock included
    let before = std::fs::read(killed.join("sweep.csv")).unwrap();
    assert!(run_or_kill(&sweep(&killed), Duration::from_secs(600)));
    assert_eq!(before, std::fs::read(killed.join("sweep.csv")).unwrap());
}

/// A sweep.csv without its timing columns.
fn without_time_columns(csv: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let timing: Vec<usize> = rows[0]
        .iter()
        .enumerate()
        .filter(|(_, h)| h.contains("seconds") || h.contains("per_second"))
        .map(|(i, _)| i)
        .collect();
    assert!(!timing.is_empty());
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| !timing.contains(i))
                .map(|(_, c)| c.to_string())
                .collect()
        })
        .collect()
}

#[cfg(unix)]
#[test]
fn a_full_disk_loses_nothing_already_written() {
    let root = tempdir("disk-full");
    let run = root.join("run");
    assert!(
        train(&["--stop-after", "2", "--out", path(&run)])
            .status
            .success()
    );
    let before: Vec<(String, Vec<u8>)> = names(&run)
        .into_iter()
        .map(|n| (n.clone(), std::fs::read(run.join(&n)).unwrap()))
        .collect();
    // a file size limit (ulimit -f, in 512-byte blocks; SIGXFSZ ignored so a write fails with
    // EFBIG) is a full disk to the process: the next checkpoint (megabytes) cannot be written
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 256; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_pdecay"))
        .args(["train", "--resume", path(&run)])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the write should have failed");
    let said = stderr(&out);
    assert!(said.contains("checkpoint-00003"), "{said}");
    // every file the run had is as it was, but metrics.jsonl, which gained the line of epoch 3
    // (dropped again on resume); no temporary file is left
    for (name, bytes) in &before {
        let now = std::fs::read(run.join(name)).unwrap();
        if name == ".pdecay.lock" {
            continue; // holds the pid of the last process that trained here
        } else if name == "metrics.jsonl" {
            assert!(now.starts_with(bytes), "{name} lost data");
        } else {
            assert_eq!(&now, bytes, "{name} changed");
        }
    }
    assert_eq!(
        names(&run),
        before.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    // with room again, the run resumes and ends as one that never stopped
    ok(&["train", "--resume", path(&run)]);
    let reference = root.join("reference");
    assert!(train(&["--out", path(&reference)]).status.success());
    assert_same_run(&reference, &run, "after the full disk");
}

/// Starts `args` in the background and waits until `ready` exists (the process trains).
fn start_and_wait(args: &[&str], ready: &Path) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pdecay"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{args:?} never wrote {ready:?}"
        );
        assert!(child.try_wait().unwrap().is_none(), "{args:?} ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_second_process_on_a_folder_in_use_is_refused_with_the_holders_pid() {
    let root = tempdir("two-processes");
    let run = root.join("run");
    let mut first = start_and_wait(
        &[
            "train",
            "--embedded",
            "--epochs",
            "500",
            "--out",
            path(&run),
        ],
        &run.join("checkpoint.json"),
    );
    // a resume of the folder while it trains once made one of the two die mid-checkpoint
    fails(
        &["train", "--resume", path(&run)],
        &["in use by", &first.id().to_string()],
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // killed, it lets go: the folder resumes
    let done = common::json(&run.join("checkpoint.json"))["epoch"]
        .as_u64()
        .unwrap();
    let next = (done + 1).to_string();
    ok(&["train", "--resume", path(&run), "--stop-after", &next]);

    // two sweeps into one folder once trained the same run at once
    let grid = root.join("grid.toml");
    std::fs::write(
        &grid,
        "data = \"embedded\"\nepochs = 500\noptim = \"adam\"\n",
    )
    .unwrap();
    let sweep = root.join("sweep");
    let mut holder = start_and_wait(
        &["sweep", "--config", path(&grid), "--out", path(&sweep)],
        &sweep.join("run").join("checkpoint.json"),
    );
    fails(
        &["sweep", "--config", path(&grid), "--out", path(&sweep)],
        &["in use by", &holder.id().to_string()],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}
