//! Per-run workspace directories, and keeping tool paths inside them.
//!
//! Each run gets `<workspaces_dir>/<tenant>/<run_id>` (calls without a run
//! share `<workspaces_dir>/<tenant>/_shared`), created on first use: tenants
//! never share a workspace, even with equal run ids. `<tenant>` is the
//! tenant's name when it is a plain identifier, else a digest of it (see
//! [`tenant_dir_name`]). When command tools run as an unprivileged user,
//! run directories are owned by it and the directories above them are
//! traversable but not listable (0711). The file tools take
//! paths relative to it, and [`Workspace`] refuses anything that could reach
//! outside: absolute paths, `..` components, and symbolic links whose target
//! is outside the workspace — whether the link is the file itself or one of
//! its parent directories. The check canonicalizes the path (resolving every
//! link) and compares it with the workspace's own canonical path; the tools
//! then open the canonical path, not the one they were given.
//!
//! What remains is a race with another process writing in the same
//! workspace (a command tool of the same run could swap a directory for a
//! link between the check and the open); the standard library offers no
//! `openat`/`O_NOFOLLOW` walk to close it without `unsafe` code.
//!
//! Everything here is blocking file-system work: callers run it on the
//! blocking thread pool.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

/// The workspace directory of calls without a run. It cannot collide with a
/// run id, which must start with a letter or digit.
pub(crate) const SHARED_WORKSPACE: &str = "_shared";

/// The longest run id accepted.
pub(crate) const MAX_RUN_ID_LENGTH: usize = 128;

/// Checks that a run id is a safe single path component: 1 to 128 of
/// `[A-Za-z0-9._-]`, starting with a letter or digit (so never `.`, `..` or
/// a hidden name). Returns what is wrong, for a field violation.
pub(crate) fn check_run_id(run_id: &str) -> Result<(), String> {
    let valid_start = run_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let valid_chars = run_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if run_id.len() <= MAX_RUN_ID_LENGTH && valid_start && valid_chars {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_RUN_ID_LENGTH} characters of [A-Za-z0-9._-] starting with a letter or digit (it names the run's workspace directory), or empty for the shared workspace"
        ))
    }
}

/// The directory name of a run's workspace: its id, or `_shared`. `run_id`
/// must have passed [`check_run_id`] or be empty.
pub(crate) fn run_dir_name(run_id: &str) -> &str {
    if run_id.is_empty() {
        SHARED_WORKSPACE
    } else {
        run_id
    }
}

/// The directory name of a tenant's workspaces: the name itself when it is
/// 1 to 64 of `[A-Za-z0-9_-]` starting with a letter or digit; `_none`
/// without a tenant; else `~` and a SHA-256 prefix of the name (any bytes,
/// any length, never a path separator).
pub(crate) fn tenant_dir_name(tenant: &str) -> String {
    let plain = tenant.len() <= 64
        && tenant
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if tenant.is_empty() {
        "_none".to_owned()
    } else if plain {
        tenant.to_owned()
    } else {
        let digest = agentmesh_audit_client::sha256_hex(tenant.as_bytes());
        format!("~{}", digest.get(..32).unwrap_or(&digest))
    }
}

/// The directory of a run's workspace (not created).
pub(crate) fn workspace_dir(workspaces_dir: &Path, tenant_dir: &str, run_id: &str) -> PathBuf {
    workspaces_dir.join(tenant_dir).join(run_dir_name(run_id))
}

/// Why a path was not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Refused by policy: the path would leave the workspace.
    Denied(String),
    /// The path is acceptable but the file system says no (not found, not a
    /// directory, permissions).
    Failed(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

/// A run's workspace directory, existing, by its canonical path.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    root: PathBuf,
    /// Who owns what the file tools create (the sandbox user), if not the
    /// service.
    owner: Option<(u32, u32)>,
}

