//! Atomic writes: a file is either its old contents or its new ones, never half of each, and no
//! temporary file is left behind when a write fails (a full disk, a folder in the way).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Writes `bytes` to `path` atomically: a hidden temporary file beside it (`.NAME.PID.tmp`,
/// so no file of the user's is touched), flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    if path.is_dir() {
        bail!(
            "{} is a folder; give the path of a file to write",
            path.display()
        );
    }
    let tmp = path.with_file_name(temp_name(&name, std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    let written = write()
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if written.is_err() {
        // the old file (if any) is untouched; the half-written copy goes
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The temporary file of `NAME` written by process `pid`: `.NAME.PID.tmp`.
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.{pid}.tmp")
}

/// Whether `file_name` is a temporary file of [`write_atomic`] (`.NAME.PID.tmp`).
pub fn is_temp_file(file_name: &str) -> bool {
    file_name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(name, pid)| !name.is_empty() && pid.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_temporary_file_and_the_old_file_intact() {
        let dir = std::env::temp_dir().join(format!("pdecay-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a-folder")).unwrap();
        let temps = || -> Vec<String> {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| is_temp_file(n))
                .collect()
        };
        // `export --out DIR` used to leave `.DIR.PID.tmp` beside the folder
        let message = write_atomic(&dir.join("a-folder"), b"x")
            .unwrap_err()
            .to_string();
        assert!(message.contains("is a folder"), "{message}");
        assert!(temps().is_empty(), "{:?}", temps());
        let file = dir.join("kept.txt");
        write_atomic(&file, b"old").unwrap();
        write_atomic(&file, b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert!(temps().is_empty(), "{:?}", temps());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_files_are_told_apart_from_the_users_files() {
        assert!(is_temp_file(&temp_name("checkpoint.json", 4242)));
        assert!(is_temp_file(".metrics.jsonl.1.tmp"));
        for name in [
            "config.toml",
            ".tmp",
            "..1.tmp",
            ".notes.tmp",
            ".x.12a.tmp",
            "x.1.tmp",
        ] {
            assert!(!is_temp_file(name), "{name}");
        }
    }
}
