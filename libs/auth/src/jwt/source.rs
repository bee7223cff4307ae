//! Where an issuer's keys come from and how they stay current: a JWKS file
//! re-read when it changes on disk, or a JWKS URL fetched at start, every
//! `jwks_refresh`, and soon after a token names a key id nobody knows
//! (which is how a key rotation shows), at most once per
//! [`REFETCH_MIN_INTERVAL`] so unknown ids cannot make us hammer the
//! issuer.
//!
//! The current [`KeySet`] is swapped in whole (readers never wait); a
//! reload or fetch that fails keeps the last good set and logs why. Every
//! change calls `on_change` (the verifier drops its token cache then).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::keyset::{KeySet, KeySetError};
use crate::file_stamp::FileStamp;

/// The shortest time between two fetches asked for by unknown key ids.
pub(crate) const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// How long a fetch of the JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How soon a failed fetch is retried (unless `jwks_refresh` is sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Where the keys are read from.
#[derive(Debug)]
enum Origin {
    File {
        path: PathBuf,
        /// The file's stamp when it was read (taken before reading).
        loaded: Option<FileStamp>,
    },
    Url {
        url: reqwest::Url,
        refresh: Duration,
        /// Wakes the fetch task for an unknown key id.
        wake: Arc<Notify>,
        /// When a refetch was last asked for.
        last_asked: Mutex<Option<Instant>>,
    },
}

/// The issuer's current keys and where they come from.
#[derive(Debug)]
pub(crate) struct KeySource {
    keys: Arc<ArcSwap<KeySet>>,
    origin: Origin,
}

/// The keys cannot be read at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// The JWKS file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The JWKS file's content is wrong.
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: KeySetError },
}

impl KeySource {
    /// Keys from a JWKS file, read now.
    pub(crate) fn file(path: &Path) -> Result<Self, SourceError> {
        let loaded = FileStamp::of(path);
        let set = read_file(path)?;
        Ok(Self {
            keys: Arc::new(ArcSwap::from_pointee(set)),
            origin: Origin::File {
                path: path.to_owned(),
                loaded,
            },
        })
    }

    /// Keys from a JWKS URL: none until the task of [`Self::watch`] has
    /// fetched them.
    pub(crate) fn url(url: reqwest::Url, refresh: Duration) -> Self {
        Self {
            keys: Arc::new(ArcSwap::from_pointee(KeySet::default())),
            origin: Origin::Url {
                url,
                refresh,
                wake: Arc::new(Notify::new()),
                last_asked: Mutex::new(None),
            },
        }
    }

    /// The current keys.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// A token named a key nobody knows: fetch the URL again soon, unless
    /// that was asked for less than [`REFETCH_MIN_INTERVAL`] ago. (A file
    /// is re-read on its own schedule.)
    pub(crate) fn unknown_key(&self) {
        let Origin::Url {
            wake, last_asked, ..
        } = &self.origin
        else {
            return;
        };
        let mut last = last_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < REFETCH_MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        wake.notify_one();
    }

    /// Keeps the keys current until the returned task is aborted: the file
    /// checked every `interval`, or the URL fetched now, every
    /// `jwks_refresh` and on unknown key ids. `on_change` runs after each
    /// new set is in place.
    pub(crate) fn watch(
        &self,
        interval: Duration,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let keys = Arc::clone(&self.keys);
        match &self.origin {
            Origin::File { path, loaded } => {
                tokio::spawn(watch_file(path.clone(), *loaded, interval, keys, on_change))
            }
            Origin::Url {
                url, refresh, wake, ..
            } => tokio::spawn(fetch_loop(
                url.clone(),
                *refresh,
                Arc::clone(wake),
                keys,
                on_change,
            )),
        }
    }
}

fn read_file(path: &Path) -> Result<KeySet, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    KeySet::parse(&bytes).map_err(|error| SourceError::Invalid {
        path: path.to_owned(),
        error,
    })
}

async fn watch_file(
    path: PathBuf,
    mut last: Option<FileStamp>,
    interval: Duration,
    keys: Arc<ArcSwap<KeySet>>,
    on_change: impl Fn(),
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = FileStamp::of(&path);
        if now == last {
            continue;
        }
        last = now;
        // A writer may not be done yet: the next change of the stamp reads
        // the file again.
        match read_file(&path) {
            Ok(fresh) => {
                tracing::info!(path = %path.display(), keys = fresh.len(), "reloaded the JWKS file");
                keys.store(Arc::new(fresh));
                on_change();
            }
            Err(err) => {
                tracing::warn!(error = %err, "keeping the JWT keys loaded before: the JWKS file changed but cannot be used");
            }
        }
    }
}

async fn fetch_loop(
    url: reqwest::Url,
    refresh: Duration,
    wake: Arc<Notify>,
    keys: Arc<ArcSwap<KeySet>>,
    on_change: impl Fn(),
) {
    let client = match client() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot fetch the JWKS: JWTs will be refused");
            return;
        }
    };
    loop {
        let wait = match fetch(&client, &url).await {
            Ok(fresh) => {
                tracing::info!(url = %url, keys = fresh.len(), "fetched the JWKS");
                keys.store(Arc::new(fresh));
                on_change();
                refresh
            }
            Err(err) => {
                tracing::warn!(url = %url, error = %err, "keeping the JWT keys fetched before: the JWKS cannot be fetched");
                refresh.min(RETRY_AFTER_FAILURE)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

fn client() -> Result<reqwest::Client, String> {
    // reqwest uses the process's rustls provider; building a client without
    // one would panic. An Err of the install only means one is in place.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err("no TLS crypto provider could be installed".to_owned());
    }
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .user_agent(concat!("agentmesh/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| error_chain(&err))
}

/// One fetch of the JWKS URL.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<KeySet, String> {
    let mut response = client
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|err| error_chain(&err.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(format!(
            "the document is larger than {MAX_JWKS_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| error_chain(&err.without_url()))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the document is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body).map_err(|err| err.to_string())
}

/// An error and its causes, one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
