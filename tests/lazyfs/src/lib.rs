//! A FUSE file system for tests that keeps every unsynced write in memory and can drop them all
//! at once: a simulated power cut, in the manner of LazyFS.
//!
//! It passes through to a backing directory. What a power cut can lose is file *data*:
//!
//! - `write`, `fallocate` and truncation (`setattr` size, `O_TRUNC`) change pages of 4 KiB and
//!   the file's length in memory only; reads see them merged over the backing file.
//! - `fsync` and `fdatasync` on a file write its dirty pages and its length to the backing file
//!   and fsync that. `close` (flush, release) persists nothing: flush is not fsync.
//! - [`Mount::power_cut`] drops every unsynced page and length change and unmounts, refusing
//!   whatever the kernel still sends (dirty `mmap` pages, say); the backing directory is then
//!   what a disk would hold after the power came back.
//! - [`Mount::unmount`] is a clean unmount, as the kernel's sync at unmount would do: everything
//!   is written back.
//!
//! Simplifications, all on the kind side:
//!
//! - Metadata (create, mkdir, unlink, rename, rmdir, chmod, chown, times) goes to the backing
//!   directory at once and is treated as durable immediately, so a program that forgets to
//!   fsync a directory after a rename is not caught. LazyFS can also keep metadata unsynced
//!   (its "lost" files and renames), and inject torn writes; this does neither.
//! - The synced state is exact: a file is either as of its last fsync or as written; no
//!   partial or reordered persistence of unsynced pages (which real disks may do, and LazyFS's
//!   torn-op faults model).
//! - POSIX locks are left to the kernel (local to this machine, which is all SQLite needs in
//!   one machine's tests). No writeback cache and no direct I/O, so every `write` reaches this
//!   daemon and SQLite can still `mmap` its `-shm` file shared.
//!
//! Mounting needs `/dev/fuse` and either root (a direct `mount(2)`) or `fusermount3`.
//! [`mount_or_skip`] turns "not available here" into a loud skip, or a failure under `CI`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

/// The unit in which unsynced data is kept.
pub const PAGE: u64 = 4096;

/// How long the kernel may cache attributes and names. Nothing changes the backing directory
/// behind this daemon's back while mounted.
const TTL: Duration = Duration::from_secs(1);

/// A mounted lazy file system; see the crate documentation.
pub struct Mount {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

/// What a power cut dropped: each file's unsynced bytes (dirty pages), by path relative to the
/// mount's root (`None` for a file already unlinked).
#[derive(Debug, Default, Clone)]
pub struct Dropped {
    pub files: Vec<(Option<PathBuf>, u64)>,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.files.iter().map(|(_, bytes)| bytes).sum()
    }

    /// The unsynced bytes of the file at `path` (relative to the mount's root).
    pub fn of(&self, path: impl AsRef<Path>) -> u64 {
        self.files
            .iter()
            .filter(|(p, _)| p.as_deref() == Some(path.as_ref()))
            .map(|(_, bytes)| bytes)
            .sum()
    }
}

/// Why this machine cannot mount the file system (no `/dev/fuse`, no permission, ...).
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let root = unsafe { libc::geteuid() } == 0;
    let fusermount = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file())
    });
    if !root && !fusermount {
        return Some("not root and no fusermount3 (apt-get install fuse3)".into());
    }
    None
}

