//! The workspace file tools: `read_file`, `write_file` and `list_files`.
//!
//! Every path goes through [`Workspace`], which keeps it inside the run's
//! workspace; sizes and entry counts are bounded by the configuration. These
//! functions block (file I/O): the caller runs them on the blocking pool.

use std::fs;
use std::io::{Read, Write};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::outcome::{ToolFailure, ToolOutcome};
use crate::workspace::{PathError, Workspace};

/// Limits of the file tools.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileLimits {
    /// Largest file read or written.
    pub(crate) max_file_bytes: u64,
    /// Most entries one listing returns.
    pub(crate) max_list_entries: usize,
}

impl From<PathError> for ToolFailure {
    fn from(error: PathError) -> Self {
        match error {
            PathError::Denied(message) => Self::denied(message),
            PathError::Failed(message) => Self::failed(message),
        }
    }
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize)]
pub(crate) struct ReadFileArgs {
    path: String,
    max_bytes: Option<u64>,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize)]
pub(crate) struct WriteFileArgs {
    path: String,
    content: String,
    #[serde(default)]
    append: bool,
}

/// Arguments of `list_files`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListFilesArgs {
    #[serde(default = "workspace_itself")]
    path: String,
    #[serde(default)]
    recursive: bool,
}

fn workspace_itself() -> String {
    ".".to_owned()
}

/// Reads a text file: at most `max_bytes` (capped by the limit) from its
/// start. `bytes` is the file's size, `truncated` says whether `content`
/// holds less than all of it. Invalid UTF-8 is replaced.
pub(crate) fn read_file(
    workspace: &Workspace,
    args: &ReadFileArgs,
    limits: FileLimits,
) -> ToolOutcome {
    let path = workspace.resolve_existing(&args.path)?;
    let meta = fs::metadata(&path)
        .map_err(|err| ToolFailure::failed(format!("cannot read `{}`: {err}", args.path)))?;
    if meta.is_dir() {
        return Err(ToolFailure::failed(format!(
            "`{}` is a directory; use list_files to see what it holds",
            args.path
        )));
    }
    // A FIFO or device could block forever or never end.
    if !meta.is_file() {
        return Err(ToolFailure::failed(format!(
            "`{}` is not a regular file",
            args.path
        )));
    }
    let limit = args
        .max_bytes
        .unwrap_or(limits.max_file_bytes)
        .min(limits.max_file_bytes);
    let mut content = Vec::new();
    fs::File::open(&path)
        .and_then(|file| file.take(limit).read_to_end(&mut content))
        .map_err(|err| ToolFailure::failed(format!("cannot read `{}`: {err}", args.path)))?;
    let size = meta.len().max(content.len() as u64);
    let truncated = (content.len() as u64) < size;
    if truncated {
        // Do not end on half a character: drop an incomplete last sequence.
        if let Err(err) = std::str::from_utf8(&content)
            && err.error_len().is_none()
        {
            content.truncate(err.valid_up_to());
        }
    }
    Ok(json!({
        "path": workspace.relative(&path),
        "content": String::from_utf8_lossy(&content),
        "bytes": size,
        "truncated": truncated,
    }))
}

/// Writes (or appends) a text file, creating parent directories.
pub(crate) fn write_file(
    workspace: &Workspace,
    args: &WriteFileArgs,
    limits: FileLimits,
) -> ToolOutcome {
    let length = args.content.len() as u64;
    if length > limits.max_file_bytes {
        return Err(ToolFailure::denied(format!(
            "the content is {length} bytes; files are limited to {} bytes",
            limits.max_file_bytes
        )));
    }
    let path = workspace.resolve_for_write(&args.path)?;
    if args.append {
        let existing = fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
        if existing.saturating_add(length) > limits.max_file_bytes {
            return Err(ToolFailure::denied(format!(
                "appending {length} bytes to `{}` ({existing} bytes) would exceed the limit of {} bytes",
                args.path, limits.max_file_bytes
            )));
        }
    }
    let created = !path.exists();
    let mut options = fs::OpenOptions::new();
    options.create(true);
    if args.append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    options
        .open(&path)
        .and_then(|mut file| file.write_all(args.content.as_bytes()))
        .map_err(|err| ToolFailure::failed(format!("cannot write `{}`: {err}", args.path)))?;
    if created {
        // Command tools of the run (an unprivileged user) may change it too.
        workspace.own(&path).map_err(|err| {
            ToolFailure::failed(format!("cannot hand `{}` over: {err}", args.path))
        })?;
    }
    Ok(json!({
        "path": workspace.relative(&path),
        "bytes_written": length,
    }))
}

