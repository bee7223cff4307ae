//! [`FileStamp`]: what identifies a version of a file on disk, so the files
//! the mesh reloads (keys, JWKS, credentials, certificates) are re-read only
//! when they change.
//!
//! The modification time and the length: a change of either triggers a
//! reload (a Kubernetes Secret update swaps a symlink, which changes both).
//! Taken before reading, so a change made while reading is seen next time.

use std::path::Path;
use std::time::SystemTime;

/// A version of a file, as its metadata tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now; `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_changes_the_stamp_and_a_missing_file_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        assert_eq!(FileStamp::of(&path), None);
        std::fs::write(&path, "a").unwrap();
        let first = FileStamp::of(&path).unwrap();
        assert_eq!(FileStamp::of(&path), Some(first));
        std::fs::write(&path, "ab").unwrap();
        assert_ne!(FileStamp::of(&path), Some(first));
    }
}
