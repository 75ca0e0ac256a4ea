//! Files loaded into one immutable state that is replaced as a whole when
//! any of them changes: how certificates rotate without a restart.
//!
//! A [`Reloadable`] reads its files, hands their contents to a loader and
//! keeps the result. [`Reloadable::reload_if_changed`] reads them again and,
//! if any differs from what was last loaded, loads a new state. If that
//! fails, the previous state stays in use, because a half-written rotation
//! must not take a service down, and the next check tries again.
//! [`Reloadable::spawn_watch`] checks periodically for as long as anyone
//! holds the `Reloadable`.
//!
//! A change is any difference in content, not in modification time: a
//! re-issued certificate usually has the same length, and two writes
//! within the file system's timestamp granularity would otherwise look
//! like none. The files are a few KiB, so reading them on every check
//! costs nothing that matters.
//!
//! The internal servers and clients use it ([`crate::mtls`]). The
//! terminal edge's `Edge` in terminal-gateway reloads the same way and
//! could be built on it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// Why files could not be loaded. Each error names the file where it can.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl ReloadError {
    /// `path` holds something unusable.
    pub fn invalid(path: &Path, reason: impl ToString) -> ReloadError {
        ReloadError::Invalid {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

type Loader<T> = dyn Fn(&[&[u8]]) -> Result<T, ReloadError> + Send + Sync;

/// A state loaded from files, replaced when they change. Cloning shares it.
pub struct Reloadable<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Reloadable<T> {
    fn clone(&self) -> Self {
        Reloadable {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    paths: Vec<PathBuf>,
    load: Box<Loader<T>>,
    state: RwLock<Arc<T>>,
    /// The contents the current state was loaded from. Held while a reload
    /// reads and loads, so two reloads cannot interleave and leave an older
    /// state in use.
    loaded_from: Mutex<Vec<Vec<u8>>>,
    /// Counts the reloads that put a new state in use.
    generation: watch::Sender<u64>,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Reads `paths` and loads the first state; `load` gets their contents
    /// in the same order. An error here is the caller's to report (a
    /// service does not start on a bad file).
    pub fn load(
        paths: Vec<PathBuf>,
        load: impl Fn(&[&[u8]]) -> Result<T, ReloadError> + Send + Sync + 'static,
    ) -> Result<Reloadable<T>, ReloadError> {
        let contents = read_all(&paths)?;
        let state = load(&borrowed(&contents))?;
        Ok(Reloadable {
            inner: Arc::new(Inner {
                paths,
                load: Box::new(load),
                state: RwLock::new(Arc::new(state)),
                loaded_from: Mutex::new(contents),
                generation: watch::channel(0).0,
            }),
        })
    }

    /// The state in use now.
    pub fn current(&self) -> Arc<T> {
        self.inner.current()
    }

    /// Changes with every reload that put a new state in use.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Loads a new state if any file's content changed. `Ok(true)`: a new
    /// state is in use. On an error the previous state stays in use and
    /// the next call tries again. Blocking (it reads files).
    pub fn reload_if_changed(&self) -> Result<bool, ReloadError> {
        self.inner.reload_if_changed()
    }

    /// Checks every `every`, on the blocking pool, and tells `report` each
    /// outcome (`Ok(false)`: nothing changed). Stops once every clone of
    /// this `Reloadable` is dropped, so what owns it (a server, a channel)
    /// need not stop it. Needs a Tokio runtime.
    pub fn spawn_watch(
        &self,
        every: Duration,
        report: impl Fn(Result<bool, &ReloadError>) + Send + 'static,
    ) {
        let weak: Weak<Inner<T>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let outcome = tokio::task::spawn_blocking(move || inner.reload_if_changed()).await;
                match outcome {
                    Ok(result) => report(result.as_ref().copied()),
                    // The runtime is shutting down.
                    Err(_) => return,
                }
            }
        });
    }
}

impl<T> Inner<T> {
    fn current(&self) -> Arc<T> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn reload_if_changed(&self) -> Result<bool, ReloadError> {
        let mut loaded_from = self
            .loaded_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let contents = read_all(&self.paths)?;
        if *loaded_from == contents {
            return Ok(false);
        }
        let state = (self.load)(&borrowed(&contents))?;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        *loaded_from = contents;
        self.generation
            .send_modify(|count| *count = count.wrapping_add(1));
        Ok(true)
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, ReloadError> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|source| ReloadError::Read {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

fn borrowed(contents: &[Vec<u8>]) -> Vec<&[u8]> {
    contents.iter().map(Vec::as_slice).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(dir: &Path) -> Reloadable<u32> {
        let path = dir.join("n");
        let shown = path.clone();
        Reloadable::load(vec![path], move |contents| {
            let text =
                std::str::from_utf8(contents[0]).map_err(|e| ReloadError::invalid(&shown, e))?;
            text.trim()
                .parse()
                .map_err(|e| ReloadError::invalid(&shown, e))
        })
        .expect("the first file loads")
    }

    #[test]
    fn a_change_of_content_is_loaded_and_a_bad_one_keeps_the_previous() {
        let dir = std::env::temp_dir().join(format!("reload-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory");
        std::fs::write(dir.join("n"), "1").expect("written");
        let numbers = numbers(&dir);
        let reloads = numbers.reloads();
        assert_eq!(*numbers.current(), 1);
        assert!(!numbers.reload_if_changed().expect("unchanged"));

        // Same length, written straight after: only the content tells.
        std::fs::write(dir.join("n"), "2").expect("written");
        assert!(numbers.reload_if_changed().expect("loads"));
        assert_eq!(*numbers.current(), 2);
        assert_eq!(*reloads.borrow(), 1);

        std::fs::write(dir.join("n"), "two").expect("written");
        let error = numbers.reload_if_changed().expect_err("not a number");
        assert!(error.to_string().contains("/n"), "names the file: {error}");
        assert_eq!(*numbers.current(), 2, "the previous state stays in use");
        assert!(numbers.reload_if_changed().is_err(), "and is tried again");

        std::fs::remove_file(dir.join("n")).expect("removed");
        assert!(matches!(
            numbers.reload_if_changed(),
            Err(ReloadError::Read { .. })
        ));
        assert_eq!(*numbers.current(), 2);

        std::fs::write(dir.join("n"), "3").expect("written");
        assert!(numbers.reload_if_changed().expect("loads"));
        assert_eq!(*numbers.current(), 3);
        assert_eq!(*reloads.borrow(), 2, "only loads that took effect count");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
