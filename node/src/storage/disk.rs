//! Where a node's files live: the operating system's, or files under a
//! [`FaultyDisk`] that a simulation can fill up, make fail, or switch off at
//! any write.
//!
//! Everything a node keeps on disk reaches it through one interface, redb's
//! `StorageBackend` (read, write, set_len, sync_data): redb's databases (the
//! state machine) and the log's segment files alike. Putting the faults
//! there, below both, tests what a real disk does to the whole stack: redb's
//! commit protocol, the log's records and checksums, our stores' choice of
//! which writes to fsync, and the node's recovery on restart, together.
//!
//! The model of a disk that loses power: what was written since the last
//! successful `sync_data` of a file is lost or kept page by page, each page
//! independently, and the file's length is either the synced one or the
//! current one. A failed `sync_data` leaves the same uncertainty behind and
//! then forgets that the pages were dirty, as Linux does after an fsync
//! error: a later successful sync does not bring them back. Directory
//! operations (create, rename, remove) are taken to be durable once done;
//! the stores sync the directory after each, which this model does not
//! check.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redb::{Database, DatabaseError, StorageBackend};

/// How a store opens its database files. `Disk::default()` is the
/// operating system's.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    faulty: Option<Arc<FaultyDisk>>,
}

impl Disk {
    /// Files under `faults`' control.
    pub fn faulty(faults: Arc<FaultyDisk>) -> Disk {
        Disk {
            faulty: Some(faults),
        }
    }

    /// Opens the existing database at `path`.
    pub(crate) fn open(
        &self,
        builder: &redb::Builder,
        path: &Path,
    ) -> Result<Database, DatabaseError> {
        match &self.faulty {
            None => builder.open(path),
            Some(disk) => builder.create_with_backend(disk.file(path, false)?),
        }
    }

    /// Opens the file at `path` for reading and writing, creating it if
    /// `create`: how the log reaches its segment files.
    pub(crate) fn file(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageBackend>> {
        match &self.faulty {
            None => Ok(Box::new(OsFile(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(path)?,
            ))),
            Some(disk) => Ok(Box::new(disk.file(path, create)?)),
        }
    }

    /// Whether the files live on a simulated disk.
    pub(crate) fn is_simulated(&self) -> bool {
        self.faulty.is_some()
    }

    /// Creates a new database at `path` (or opens it if it exists).
    pub(crate) fn create(
        &self,
        builder: &redb::Builder,
        path: &Path,
    ) -> Result<Database, DatabaseError> {
        match &self.faulty {
            None => builder.create(path),
            Some(disk) => builder.create_with_backend(disk.file(path, true)?),
        }
    }
}

/// A file of the operating system, behind the same interface as a
/// [`FaultyDisk`]'s files.
#[derive(Debug)]
struct OsFile(File);

impl StorageBackend for OsFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write_all_at(data, offset)
    }
}

/// What a [`FaultyDisk`] does to the next operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskMode {
    /// Every operation succeeds.
    Healthy,
    /// Growing a file fails with ENOSPC; writes inside it succeed.
    Full,
    /// One write or sync in `one_in` fails with EIO.
    Flaky { one_in: u32 },
    /// The power goes off at the `after`-th write, set_len or sync from
    /// now: that operation and every later one fail, and unsynced writes
    /// are lost as in [`FaultyDisk::power_loss`].
    PowerOffAfter { after: u32 },
}

/// Counts of what a [`FaultyDisk`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Operations that failed because of the mode (not because the power
    /// was off).
    pub faults: u64,
    pub power_losses: u64,
    /// Dirty pages a power loss or failed sync threw away.
    pub pages_lost: u64,
}

/// The disk of one simulated node: its files are real (in a directory the
/// simulation owns), but every write is remembered until synced so that a
/// power loss can take it back. Deterministic for a seed, given the same
/// sequence of operations.
pub struct FaultyDisk {
    state: Mutex<DiskState>,
}

impl fmt::Debug for FaultyDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FaultyDisk")
            .field("mode", &s.mode)
            .field("generation", &s.generation)
            .field("stats", &s.stats)
            .finish_non_exhaustive()
    }
}

const PAGE: u64 = 4096;