/// Lists a directory (recursively if asked), sorted by path. Symbolic links
/// are listed as `symlink` and never followed, so a listing cannot leave the
/// workspace or loop.
pub(crate) fn list_files(
    workspace: &Workspace,
    args: &ListFilesArgs,
    limits: FileLimits,
) -> ToolOutcome {
    let start = workspace.resolve_existing(&args.path)?;
    if !start.is_dir() {
        return Err(ToolFailure::failed(format!(
            "`{}` is not a directory; use read_file to read a file",
            args.path
        )));
    }
    let max = limits.max_list_entries;
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut pending = vec![start.clone()];
    'walk: while let Some(dir) = pending.pop() {
        let listing = fs::read_dir(&dir).map_err(|err| {
            ToolFailure::failed(format!("cannot list `{}`: {err}", workspace.relative(&dir)))
        })?;
        for entry in listing {
            let Ok(entry) = entry else { continue };
            if entries.len() == max {
                truncated = true;
                break 'walk;
            }
            let path = entry.path();
            // `DirEntry::file_type` and `metadata` do not follow links.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let name = path
                .strip_prefix(&start)
                .map(|relative| relative.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut item = serde_json::Map::new();
            item.insert("name".into(), json!(name));
            item.insert("path".into(), json!(workspace.relative(&path)));
            if file_type.is_symlink() {
                item.insert("kind".into(), json!("symlink"));
            } else if file_type.is_dir() {
                item.insert("kind".into(), json!("dir"));
                if args.recursive {
                    pending.push(path);
                }
            } else if file_type.is_file() {
                item.insert("kind".into(), json!("file"));
                let size = entry.metadata().map(|meta| meta.len()).unwrap_or(0);
                item.insert("size".into(), json!(size));
            } else {
                item.insert("kind".into(), json!("other"));
            }
            entries.push(Value::Object(item));
        }
    }
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json!({
        "path": workspace.relative(&start),
        "entries": entries,
        "truncated": truncated,
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use agentmesh_proto::tools::v1::ToolErrorKind;

    use super::*;

    const LIMITS: FileLimits = FileLimits {
        max_file_bytes: 16,
        max_list_entries: 5,
    };

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let base = tempfile::tempdir().unwrap();
        let workspace = Workspace::open(&base.path().join("ws")).unwrap();
        (base, workspace)
    }

    fn write(workspace: &Workspace, path: &str, content: &str, append: bool) -> ToolOutcome {
        let args = WriteFileArgs {
            path: path.into(),
            content: content.into(),
            append,
        };
        write_file(workspace, &args, LIMITS)
    }

    fn read(workspace: &Workspace, path: &str, max_bytes: Option<u64>) -> ToolOutcome {
        let args = ReadFileArgs {
            path: path.into(),
            max_bytes,
        };
        read_file(workspace, &args, LIMITS)
    }

    #[test]
    fn write_then_read_back() {
        let (_base, workspace) = workspace();
        let written = write(&workspace, "notes/a.txt", "hello", false).unwrap();
        assert_eq!(written, json!({"path": "notes/a.txt", "bytes_written": 5}));
        write(&workspace, "notes/a.txt", " world", true).unwrap();
        let output = read(&workspace, "notes/a.txt", None).unwrap();
        assert_eq!(
            output,
            json!({"path": "notes/a.txt", "content": "hello world", "bytes": 11, "truncated": false})
        );
        let output = read(&workspace, "notes/a.txt", Some(4)).unwrap();
        assert_eq!(output["content"], "hell");
        assert_eq!(output["bytes"], 11);
        assert_eq!(output["truncated"], true);
    }

    #[test]
    fn a_truncated_read_does_not_split_a_character() {
        let (_base, workspace) = workspace();
        write(&workspace, "u.txt", "aé", false).unwrap();
        let output = read(&workspace, "u.txt", Some(2)).unwrap();
        assert_eq!(output["content"], "a");
        assert_eq!(output["truncated"], true);
    }

    #[test]
    fn sizes_are_bounded() {
        let (_base, workspace) = workspace();
        let failure = write(&workspace, "big.txt", &"x".repeat(17), false).unwrap_err();
        assert_eq!(failure.kind, ToolErrorKind::Denied);
        write(&workspace, "a.txt", &"x".repeat(10), false).unwrap();
        let failure = write(&workspace, "a.txt", &"x".repeat(10), true).unwrap_err();
        assert!(
            failure.message.contains("would exceed"),
            "{}",
            failure.message
        );
        // A file larger than the limit is read up to the limit.
        fs::write(workspace.root().join("large.txt"), "y".repeat(40)).unwrap();
        let output = read(&workspace, "large.txt", Some(1000)).unwrap();
        assert_eq!(output["content"].as_str().unwrap().len(), 16);
        assert_eq!(output["truncated"], true);
    }

    #[test]
    fn errors_are_classified() {
        let (base, workspace) = workspace();
        let failure = read(&workspace, "missing.txt", None).unwrap_err();
        assert_eq!(failure.kind, ToolErrorKind::ExecutionFailed);
        fs::create_dir(workspace.root().join("dir")).unwrap();
        let failure = read(&workspace, "dir", None).unwrap_err();
        assert!(failure.message.contains("is a directory"));
        let failure = read(&workspace, "../x", None).unwrap_err();
        assert_eq!(failure.kind, ToolErrorKind::Denied);
        fs::write(base.path().join("secret"), "s").unwrap();
        symlink(base.path().join("secret"), workspace.root().join("link")).unwrap();
        let failure = read(&workspace, "link", None).unwrap_err();
        assert_eq!(failure.kind, ToolErrorKind::Denied);
        let failure = write(&workspace, "link", "overwrite", false).unwrap_err();
        assert_eq!(failure.kind, ToolErrorKind::Denied);
        assert_eq!(fs::read_to_string(base.path().join("secret")).unwrap(), "s");
    }

    #[test]
    fn listing_is_sorted_bounded_and_does_not_follow_links() {
        let (base, workspace) = workspace();
        write(&workspace, "b.txt", "bb", false).unwrap();
        write(&workspace, "a/inner.txt", "i", false).unwrap();
        fs::create_dir(base.path().join("outside")).unwrap();
        fs::write(base.path().join("outside/secret"), "s").unwrap();
        symlink(base.path().join("outside"), workspace.root().join("out")).unwrap();

        let flat = list_files(
            &workspace,
            &ListFilesArgs {
                path: ".".into(),
                recursive: false,
            },
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            flat,
            json!({
                "path": ".",
                "entries": [
                    {"name": "a", "path": "a", "kind": "dir"},
                    {"name": "b.txt", "path": "b.txt", "kind": "file", "size": 2},
                    {"name": "out", "path": "out", "kind": "symlink"},
                ],
                "truncated": false,
            })
        );
        let deep = list_files(
            &workspace,
            &ListFilesArgs {
                path: ".".into(),
                recursive: true,
            },
            LIMITS,
        )
        .unwrap();
        let names: Vec<&str> = deep["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "a/inner.txt", "b.txt", "out"]);
        let sub = list_files(
            &workspace,
            &ListFilesArgs {
                path: "a".into(),
                recursive: false,
            },
            LIMITS,
        )
        .unwrap();
        assert_eq!(sub["entries"][0]["name"], "inner.txt");
        assert_eq!(sub["entries"][0]["path"], "a/inner.txt");

        for index in 0..10 {
            write(&workspace, &format!("many/{index}.txt"), "x", false).unwrap();
        }
        let bounded = list_files(
            &workspace,
            &ListFilesArgs {
                path: "many".into(),
                recursive: false,
            },
            LIMITS,
        )
        .unwrap();
        assert_eq!(bounded["entries"].as_array().unwrap().len(), 5);
        assert_eq!(bounded["truncated"], true);

        let failure = list_files(
            &workspace,
            &ListFilesArgs {
                path: "out".into(),
                recursive: false,
            },
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(failure.kind, ToolErrorKind::Denied);
        let failure = list_files(
            &workspace,
            &ListFilesArgs {
                path: "b.txt".into(),
                recursive: false,
            },
            LIMITS,
        )
        .unwrap_err();
        assert!(failure.message.contains("not a directory"));
    }
}