impl Workspace {
    /// Creates the directory when missing and resolves its canonical path.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        Self::open_owned(dir, None)
    }

    /// Creates the directory when missing, owned by `owner` (with the
    /// directories above it traversable by it), and resolves its path.
    pub(crate) fn open_owned(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<Self> {
        if let Some((user, group)) = owner
            && !dir.is_dir()
        {
            // The tenant's directory and the workspaces directory: others
            // may pass through but not list them.
            for parent in dir.ancestors().skip(1).take(2) {
                fs::create_dir_all(parent)?;
                fs::set_permissions(parent, fs::Permissions::from_mode(0o711))?;
            }
            fs::create_dir_all(dir)?;
            std::os::unix::fs::chown(dir, Some(user), Some(group))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        fs::create_dir_all(dir)?;
        Ok(Self {
            root: fs::canonicalize(dir)?,
            owner,
        })
    }

    /// Gives what the service created to the sandbox user, so command tools
    /// of the run can change it.
    pub(crate) fn own(&self, path: &Path) -> io::Result<()> {
        match self.owner {
            Some((user, group)) => std::os::unix::fs::chown(path, Some(user), Some(group)),
            None => Ok(()),
        }
    }

    /// The canonical path of the workspace.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical path of an existing file or directory inside the
    /// workspace (`.` is the workspace itself).
    pub(crate) fn resolve_existing(&self, path: &str) -> Result<PathBuf, PathError> {
        let parts = relative_parts(path)?;
        let joined = parts
            .iter()
            .fold(self.root.clone(), |dir, part| dir.join(part));
        let canonical = fs::canonicalize(&joined).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => {
                PathError::Failed(format!("`{path}` does not exist in the run's workspace"))
            }
            _ => PathError::Failed(format!("cannot resolve `{path}`: {err}")),
        })?;
        self.check_inside(path, &canonical)?;
        Ok(canonical)
    }

    /// The path to write `path` at: parent directories are created (each
    /// checked: one that is a link must lead inside the workspace), and when
    /// the file itself is a link it must lead inside too.
    pub(crate) fn resolve_for_write(&self, path: &str) -> Result<PathBuf, PathError> {
        let parts = relative_parts(path)?;
        let Some((file_name, parents)) = parts.split_last() else {
            return Err(PathError::Failed(format!(
                "`{path}` is the workspace directory itself; give a file name"
            )));
        };
        let mut dir = self.root.clone();
        for (index, part) in parents.iter().enumerate() {
            let shown = parts.get(..=index).unwrap_or_default().join("/");
            let next = dir.join(part);
            dir = match fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = fs::canonicalize(&next).map_err(|_| {
                        PathError::Denied(format!(
                            "`{shown}` is a symbolic link to a directory that does not exist"
                        ))
                    })?;
                    self.check_inside(&shown, &target)?;
                    if !target.is_dir() {
                        return Err(PathError::Failed(format!("`{shown}` is not a directory")));
                    }
                    target
                }
                Ok(meta) if meta.is_dir() => next,
                Ok(_) => return Err(PathError::Failed(format!("`{shown}` is not a directory"))),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    match fs::create_dir(&next) {
                        Ok(()) => {
                            self.own(&next).map_err(|err| {
                                PathError::Failed(format!("cannot hand `{shown}` over: {err}"))
                            })?;
                            next
                        }
                        // Created meanwhile by someone else: check it like any other.
                        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                            let target = fs::canonicalize(&next).map_err(|err| {
                                PathError::Failed(format!("cannot resolve `{shown}`: {err}"))
                            })?;
                            self.check_inside(&shown, &target)?;
                            target
                        }
                        Err(err) => {
                            return Err(PathError::Failed(format!(
                                "cannot create the directory `{shown}`: {err}"
                            )));
                        }
                    }
                }
                Err(err) => {
                    return Err(PathError::Failed(format!(
                        "cannot inspect `{shown}`: {err}"
                    )));
                }
            };
        }
        let target = dir.join(file_name);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // A dangling link would make the write create a file wherever
                // it points: refuse rather than guess.
                let resolved = fs::canonicalize(&target).map_err(|_| {
                    PathError::Denied(format!(
                        "`{path}` is a symbolic link to a file that does not exist; refusing to follow it"
                    ))
                })?;
                self.check_inside(path, &resolved)?;
                if resolved.is_dir() {
                    return Err(PathError::Failed(format!("`{path}` is a directory")));
                }
                Ok(resolved)
            }
            Ok(meta) if meta.is_dir() => Err(PathError::Failed(format!("`{path}` is a directory"))),
            Ok(_) => Ok(target),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(target),
            Err(err) => Err(PathError::Failed(format!("cannot inspect `{path}`: {err}"))),
        }
    }

    /// `canonical` relative to the workspace, with `/` separators (`.` for
    /// the workspace itself), to show to the model.
    pub(crate) fn relative(&self, canonical: &Path) -> String {
        let relative = canonical.strip_prefix(&self.root).unwrap_or(canonical);
        let shown: Vec<String> = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        if shown.is_empty() {
            ".".to_owned()
        } else {
            shown.join("/")
        }
    }

    fn check_inside(&self, shown: &str, canonical: &Path) -> Result<(), PathError> {
        if canonical.starts_with(&self.root) {
            Ok(())
        } else {
            Err(PathError::Denied(format!(
                "`{shown}` leads outside the run's workspace (through a symbolic link); only paths inside it are allowed"
            )))
        }
    }
}