struct DiskState {
    rng: ChaCha8Rng,
    mode: DiskMode,
    /// Bumped by every power loss: files opened before it are dead.
    generation: u64,
    /// By inode: what is unsynced belongs to the file, not to one open
    /// handle (a sync through any handle makes all of it durable, and what
    /// a crashed process wrote stays at risk until someone syncs it).
    files: std::collections::BTreeMap<Inode, FileState>,
    stats: DiskStats,
}

/// (device, inode). Stable while the state holds the file open, which it
/// does for as long as it is tracked, so the number cannot be reused.
type Inode = (u64, u64);

struct FileState {
    file: File,
    /// Open handles (redb databases) on this file.
    handles: usize,
    synced_len: u64,
    /// Content at the last sync of every page written since, by page
    /// number (shorter than a page, or empty, where the file was shorter).
    dirty: std::collections::BTreeMap<u64, Vec<u8>>,
}

impl FaultyDisk {
    pub fn new(seed: u64) -> Arc<FaultyDisk> {
        Arc::new(FaultyDisk {
            state: Mutex::new(DiskState {
                rng: ChaCha8Rng::seed_from_u64(seed),
                mode: DiskMode::Healthy,
                generation: 0,
                files: Default::default(),
                stats: DiskStats::default(),
            }),
        })
    }

    pub fn set_mode(&self, mode: DiskMode) {
        self.lock().mode = mode;
    }

    pub fn mode(&self) -> DiskMode {
        self.lock().mode
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Whether the power went off (by [`DiskMode::PowerOffAfter`]) since
    /// `generation`.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The power goes off: every file loses some of what was written to it
    /// since its last sync, and every open file is dead from now on (its
    /// database must be dropped and opened again).
    pub fn power_loss(&self) {
        self.lock().power_loss();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(self: &Arc<Self>, path: &Path, create: bool) -> io::Result<FaultyFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let meta = file.metadata()?;
        let id = (meta.dev(), meta.ino());
        let mut s = self.lock();
        let generation = s.generation;
        s.files
            .entry(id)
            .or_insert_with(|| FileState {
                file,
                handles: 0,
                synced_len: meta.len(),
                dirty: Default::default(),
            })
            .handles += 1;
        Ok(FaultyFile {
            disk: self.clone(),
            path: path.to_path_buf(),
            generation,
            id,
        })
    }
}

impl DiskState {
    fn power_loss(&mut self) {
        self.stats.power_losses += 1;
        self.generation += 1;
        let ids: Vec<Inode> = self.files.keys().copied().collect();
        for id in ids {
            self.lose_unsynced(id);
        }
        self.files.clear();
    }

    /// Keeps or reverts each dirty page of file `id` at random, picks its
    /// length, and forgets that anything was dirty.
    fn lose_unsynced(&mut self, id: Inode) {
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        let dirty = std::mem::take(&mut f.dirty);
        let file = &f.file;
        let current = file.metadata().map(|m| m.len()).unwrap_or(f.synced_len);
        let len = if self.rng.random_bool(0.5) {
            f.synced_len
        } else {
            current
        };
        let mut lost = 0;
        for (page, old) in dirty {
            if self.rng.random_bool(0.5) {
                continue;
            }
            lost += 1;
            let start = page * PAGE;
            if start >= len {
                continue;
            }
            let mut content = old;
            content.resize(PAGE.min(len - start) as usize, 0);
            // Best effort: this is the simulation's own bookkeeping on a
            // file it owns; a failure here only weakens the fault.
            let _ = file.write_all_at(&content, start);
        }
        let _ = file.set_len(len);
        f.synced_len = len;
        self.stats.pages_lost += lost;
    }

    /// The file of an operation, or the error it gets from a dead disk.
    fn live(&mut self, h: &FaultyFile) -> io::Result<&mut FileState> {
        if h.generation != self.generation {
            return Err(io::Error::other(format!(
                "simulated power loss: {} is gone",
                h.path.display()
            )));
        }
        self.files
            .get_mut(&h.id)
            .ok_or_else(|| io::Error::other(format!("{} was closed", h.path.display())))
    }

