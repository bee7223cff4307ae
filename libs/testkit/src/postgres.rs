//! A real PostgreSQL server for tests.
//!
//! When `AGENTMESH_TEST_POSTGRES_URL` is set (the Makefile's test target starts
//! one server for the whole run), tests use that server. Otherwise the first
//! test in a process starts a private one: `initdb` into a fresh temporary
//! directory and `pg_ctl start` on a free loopback port, run as the
//! `postgres` account when the tests run as root (PostgreSQL refuses root).
//! Every test gets a database of its own, so tests run in parallel.
//!
//! A test that needs to stop the server (a database restart) takes a
//! [`private`] one instead: always started by this process, never shared.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tempfile::TempDir;

/// A running server (or the one named by `AGENTMESH_TEST_POSTGRES_URL`).
#[derive(Debug)]
pub struct PostgresServer {
    /// `postgres://postgres@127.0.0.1:PORT` without a database name.
    base_url: String,
    owned: Option<OwnedServer>,
}

#[derive(Debug)]
struct OwnedServer {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    /// The server's options (port, socket directory, settings), for a restart.
    options: String,
    log: PathBuf,
    _temp: TempDir,
}

static SHARED: Mutex<Weak<PostgresServer>> = Mutex::new(Weak::new());
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// The server this process's tests share, started on first use; it stops when
/// the last test holding it drops it.
pub async fn shared() -> Arc<PostgresServer> {
    tokio::task::spawn_blocking(|| {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(PostgresServer::start());
        *shared = Arc::downgrade(&server);
        server
    })
    .await
    .expect("starting PostgreSQL panicked")
}

/// A server of the calling test's own, started now, which it may stop and
/// start again ([`PostgresServer::restart`]); it stops when dropped.
pub async fn private() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start_owned)
        .await
        .expect("starting PostgreSQL panicked")
}

impl PostgresServer {
    fn start() -> Self {
        if let Ok(url) = std::env::var("AGENTMESH_TEST_POSTGRES_URL") {
            return Self {
                base_url: url.trim_end_matches('/').to_owned(),
                owned: None,
            };
        }
        Self::start_owned()
    }

    fn start_owned() -> Self {
        let bin_dir = find_bin_dir();
        let temp = tempfile::Builder::new()
            .prefix("agentmesh-pg-")
            .tempdir()
            .expect("create a temporary directory");
        let data_dir = temp.path().join("data");
        let as_root = is_root();
        if as_root {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(temp.path()));
        }
        run(postgres_command(&bin_dir.join("initdb"), as_root)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data_dir));
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            temp.path().display()
        );
        let owned = OwnedServer {
            bin_dir,
            data_dir,
            options,
            log: temp.path().join("server.log"),
            _temp: temp,
        };
        start_server(&owned.bin_dir, &owned.data_dir, &owned.options, &owned.log);
        Self {
            base_url: format!("postgres://postgres@127.0.0.1:{port}"),
            owned: Some(owned),
        }
    }

    /// Stops the server (fast shutdown: every session is cut, as when a
    /// database fails over), keeps it down for `down`, then starts it
    /// again on the same port and data. Panics for a server this process
    /// does not own: take it from [`private`].
    pub async fn restart(&self, down: std::time::Duration) {
        let owned = self
            .owned
            .as_ref()
            .expect("restart needs a server of this process (postgres::private)");
        let (bin_dir, data_dir, options, log) = (
            owned.bin_dir.clone(),
            owned.data_dir.clone(),
            owned.options.clone(),
            owned.log.clone(),
        );
        tokio::task::spawn_blocking(move || {
            run(postgres_command(&bin_dir.join("pg_ctl"), is_root())
                .args(["-w", "-m", "fast", "-D"])
                .arg(&data_dir)
                .arg("stop"));
            std::thread::sleep(down);
            start_server(&bin_dir, &data_dir, &options, &log);
        })
        .await
        .expect("restarting PostgreSQL panicked");
    }

    /// The process id of the server this process started (from its
    /// `postmaster.pid`), to measure its CPU; `None` for one it did not.
    pub fn pid(&self) -> Option<u32> {
        let owned = self.owned.as_ref()?;
        let text = std::fs::read_to_string(owned.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Creates a fresh database whose name starts with `prefix` and returns
    /// its URL.
    pub async fn create_database(&self, prefix: &str) -> String {
        let name = format!(
            "{}_{}_{}",
            prefix.to_ascii_lowercase(),
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = format!("{}/postgres", self.base_url);
        let statement = format!("CREATE DATABASE \"{name}\"");
        let output = tokio::process::Command::new("psql")
            .args([&admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", &statement])
            .output()
            .await
            .expect("run psql (install postgresql-client)");
        assert!(
            output.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("{}/{name}", self.base_url)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(owned) = &self.owned {
            let status = postgres_command(&owned.bin_dir.join("pg_ctl"), is_root())
                .args(["-m", "immediate", "-D"])
                .arg(&owned.data_dir)
                .arg("stop")
                .output();
            if let Err(err) = status {
                eprintln!("could not stop the test PostgreSQL server: {err}");
            }
        }
    }
}

/// `pg_ctl start`, waiting until the server accepts connections.
fn start_server(bin_dir: &Path, data_dir: &Path, options: &str, log: &Path) {
    run(postgres_command(&bin_dir.join("pg_ctl"), is_root())
        .args(["-w", "-t", "60", "-l"])
        .arg(log)
        .arg("-D")
        .arg(data_dir)
        .args(["-o", options, "start"]));
}

fn find_bin_dir() -> PathBuf {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|dir| dir.join("initdb").is_file())
        .expect("no PostgreSQL server found: install it (apt-get install postgresql) or set AGENTMESH_TEST_POSTGRES_URL")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL program, as the `postgres` account when root.
fn postgres_command(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free loopback port")
}