/// The normal components of a relative path; refuses absolute paths and
/// `..`. `.` components are dropped, so `.` and `` are the workspace itself.
pub(crate) fn relative_parts(path: &str) -> Result<Vec<String>, PathError> {
    if path.contains('\0') {
        return Err(PathError::Denied(
            "paths must not contain NUL characters".to_owned(),
        ));
    }
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(PathError::Denied(format!(
                    "`{path}` contains `..`; paths must stay inside the run's workspace"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Denied(format!(
                    "`{path}` is absolute; give a path relative to the run's workspace"
                )));
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let base = tempfile::tempdir().unwrap();
        let workspace = Workspace::open(&base.path().join("ws")).unwrap();
        (base, workspace)
    }

    fn denied(result: Result<PathBuf, PathError>) -> String {
        match result {
            Err(PathError::Denied(message)) => message,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn run_ids_must_be_one_safe_component() {
        for good in ["run-1", "0193f5a2-7c1d-7000-8000-000000000000", "a.b_c"] {
            assert!(check_run_id(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_RUN_ID_LENGTH + 1);
        for bad in [
            "", ".", "..", "_shared", ".hidden", "a/b", "a\\b", "a b", "é", &long,
        ] {
            assert!(check_run_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            workspace_dir(Path::new("/w"), "t", ""),
            PathBuf::from("/w/t/_shared")
        );
        assert_eq!(
            workspace_dir(Path::new("/w"), "t", "r1"),
            PathBuf::from("/w/t/r1")
        );
    }

    #[test]
    fn tenants_get_safe_distinct_directory_names() {
        assert_eq!(tenant_dir_name("acme"), "acme");
        assert_eq!(tenant_dir_name(""), "_none");
        let odd = [
            "..",
            "a/b",
            "_shared",
            ".hidden",
            "a\nb",
            "é",
            &"x".repeat(65),
        ];
        let mut names: Vec<String> = odd.iter().map(|tenant| tenant_dir_name(tenant)).collect();
        for name in &names {
            assert!(name.starts_with('~') && name.len() == 33, "{name}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), odd.len());
    }

    #[test]
    fn absolute_paths_and_parent_components_are_refused() {
        let (_base, workspace) = workspace();
        assert!(denied(workspace.resolve_existing("/etc/passwd")).contains("absolute"));
        assert!(denied(workspace.resolve_for_write("/tmp/x")).contains("absolute"));
        assert!(denied(workspace.resolve_existing("../x")).contains(".."));
        assert!(denied(workspace.resolve_existing("a/../../x")).contains(".."));
        assert!(denied(workspace.resolve_for_write("a/../b")).contains(".."));
        assert!(denied(workspace.resolve_existing("a\0b")).contains("NUL"));
    }

    #[test]
    fn paths_inside_resolve() {
        let (_base, workspace) = workspace();
        fs::create_dir(workspace.root().join("dir")).unwrap();
        fs::write(workspace.root().join("dir/a.txt"), "x").unwrap();
        let resolved = workspace.resolve_existing("./dir//a.txt").unwrap();
        assert_eq!(resolved, workspace.root().join("dir/a.txt"));
        assert_eq!(workspace.relative(&resolved), "dir/a.txt");
        assert_eq!(workspace.resolve_existing(".").unwrap(), workspace.root());
        assert_eq!(workspace.relative(workspace.root()), ".");
        assert!(matches!(
            workspace.resolve_existing("missing"),
            Err(PathError::Failed(message)) if message.contains("does not exist")
        ));
        // A link that stays inside is fine.
        symlink(
            workspace.root().join("dir"),
            workspace.root().join("inside"),
        )
        .unwrap();
        assert_eq!(
            workspace.resolve_existing("inside/a.txt").unwrap(),
            workspace.root().join("dir/a.txt")
        );
        assert_eq!(
            workspace.resolve_for_write("inside/new.txt").unwrap(),
            workspace.root().join("dir/new.txt")
        );
    }

    #[test]
    fn symlinks_leading_outside_are_refused() {
        let (base, workspace) = workspace();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret.txt"), "secret").unwrap();
        symlink(
            outside.join("secret.txt"),
            workspace.root().join("link.txt"),
        )
        .unwrap();
        symlink(&outside, workspace.root().join("out")).unwrap();
        symlink("/etc", workspace.root().join("etc")).unwrap();

        assert!(denied(workspace.resolve_existing("link.txt")).contains("outside"));
        assert!(denied(workspace.resolve_existing("out/secret.txt")).contains("outside"));
        assert!(denied(workspace.resolve_existing("out")).contains("outside"));
        assert!(denied(workspace.resolve_existing("etc/passwd")).contains("outside"));
        // Writing through the link, or through a link as a parent directory.
        assert!(denied(workspace.resolve_for_write("link.txt")).contains("outside"));
        assert!(denied(workspace.resolve_for_write("out/new.txt")).contains("outside"));
        assert!(denied(workspace.resolve_for_write("out/deeper/new.txt")).contains("outside"));
        assert!(!outside.join("deeper").exists());
    }

    #[test]
    fn dangling_links_are_not_followed_for_writing() {
        let (base, workspace) = workspace();
        let target = base.path().join("would-be-created.txt");
        symlink(&target, workspace.root().join("dangling")).unwrap();
        assert!(denied(workspace.resolve_for_write("dangling")).contains("does not exist"));
        assert!(!target.exists());
    }

    #[test]
    fn writing_creates_parent_directories_inside() {
        let (_base, workspace) = workspace();
        let target = workspace.resolve_for_write("a/b/c.txt").unwrap();
        assert_eq!(target, workspace.root().join("a/b/c.txt"));
        assert!(workspace.root().join("a/b").is_dir());
        fs::write(workspace.root().join("file"), "x").unwrap();
        assert!(matches!(
            workspace.resolve_for_write("file/c.txt"),
            Err(PathError::Failed(message)) if message.contains("not a directory")
        ));
        assert!(matches!(
            workspace.resolve_for_write("a"),
            Err(PathError::Failed(message)) if message.contains("is a directory")
        ));
        assert!(matches!(
            workspace.resolve_for_write("."),
            Err(PathError::Failed(message)) if message.contains("give a file name")
        ));
    }
}