/// Mounts `backing` on `mountpoint` (both existing directories) until [`Mount::unmount`],
/// [`Mount::power_cut`] or drop (which unmounts cleanly).
pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Mount> {
    if let Some(why) = unavailable() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, why));
    }
    let state = Arc::new(Mutex::new(State::new(backing.canonicalize()?)));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("palaver-lazyfs".into()),
        fuser::MountOption::Subtype("lazyfs".into()),
    ];
    let session = fuser::spawn_mount(Lazy(state.clone()), mountpoint, &config)?;
    Ok(Mount {
        state,
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// [`mount`], or `None` after a loud `*** SKIPPED ... ***` line when FUSE is unavailable here,
/// except under `CI=true` (or `1`), where CI must run `what` and this panics instead.
pub fn mount_or_skip(backing: &Path, mountpoint: &Path, what: &str) -> Option<Mount> {
    match mount(backing, mountpoint) {
        Ok(mount) => Some(mount),
        Err(e) => {
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !in_ci,
                "CI must run {what}, but the lazy FUSE mount failed: {e}"
            );
            eprintln!(
                "\n*** SKIPPED {what}: cannot mount the lazy FUSE file system ({e}); \
                 run as root with /dev/fuse (or install fuse3) ***\n"
            );
            None
        }
    }
}

impl Mount {
    /// Bytes written but not yet fsynced (in dirty pages of 4 KiB), over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        self.state().unsynced().total()
    }

    /// The unsynced bytes file by file.
    pub fn unsynced(&self) -> Dropped {
        self.state().unsynced()
    }

    /// How many times the file now at `path` (relative to the root) was fsynced, and when the
    /// last of those began. Every write answered before then is in the backing file.
    pub fn syncs(&self, path: impl AsRef<Path>) -> (u64, Option<Instant>) {
        let state = self.state();
        state
            .by_path
            .get(path.as_ref())
            .and_then(|ino| state.nodes.get(ino))
            .map_or((0, None), |node| (node.syncs, node.last_sync))
    }

    /// The power goes out: every unsynced write is dropped, and the file system is unmounted
    /// with nothing more reaching the backing directory. Whoever had files open on it should be
    /// dead already (a process that still has, keeps a detached mount until it exits).
    pub fn power_cut(mut self) -> Dropped {
        let dropped = {
            let mut state = self.state();
            state.dead = true;
            let dropped = state.unsynced();
            for node in state.nodes.values_mut() {
                node.dirty = None;
            }
            dropped
        };
        self.end();
        dropped
    }

    /// A clean unmount: what the kernel still holds comes in, and everything is written back and
    /// fsynced, as a real file system's unmount would.
    pub fn unmount(mut self) -> io::Result<()> {
        self.end();
        self.state().sync_all()
    }

    fn end(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) else {
            return;
        };
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            // The kernel sends DESTROY or ENODEV; the session thread ends.
            let _ = session.join();
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
            // Not root: fuser goes through `fusermount3 -u`.
            let _ = session.umount_and_join();
        } else {
            // Busy: detach it; the session ends when the last user closes its files.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            drop(session);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.end();
            let _ = self.state().sync_all();
        }
    }
}

/// Unsynced contents of one file.
struct Dirty {
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's length as written.
    size: u64,
    /// The shortest the file was since its last sync: backing bytes from here on read as zeros.
    floor: u64,
}

struct Node {
    /// Relative to the backing root; `None` once unlinked or replaced by a rename.
    path: Option<PathBuf>,
    kind: FileType,
    file: Option<File>,
    dirty: Option<Dirty>,
    open: u32,
    syncs: u64,
    last_sync: Option<Instant>,
}

struct State {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
    /// After a power cut: nothing more is accepted.
    dead: bool,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    if e.raw_os_error().is_some() {
        Errno::from(e)
    } else {
        Errno::EIO
    }
}

