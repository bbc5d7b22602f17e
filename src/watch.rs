//! The file watch: the config file and every file it names (certificates, keys, CA
//! bundles, JWKS files, `{ file = ... }` secrets) are watched, and a change reloads
//! exactly as SIGHUP does ([`Reloader::reload`]), including the atomic symlink swap a
//! Kubernetes ConfigMap or Secret volume makes (`file -> ..data/file`,
//! `..data -> ..2026_12_06_...`, then `..data` renamed over).
//!
//! Two sources of wake-ups, one decision:
//!
//! - inotify (through `notify`) on the parent DIRECTORY of each file, of each symlink
//!   on its way and of where it finally lands: a watch on the file itself stays on the
//!   old inode after a rename or a symlink swap and misses every later change.
//! - a poll every few seconds, which catches what inotify cannot see (network and FUSE
//!   filesystems, a symlink chain through a folder nobody watches, a watched folder
//!   deleted and made again, an inotify limit reached).
//!
//! Either one only wakes the watcher. What decides is a fingerprint of each watched
//! file, taken by the loader just before it read that file: the SHA-256 of the
//! content of a regular file after following symlinks, the identity of anything else
//! (a FIFO a secret agent serves is never read here), or why it could not be read. A
//! reload happens when a fingerprint differs, so unrelated events in the same folder,
//! `touch`, or a swap to identical content do not reload; a burst of events (an editor's
//! save, a kubelet update, a certificate and its key written one after the other) is
//! settled first (no event for [`QUIET`]) and gives one reload.
//!
//! The watched set is what the last reload attempt read: after a successful one the new
//! config's files, after a failed one also whatever the broken config tried to read (so
//! that creating the missing file it names retries). `server.watch_files = false` stops
//! watching; the watcher then waits for a reload (SIGHUP) that turns it back on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use crate::proxy::Shared;
use crate::reload::Reloader;

/// How long no event must come before the files are compared.
pub const QUIET: Duration = Duration::from_millis(300);
/// A steady stream of events is compared at least this often.
const MAX_SETTLE: Duration = Duration::from_secs(2);
/// The poll while inotify watches the folders (a safety net).
const POLL_WITH_INOTIFY: Duration = Duration::from_secs(5);
/// The poll when inotify is not available: the only way changes are seen.
const POLL_ONLY: Duration = Duration::from_secs(2);
/// Symlinks followed from one path before giving up (as the kernel's limit).
const MAX_HOPS: usize = 40;

/// What a watched file looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fingerprint {
    /// A regular file (after following symlinks): the SHA-256 of its content.
    Content([u8; 32]),
    /// A FIFO, device or socket: never read (that would take a secret agent's answer);
    /// its identity only.
    Special { dev: u64, ino: u64, mode: u32 },
    /// Missing or unreadable, and why: appearing or becoming readable is a change.
    Unreadable(String),
}

/// The fingerprint of `path` now.
pub fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Err(e) => Fingerprint::Unreadable(e.kind().to_string()),
        Ok(m) if !m.is_file() => Fingerprint::Special {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
        },
        // Opened without blocking and checked again on the handle: a FIFO swapped in
        // between is refused, not waited on.
        Ok(_) => match crate::files::read_bounded(path) {
            Ok(bytes) => Fingerprint::Content(Sha256::digest(&bytes).into()),
            Err(e) => Fingerprint::Unreadable(e.to_string()),
        },
    }
}

/// Every path with its fingerprint now.
pub fn snapshot(paths: &[PathBuf]) -> Vec<(PathBuf, Fingerprint)> {
    paths.iter().map(|p| (p.clone(), fingerprint(p))).collect()
}

/// The paths of `snapshot` whose fingerprint is not the same now.
pub fn changed(snapshot: &[(PathBuf, Fingerprint)]) -> Vec<PathBuf> {
    snapshot
        .iter()
        .filter(|(p, f)| fingerprint(p) != *f)
        .map(|(p, _)| p.clone())
        .collect()
}