    /// Applies the mode to a write, set_len or sync. `grows` is whether it
    /// would make the file longer.
    fn admit(&mut self, h: &FaultyFile, grows: bool) -> io::Result<()> {
        self.live(h)?;
        match self.mode {
            DiskMode::Healthy => Ok(()),
            DiskMode::Full if grows => {
                self.stats.faults += 1;
                Err(io::Error::from_raw_os_error(28)) // ENOSPC
            }
            DiskMode::Full => Ok(()),
            DiskMode::Flaky { one_in } => {
                if one_in > 0 && self.rng.random_range(0..one_in) == 0 {
                    self.stats.faults += 1;
                    Err(io::Error::from_raw_os_error(5)) // EIO
                } else {
                    Ok(())
                }
            }
            DiskMode::PowerOffAfter { after } => {
                if after <= 1 {
                    self.mode = DiskMode::Healthy;
                    self.stats.faults += 1;
                    self.power_loss();
                    Err(io::Error::other(format!(
                        "simulated power loss while writing {}",
                        h.path.display()
                    )))
                } else {
                    self.mode = DiskMode::PowerOffAfter { after: after - 1 };
                    Ok(())
                }
            }
        }
    }
}

/// One open database file on a [`FaultyDisk`]: redb's storage backend.
struct FaultyFile {
    disk: Arc<FaultyDisk>,
    path: PathBuf,
    generation: u64,
    id: Inode,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Remembers the synced content of the pages `[start, end)` touches before
/// they change.
fn remember(f: &mut FileState, start: u64, end: u64) -> io::Result<()> {
    let current = f.file.metadata()?.len();
    let mut page = start / PAGE;
    while page * PAGE < end {
        if !f.dirty.contains_key(&page) {
            let from = page * PAGE;
            let n = PAGE.min(current.saturating_sub(from)) as usize;
            let mut old = vec![0; n];
            if n > 0 {
                f.file.read_exact_at(&mut old, from)?;
            }
            f.dirty.insert(page, old);
        }
        page += 1;
    }
    Ok(())
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> Result<u64, io::Error> {
        let mut s = self.disk.lock();
        let f = s.live(self)?;
        Ok(f.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        let f = s.live(self)?;
        f.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        let current = s.live(self)?.file.metadata()?.len();
        s.admit(self, len > current)?;
        let f = s.live(self)?;
        // Shrinking drops pages a power loss may have to bring back.
        if len < current {
            remember(f, len, current)?;
        }
        f.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        if let Err(e) = s.admit(self, false) {
            // After a failed sync the kernel may have dropped the dirty
            // pages or written them; either way they count as clean now.
            if s.generation == self.generation {
                s.lose_unsynced(self.id);
            }
            return Err(e);
        }
        let f = s.live(self)?;
        f.file.sync_data()?;
        f.synced_len = f.file.metadata()?.len();
        f.dirty.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        let current = s.live(self)?.file.metadata()?.len();
        let end = offset.saturating_add(data.len() as u64);
        s.admit(self, end > current)?;
        let f = s.live(self)?;
        remember(f, offset, end)?;
        f.file.write_all_at(data, offset)
    }

    fn close(&self) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        if let Ok(f) = s.live(self) {
            f.handles = f.handles.saturating_sub(1);
            // A closed file keeps its unsynced pages at risk until the
            // next power loss or sync; one with none has nothing to lose.
            if f.handles == 0 && f.dirty.is_empty() {
                s.files.remove(&self.id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE as usize]
    }

    /// Writes page 0 (synced), then rewrites it and appends page 1 without
    /// a sync, loses power, and returns the file's content.
    fn unsynced_rewrite_then_power_loss(seed: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let disk = FaultyDisk::new(seed);
        let f = disk.file(&path, true).unwrap();
        f.write(0, &page(1)).unwrap();
        f.sync_data().unwrap();
        f.write(0, &page(2)).unwrap();
        f.write(PAGE, &page(3)).unwrap();
        disk.power_loss();
        assert!(f.write(0, &page(4)).is_err(), "a dead file takes no writes");
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn a_power_loss_keeps_what_was_synced_and_loses_some_of_the_rest() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let content = unsynced_rewrite_then_power_loss(seed);
            let first = content[..PAGE as usize].to_vec();
            assert!(
                first == page(1) || first == page(2),
                "page 0 is the synced or the new content, never a mix"
            );
            let second = match content.len() as u64 {
                PAGE => None,
                len if len == 2 * PAGE => Some(content[PAGE as usize]),
                len => panic!("length {len} is neither the synced nor the current one"),
            };
            assert!(matches!(second, None | Some(0) | Some(3)));
            outcomes.insert((first[0], second));
        }
        assert!(
            outcomes.contains(&(1, None)),
            "sometimes everything unsynced is lost"
        );
        assert!(
            outcomes.contains(&(2, Some(3))),
            "sometimes all of it survives"
        );
        assert_eq!(
            unsynced_rewrite_then_power_loss(7),
            unsynced_rewrite_then_power_loss(7),
            "a seed decides"
        );
    }

    #[test]
    fn a_full_disk_refuses_to_grow_a_file_with_enospc() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new(1);
        let f = disk.file(&dir.path().join("f"), true).unwrap();
        f.write(0, &page(1)).unwrap();
        disk.set_mode(DiskMode::Full);
        f.write(0, &page(2)).unwrap();
        let err = f.write(PAGE, &page(2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            f.set_len(3 * PAGE).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        f.sync_data().unwrap();
        assert_eq!(disk.stats().faults, 2);
    }

    #[test]
    fn the_power_goes_off_at_the_chosen_operation_and_stays_off() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new(1);
        let f = disk.file(&dir.path().join("f"), true).unwrap();
        disk.set_mode(DiskMode::PowerOffAfter { after: 3 });
        f.write(0, &page(1)).unwrap();
        f.sync_data().unwrap();
        assert!(f.write(PAGE, &page(2)).is_err());
        assert!(f.read(0, &mut [0; 16]).is_err());
        assert_eq!(disk.generation(), 1);
        assert_eq!(disk.stats().power_losses, 1);
        let g = disk.file(&dir.path().join("f"), false).unwrap();
        let mut synced = vec![0; PAGE as usize];
        g.read(0, &mut synced).unwrap();
        assert_eq!(synced, page(1), "what was synced before the power went off");
    }

    #[test]
    fn a_failed_sync_leaves_the_pages_clean_whatever_landed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FaultyDisk::new(3);
        let f = disk.file(&dir.path().join("f"), true).unwrap();
        f.write(0, &page(1)).unwrap();
        disk.set_mode(DiskMode::Flaky { one_in: 1 });
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        disk.set_mode(DiskMode::Healthy);
        let before = disk.stats().pages_lost;
        disk.power_loss();
        assert_eq!(
            disk.stats().pages_lost,
            before,
            "nothing was dirty any more: the failed sync already decided"
        );
    }

    /// A database on the faulty disk: durable commits survive a power
    /// loss, and a full disk is a clear error, not a panic.
    #[test]
    fn redb_on_the_faulty_disk_recovers_its_last_durable_commit() {
        const T: redb::TableDefinition<'_, u64, u64> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let faults = FaultyDisk::new(5);
        let disk = Disk::faulty(faults.clone());
        let builder = redb::Database::builder();
        let db = disk.create(&builder, &path).unwrap();
        let put = |db: &Database, k: u64, durable: bool| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            if !durable {
                txn.set_durability(redb::Durability::None)?;
            }
            txn.open_table(T)?.insert(k, k)?;
            txn.commit()?;
            Ok(())
        };
        put(&db, 1, true).unwrap();
        put(&db, 2, false).unwrap();
        faults.power_loss();
        drop(db);
        let db = disk.open(&builder, &path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(t.get(1).unwrap().map(|v| v.value()), Some(1));
        assert!(t.get(2).unwrap().is_none(), "a non-durable commit is gone");
        drop(t);
        drop(txn);
        faults.set_mode(DiskMode::Full);
        let mut failed = None;
        for k in 10..10_000 {
            if let Err(e) = put(&db, k, true) {
                failed = Some(e.to_string());
                break;
            }
        }
        let failed = failed.expect("a full disk stops the writes");
        assert!(failed.contains("No space left on device"), "{failed}");
    }
}