fn c_path(path: &Path) -> Res<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl State {
    fn new(root: PathBuf) -> Self {
        let mut state = Self {
            root,
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: 2,
            dead: false,
        };
        state.nodes.insert(
            1,
            Node {
                path: Some(PathBuf::new()),
                kind: FileType::Directory,
                file: None,
                dirty: None,
                open: 0,
                syncs: 0,
                last_sync: None,
            },
        );
        state.by_path.insert(PathBuf::new(), 1);
        state
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn rel(&self, ino: u64) -> Res<PathBuf> {
        self.node(ino)?.path.clone().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        Ok(self.rel(parent)?.join(name))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// The inode number for `rel`, allocated on first sight.
    fn ino_of(&mut self, rel: &Path, kind: FileType) -> u64 {
        if let Some(ino) = self.by_path.get(rel) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                path: Some(rel.to_path_buf()),
                kind,
                file: None,
                dirty: None,
                open: 0,
                syncs: 0,
                last_sync: None,
            },
        );
        self.by_path.insert(rel.to_path_buf(), ino);
        ino
    }

    /// Looks `rel` up in the backing directory.
    fn entry(&mut self, rel: &Path) -> Res<FileAttr> {
        let meta = std::fs::symlink_metadata(self.full(rel)).map_err(errno)?;
        let kind = FileType::from_std(meta.file_type()).ok_or(Errno::EIO)?;
        let ino = self.ino_of(rel, kind);
        self.attr(ino)
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let node = self.node(ino)?;
        let meta = match (&node.file, &node.path) {
            (Some(file), _) => file.metadata(),
            (None, Some(rel)) => std::fs::symlink_metadata(self.full(rel)),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(errno)?;
        let size = node.dirty.as_ref().map_or(meta.len(), |d| d.size);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: system_time(meta.atime(), meta.atime_nsec()),
            mtime: system_time(meta.mtime(), meta.mtime_nsec()),
            ctime: system_time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: node.kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// The node's backing file, opened on first use.
    fn file(&mut self, ino: u64) -> Res<&File> {
        let full = self.root.join(self.rel(ino).unwrap_or_default());
        let node = self.node_mut(ino)?;
        if node.file.is_none() {
            if node.path.is_none() {
                return Err(Errno::ENOENT);
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&full)
                .or_else(|_| File::open(&full))
                .map_err(errno)?;
            node.file = Some(file);
        }
        Ok(node.file.as_ref().expect("opened"))
    }

    /// The node's unsynced state, begun from its backing file.
    fn dirty(&mut self, ino: u64) -> Res<&mut Dirty> {
        if self.dead {
            return Err(Errno::EIO);
        }
        let len = self.file(ino)?.metadata().map_err(errno)?.len();
        let node = self.node_mut(ino)?;
        Ok(node.dirty.get_or_insert_with(|| Dirty {
            pages: BTreeMap::new(),
            size: len,
            floor: len,
        }))
    }

    /// Page `index` as the backing file has it, with what a truncation since cut off as zeros.
    fn base_page(file: &File, floor: u64, index: u64) -> Res<Box<[u8]>> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        if start < floor {
            let want = (floor - start).min(PAGE) as usize;
            let mut got = 0;
            while got < want {
                match file.read_at(&mut page[got..want], start + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
        }
        Ok(page)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Res<()> {
        self.dirty(ino)?;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        let dirty = node.dirty.as_mut().expect("dirty");
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let n = rest.len().min(PAGE as usize - within);
            let page = match dirty.pages.entry(index) {
                std::collections::btree_map::Entry::Occupied(page) => page.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(Self::base_page(file, dirty.floor, index)?)
                }
            };
            page[within..within + n].copy_from_slice(&rest[..n]);
            at += n as u64;
            rest = &rest[n..];
        }
        dirty.size = dirty.size.max(offset + data.len() as u64);
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Res<()> {
        self.dirty(ino)?;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        let dirty = node.dirty.as_mut().expect("dirty");
        if size < dirty.size {
            dirty.pages.retain(|index, _| index * PAGE < size);
            let within = (size % PAGE) as usize;
            if within != 0 {
                let index = size / PAGE;
                let page = match dirty.pages.entry(index) {
                    std::collections::btree_map::Entry::Occupied(page) => page.into_mut(),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(Self::base_page(file, dirty.floor, index)?)
                    }
                };
                page[within..].fill(0);
            }
            dirty.floor = dirty.floor.min(size);
        }
        dirty.size = size;
        Ok(())
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        self.file(ino)?;
        let node = self.node(ino)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        let Some(dirty) = &node.dirty else {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(got);
            return Ok(buf);
        };
        let end = (offset + u64::from(size)).min(dirty.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let n = ((end - at) as usize).min(PAGE as usize - within);
            match dirty.pages.get(&index) {
                Some(page) => out.extend_from_slice(&page[within..within + n]),
                None => {
                    let page = Self::base_page(file, dirty.floor, index)?;
                    out.extend_from_slice(&page[within..within + n]);
                }
            }
            at += n as u64;
        }
        Ok(out)
    }

    /// Writes the node's unsynced state to its backing file and fsyncs that.
    fn sync(&mut self, ino: u64, datasync: bool) -> Res<()> {
        if self.dead {
            return Err(Errno::EIO);
        }
        let started = Instant::now();
        self.file(ino)?;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let file = node.file.as_ref().ok_or(Errno::EIO)?;
        if let Some(dirty) = node.dirty.take() {
            let len = file.metadata().map_err(errno)?.len();
            if dirty.floor < len {
                file.set_len(dirty.floor).map_err(errno)?;
            }
            for (index, page) in &dirty.pages {
                let start = index * PAGE;
                if start >= dirty.size {
                    continue;
                }
                let n = (dirty.size - start).min(PAGE) as usize;
                file.write_all_at(&page[..n], start).map_err(errno)?;
            }
            file.set_len(dirty.size).map_err(errno)?;
        }
        if datasync {
            file.sync_data().map_err(errno)?;
        } else {
            file.sync_all().map_err(errno)?;
        }
        node.syncs += 1;
        node.last_sync = Some(started);
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        if self.dead {
            return Ok(());
        }
        let dirty: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.dirty.is_some())
            .map(|(ino, _)| *ino)
            .collect();
        for ino in dirty {
            self.sync(ino, false)
                .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        }
        Ok(())
    }

    fn unsynced(&self) -> Dropped {
        let mut files: Vec<_> = self
            .nodes
            .values()
            .filter_map(|node| {
                let dirty = node.dirty.as_ref()?;
                Some((node.path.clone(), dirty.pages.len() as u64 * PAGE))
            })
            .collect();
        files.sort();
        Dropped { files }
    }

    /// `rel` is gone from the namespace (unlinked, or replaced by a rename).
    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel)
            && let Some(node) = self.nodes.get_mut(&ino)
        {
            node.path = None;
            if node.open == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) {
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = to.join(old.strip_prefix(from).expect("prefix"));
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

struct Lazy(Arc<Mutex<State>>);

impl Lazy {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reply_empty(reply: ReplyEmpty, result: Res<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(reply: ReplyEntry, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, result: Res<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn cvt(ret: libc::c_int) -> Res<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(errno(io::Error::last_os_error()))
    }
}

fn timespec(time: Option<TimeOrNow>) -> libc::timespec {
    match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    }
}

impl Filesystem for Lazy {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state
            .child(parent.0, name)
            .and_then(|rel| state.entry(&rel));
        reply_entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.state().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            let ino = ino.0;
            // Metadata by path; the size alone also works on a file already unlinked.
            let full = match state.rel(ino) {
                Ok(rel) => state.full(&rel),
                Err(e) if mode.is_some() || uid.is_some() || gid.is_some() => return Err(e),
                Err(e) if atime.is_some() || mtime.is_some() => return Err(e),
                Err(_) => PathBuf::new(),
            };
            if let Some(mode) = mode {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&full, uid, gid).map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = [timespec(atime), timespec(mtime)];
                let path = c_path(&full)?;
                cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
            }
            if let Some(size) = size {
                state.truncate(ino, size)?;
            }
            state.attr(ino)
        })();
        reply_attr(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.child(parent.0, name)?;
            std::fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(state.full(&rel))
                .map_err(errno)?;
            state.entry(&rel)
        })();
        reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.child(parent.0, name)?;
            std::fs::remove_file(state.full(&rel)).map_err(errno)?;
            state.forget_path(&rel);
            Ok(())
        })();
        reply_empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.child(parent.0, name)?;
            std::fs::remove_dir(state.full(&rel)).map_err(errno)?;
            state.forget_path(&rel);
            Ok(())
        })();
        reply_empty(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            let from = state.child(parent.0, name)?;
            let to = state.child(newparent.0, newname)?;
            let (c_from, c_to) = (c_path(&state.full(&from))?, c_path(&state.full(&to))?);
            cvt(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    c_from.as_ptr(),
                    libc::AT_FDCWD,
                    c_to.as_ptr(),
                    flags.bits(),
                )
            })?;
            state.rename(&from, &to);
            Ok(())
        })();
        reply_empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        let result = (|| {
            state.file(ino.0)?;
            if flags.0 & libc::O_TRUNC != 0 {
                state.truncate(ino.0, 0)?;
            }
            state.node_mut(ino.0)?.open += 1;
            Ok(())
        })();
        match result {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.child(parent.0, name)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(flags & libc::O_EXCL)
                .mode(mode & !umask & 0o7777)
                .open(state.full(&rel))
                .map_err(errno)?;
            let ino = state.ino_of(&rel, FileType::RegularFile);
            let node = state.node_mut(ino)?;
            node.file.get_or_insert(file);
            node.open += 1;
            if flags & libc::O_TRUNC != 0 {
                state.truncate(ino, 0)?;
            }
            state.attr(ino)
        })();
        match result {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(attr.ino.0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not fsync(2).
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Some(node) = state.nodes.get_mut(&ino.0) {
            node.open = node.open.saturating_sub(1);
            if node.open == 0 && node.path.is_none() {
                state.nodes.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.state().sync(ino.0, datasync));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.rel(ino.0)?;
            let parent = rel
                .parent()
                .and_then(|p| state.by_path.get(p).copied())
                .unwrap_or(1);
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (parent, FileType::Directory, OsStr::new("..").to_owned()),
            ];
            let mut listed: Vec<_> = std::fs::read_dir(state.full(&rel))
                .map_err(errno)?
                .filter_map(Result::ok)
                .collect();
            listed.sort_by_key(|entry| entry.file_name());
            for entry in listed {
                let Some(kind) = entry.file_type().ok().and_then(FileType::from_std) else {
                    continue;
                };
                let child = state.ino_of(&rel.join(entry.file_name()), kind);
                entries.push((child, kind, entry.file_name()));
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let state = self.state();
        let result = (|| {
            if state.dead {
                return Err(Errno::EIO);
            }
            // Metadata is durable at once here; syncing the backing directory keeps that true
            // for the backing file system too.
            File::open(state.full(&state.rel(ino.0)?))
                .and_then(|dir| dir.sync_all())
                .map_err(errno)
        })();
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let state = self.state();
        let result = (|| {
            let path = c_path(&state.root)?;
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
            Ok(st)
        })();
        match result {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let state = self.state();
        reply_empty(reply, state.rel(ino.0).map(|_| ()));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            match mode {
                // Allocating changes nothing a reader sees, except the length.
                0 => {
                    let size = state.dirty(ino.0)?.size;
                    if offset + length > size {
                        state.truncate(ino.0, offset + length)?;
                    }
                    Ok(())
                }
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(Errno::EOPNOTSUPP),
            }
        })();
        reply_empty(reply, result);
    }
}