/// The folders to watch so that any change to what `paths` lead to is seen: for each
/// path and each symlink it goes through (the file itself or a folder on the way), the
/// folder holding the link, and the folder the file finally lands in. Canonical, so that
/// a folder reached through a swapped symlink is watched again under its new target.
pub fn dirs_to_watch(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let mut add = |d: &Path| {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if let Ok(c) = std::fs::canonicalize(d) {
            dirs.insert(c);
        }
    };
    for path in paths {
        let mut hop = path.clone();
        for _ in 0..MAX_HOPS {
            let parent = hop.parent().map(Path::to_path_buf).unwrap_or_default();
            add(&parent);
            // A symlinked folder on the way (`..data` in a Kubernetes volume) is swapped
            // in the folder that holds it.
            for a in parent.ancestors() {
                if a.as_os_str().is_empty() {
                    break;
                }
                if std::fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink()) {
                    add(a.parent().unwrap_or(Path::new("/")));
                }
            }
            match std::fs::read_link(&hop) {
                Ok(target) if target.is_absolute() => hop = target,
                Ok(target) => hop = parent.join(target),
                Err(_) => break,
            }
        }
    }
    dirs
}

/// Events that change nothing: opening or reading a file (our own fingerprinting
/// reads the files, and must not wake the watcher again).
fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

/// inotify on a set of folders.
struct Inotify {
    watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
}

impl Inotify {
    fn new(wake: Arc<Notify>) -> notify::Result<Inotify> {
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            match ev {
                Ok(e) if is_read_only(&e.kind) => {}
                // An error (a queue overflow among them) may hide a change: compare.
                _ => wake.notify_one(),
            }
        })?;
        Ok(Inotify {
            watcher,
            dirs: BTreeSet::new(),
        })
    }

    /// Watches exactly `want`, as far as possible; what could not be watched (a folder
    /// that does not exist yet) is tried again at the next refresh.
    fn set(&mut self, want: BTreeSet<PathBuf>) {
        use notify::Watcher;
        for gone in self.dirs.difference(&want) {
            // Fails when the folder was deleted (the kernel dropped the watch): fine.
            let _ = self.watcher.unwatch(gone);
        }
        self.dirs.retain(|d| want.contains(d));
        for d in want {
            if self.dirs.contains(&d) {
                continue;
            }
            match self.watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(d);
                }
                Err(e) => tracing::debug!(
                    target: "gatehouse::reload",
                    dir = %d.display(),
                    error = %e,
                    "cannot watch this folder; the poll covers it"
                ),
            }
        }
    }
}

/// Waits until no event came for [`QUIET`] (at most [`MAX_SETTLE`]).
async fn settle(wake: &Notify) {
    let start = Instant::now();
    loop {
        tokio::select! {
            _ = wake.notified() => {
                if start.elapsed() >= MAX_SETTLE {
                    return;
                }
            }
            _ = tokio::time::sleep(QUIET) => return,
        }
    }
}

