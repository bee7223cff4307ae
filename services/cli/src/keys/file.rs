//! Reading and changing a keys file in place.
//!
//! A change is computed on the file's text (appending an entry keeps every
//! byte before it; revoking edits one value with `toml_edit`, which keeps
//! comments and layout), checked by parsing the result as a keys file, and
//! written to a temporary file in the same directory that is then renamed
//! over the file: a service reloading it sees the old file or the new one,
//! never half of one. A file changed by someone else between the read and
//! the rename is not overwritten.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use anyhow::Context as _;

/// A keys file as read: where it is, its text, and its content.
#[derive(Debug)]
pub(super) struct Current {
    /// The file itself (symbolic links followed).
    path: PathBuf,
    /// Its text ("" when it does not exist yet).
    pub(super) text: String,
    /// Whether it exists.
    exists: bool,
    /// The parsed and checked content.
    pub(super) parsed: KeysFile,
}

/// Reads the keys file at `path`, which must exist.
pub(super) fn read(path: &Path) -> anyhow::Result<Current> {
    let current = read_or_empty(path)?;
    if !current.exists {
        anyhow::bail!(
            "the keys file {} does not exist (`agentmesh keys create --file {}` makes it)",
            path.display(),
            path.display()
        );
    }
    Ok(current)
}

/// Reads the keys file at `path`, or an empty one when there is none yet.
pub(super) fn read_or_empty(path: &Path) -> anyhow::Result<Current> {
    // The file a link points at is the one to change (the link stays).
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let (text, exists) = match std::fs::read_to_string(&path) {
        Ok(text) => (text, true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let parsed = KeysFile::parse(&text).map_err(|err| {
        anyhow::anyhow!(
            "the keys file {} is invalid at {err}: fix it first",
            path.display()
        )
    })?;
    Ok(Current {
        path,
        text,
        exists,
        parsed,
    })
}

/// The text of `current` with `entry` appended, checked.
pub(super) fn with_entry(current: &Current, entry: &KeyEntry) -> anyhow::Result<String> {
    if current.parsed.keys.iter().any(|key| key.id == entry.id) {
        anyhow::bail!(
            "{} already has a key with the id {}: run the command again for another key",
            current.path.display(),
            entry.id
        );
    }
    let mut text = current.text.clone();
    if !text.is_empty() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
    }
    text.push_str(&entry.to_toml());
    let parsed = KeysFile::parse(&text)
        .map_err(|err| anyhow::anyhow!("the new entry does not fit the keys file: {err}"))?;
    if parsed.keys.last() != Some(entry) {
        anyhow::bail!(
            "the new entry does not read back from {} as written: the file's last table is \
             probably an open array; add the entry by hand",
            current.path.display()
        );
    }
    Ok(text)
}

/// `text` (a keys file) with the key `id` revoked, everything else kept.
pub(super) fn with_revoked(text: &str, id: &str) -> anyhow::Result<String> {
    let mut document: toml_edit::DocumentMut = text.parse().context("the keys file")?;
    let keys = document
        .get_mut("keys")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .context("the keys file has no [[keys]] entries")?;
    let entry = keys
        .iter_mut()
        .find(|table| table.get("id").and_then(toml_edit::Item::as_str) == Some(id))
        .with_context(|| format!("no [[keys]] entry has id = {id:?}"))?;
    entry.insert("revoked", toml_edit::value(true));
    let revoked = document.to_string();
    let parsed = KeysFile::parse(&revoked)
        .map_err(|err| anyhow::anyhow!("revoking made the keys file invalid: {err}"))?;
    if !parsed.keys.iter().any(|key| key.id == id && key.revoked) {
        anyhow::bail!("the key {id} does not read back as revoked");
    }
    Ok(revoked)
}

/// Replaces the file of `current` with `text`, atomically; refuses when the
/// file changed since it was read.
pub(super) fn replace(current: &Current, text: &str) -> anyhow::Result<()> {
    let dir = current
        .path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = current
        .path
        .file_name()
        .with_context(|| format!("{} is not a file name", current.path.display()))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_new(&temp, text, current).and_then(|()| {
        let now = std::fs::read_to_string(&current.path).unwrap_or_default();
        if now != current.text {
            anyhow::bail!(
                "{} changed while this command ran: nothing was written; run it again",
                current.path.display()
            );
        }
        std::fs::rename(&temp, &current.path)
            .with_context(|| format!("cannot replace {}", current.path.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes `text` to the new file `temp`, with the permissions of the file
/// it replaces (owner-only for a new keys file), synced to disk.
fn write_new(temp: &Path, text: &str, current: &Current) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    if current.exists
        && let Ok(meta) = std::fs::metadata(&current.path)
    {
        file.set_permissions(meta.permissions())
            .with_context(|| format!("cannot set the permissions of {}", temp.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))
}

#[cfg(test)]
mod tests {
    use agentmesh_auth::ScopeSet;
    use agentmesh_auth::keys::ApiKey;

    use super::*;

    fn entry(tenant: &str) -> KeyEntry {
        let key = ApiKey::generate("test").unwrap();
        KeyEntry::new(
            &key,
            tenant,
            "ci",
            ScopeSet::parse_list("runs:read").unwrap(),
        )
    }

    #[test]
    fn entries_append_and_revoke_keeping_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let first = entry("acme");
        let current = read_or_empty(&path).unwrap();
        replace(&current, &with_entry(&current, &first).unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A comment and a tenant table written by hand survive both edits.
        let hand = format!(
            "# Keys of the support team.\n{}\n[tenants.acme] # bounded\ntools = [\"calculator\"]\n",
            std::fs::read_to_string(&path).unwrap()
        );
        std::fs::write(&path, &hand).unwrap();
        let second = entry("beta");
        let current = read(&path).unwrap();
        replace(&current, &with_entry(&current, &second).unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&hand), "{text}");

        let current = read(&path).unwrap();
        replace(&current, &with_revoked(&current.text, &first.id).unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# Keys of the support team."), "{text}");
        assert!(text.contains("[tenants.acme] # bounded"), "{text}");
        let parsed = KeysFile::parse(&text).unwrap();
        assert!(parsed.keys[0].revoked);
        assert!(!parsed.keys[1].revoked);
        assert_eq!(parsed.keys[1], second);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_duplicate_id_a_broken_file_and_a_concurrent_change_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let first = entry("acme");
        std::fs::write(&path, first.to_toml()).unwrap();
        let current = read(&path).unwrap();
        let err = with_entry(&current, &first).unwrap_err().to_string();
        assert!(err.contains("already has a key"), "{err}");

        let text = with_entry(&current, &entry("beta")).unwrap();
        std::fs::write(&path, format!("{}\n# changed meanwhile\n", current.text)).unwrap();
        let err = replace(&current, &text).unwrap_err().to_string();
        assert!(err.contains("changed while"), "{err}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("changed meanwhile")
        );

        std::fs::write(&path, "[[keys]]\nid = 3\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("invalid at line 2"), "{err}");
        let err = read(&dir.path().join("none.toml")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn revoking_an_unknown_id_says_so() {
        let first = entry("acme");
        let err = with_revoked(&first.to_toml(), "am_test_00000000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("am_test_00000000"), "{err}");
    }
}
