//! Advisory locks on run and sweep folders: one pdecay process writes a folder at a time.
//!
//! The lock is the OS's (`flock` on Linux, through std's `File::try_lock`) on the folder's
//! `.pdecay.lock`, which also holds the holder's pid for the message a second process gets. The
//! OS drops the lock when the holder exits, however it exits (a `kill -9` included), so a stale
//! lock file never blocks anyone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The lock file of a folder.
pub const LOCK_FILE: &str = ".pdecay.lock";

/// A folder held by this process; the lock is released when this is dropped.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

/// Takes the lock of the existing folder `dir`, or says which process holds it.
pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "another pdecay process".to_string(),
                pid => format!("another pdecay process (pid {pid})"),
            };
            bail!(
                "{} is in use by {holder}: wait for it to finish, or stop it, then run this again",
                dir.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(FolderLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("pdecay-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_folder(&dir).unwrap();
        let message = lock_folder(&dir).unwrap_err().to_string();
        assert!(message.contains("is in use by"), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        let again = lock_folder(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