/// Runs until `stop` turns true (or its sender is gone): watches what the reloader's
/// last attempt read and reloads through it when a file changed.
pub async fn run(reloader: Arc<Reloader>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let wake = Arc::new(Notify::new());
    let mut reloads = reloader.subscribe();
    let mut inotify: Option<Inotify> = None;
    let mut inotify_unavailable = false;
    while !*stop.borrow() {
        let enabled = shared.live.load().rt.server.watch_files;
        if !enabled {
            // Dropping it ends its thread.
            inotify = None;
        } else if !inotify_unavailable {
            if inotify.is_none() {
                match Inotify::new(wake.clone()) {
                    Ok(i) => inotify = Some(i),
                    Err(e) => {
                        inotify_unavailable = true;
                        tracing::warn!(
                            target: "gatehouse::reload",
                            error = %e,
                            "cannot watch files with inotify; polling them every {} s instead",
                            POLL_ONLY.as_secs()
                        );
                    }
                }
            }
            if let Some(i) = inotify.as_mut() {
                let paths: Vec<PathBuf> = reloader.watched().into_iter().map(|(p, _)| p).collect();
                let want = tokio::task::spawn_blocking(move || dirs_to_watch(&paths))
                    .await
                    .unwrap_or_default();
                i.set(want);
            }
        }
        let poll = if inotify.is_some() {
            POLL_WITH_INOTIFY
        } else {
            POLL_ONLY
        };
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() {
                    break;
                }
                continue;
            }
            // A reload (SIGHUP or ours): the watched set and `watch_files` may differ.
            r = reloads.changed() => {
                if r.is_err() {
                    break;
                }
                continue;
            }
            _ = wake.notified(), if enabled => settle(&wake).await,
            _ = tokio::time::sleep(poll), if enabled => {}
        }
        let r = reloader.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            let files = changed(&r.watched());
            if files.is_empty() {
                return false;
            }
            let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            tracing::info!(
                target: "gatehouse::reload",
                changed = %list.join(", "),
                "watched file changed: reloading"
            );
            let _ = r.reload();
            true
        })
        .await;
        if reloaded.unwrap_or(false) {
            // Our own reload's notice: already handled by the loop going round.
            reloads.borrow_and_update();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// What kubelet's atomic writer does: the files in a new timestamped folder, a
    /// `..data_tmp` symlink to it renamed over `..data`, the old folder deleted.
    fn publish(dir: &Path, n: u32, files: &[(&str, &str)]) {
        let ts = format!("..2026_12_06_00_00_0{n}");
        std::fs::create_dir_all(dir.join(&ts)).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(&ts).join(name), text).unwrap();
        }
        let old = std::fs::read_link(dir.join("..data")).ok();
        symlink(&ts, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).unwrap();
        }
    }

    #[test]
    fn a_symlink_swap_changes_the_fingerprint_and_the_watched_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        std::fs::create_dir(&dir).unwrap();
        publish(&dir, 1, &[("a.toml", "one"), ("b.key", "k")]);
        let a = dir.join("a.toml");
        let snap = snapshot(&[a.clone(), dir.join("b.key")]);
        let canon = std::fs::canonicalize(&dir).unwrap();
        let dirs = dirs_to_watch(std::slice::from_ref(&a));
        assert!(dirs.contains(&canon), "{dirs:?}");
        assert!(
            dirs.contains(&canon.join("..2026_12_06_00_00_01")),
            "{dirs:?}"
        );
        assert_eq!(changed(&snap), Vec::<PathBuf>::new());
        // Same content published again: nothing changed.
        publish(&dir, 2, &[("a.toml", "one"), ("b.key", "k")]);
        assert_eq!(changed(&snap), Vec::<PathBuf>::new());
        let dirs = dirs_to_watch(std::slice::from_ref(&a));
        assert!(
            dirs.contains(&canon.join("..2026_12_06_00_00_02")),
            "{dirs:?}"
        );
        assert!(
            !dirs.contains(&canon.join("..2026_12_06_00_00_01")),
            "{dirs:?}"
        );
        publish(&dir, 3, &[("a.toml", "two"), ("b.key", "k")]);
        assert_eq!(changed(&snap), vec![a]);
    }

    #[test]
    fn in_place_writes_renames_and_removal_change_it_touch_and_neighbours_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("s.key");
        std::fs::write(&f, "one").unwrap();
        let snap = snapshot(std::slice::from_ref(&f));
        std::fs::write(tmp.path().join("other"), "x").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&f)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        assert!(changed(&snap).is_empty());
        std::fs::write(&f, "two").unwrap();
        assert_eq!(changed(&snap), vec![f.clone()]);
        // An editor's save: a new file renamed over the old one.
        let snap = snapshot(std::slice::from_ref(&f));
        std::fs::write(tmp.path().join(".s.key.swp"), "three").unwrap();
        std::fs::rename(tmp.path().join(".s.key.swp"), &f).unwrap();
        assert_eq!(changed(&snap), vec![f.clone()]);
        let snap = snapshot(std::slice::from_ref(&f));
        std::fs::remove_file(&f).unwrap();
        assert_eq!(changed(&snap), vec![f.clone()]);
        // Appearing again is a change too.
        let snap = snapshot(std::slice::from_ref(&f));
        assert!(matches!(snap[0].1, Fingerprint::Unreadable(_)));
        std::fs::write(&f, "four").unwrap();
        assert_eq!(changed(&snap), vec![f]);
    }

    #[test]
    fn a_fifo_is_fingerprinted_without_being_read() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("secret");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A read would block forever: no writer.
        assert!(matches!(fingerprint(&fifo), Fingerprint::Special { .. }));
        assert_eq!(fingerprint(&fifo), fingerprint(&fifo));
    }

    #[test]
    fn relative_paths_and_symlinked_folders_are_watched_where_they_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("v1");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("tls.crt"), "c").unwrap();
        // /x/current -> v1 (a symlinked folder in the middle of the path).
        symlink("v1", tmp.path().join("current")).unwrap();
        let dirs = dirs_to_watch(&[tmp.path().join("current/tls.crt")]);
        let canon = std::fs::canonicalize(tmp.path()).unwrap();
        assert!(
            dirs.contains(&canon),
            "the folder holding `current`: {dirs:?}"
        );
        assert!(dirs.contains(&canon.join("v1")), "{dirs:?}");
    }
}
