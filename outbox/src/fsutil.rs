//! Small file system helpers: private modes, no symlink following, fsync.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags};

/// Mode of every directory the outbox creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file the outbox creates.
pub(crate) const FILE_MODE: u32 = 0o600;

fn file_mode() -> Mode {
    Mode::from_raw_mode(FILE_MODE)
}

/// Opens a directory for fsync/openat, refusing a symlink (`ELOOP`) and a non-directory
/// (`ENOTDIR`).
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// fsyncs a directory given by path.
pub(crate) fn fsync_dir(path: &Path) -> io::Result<()> {
    let fd = open_dir(path)?;
    rustix::fs::fsync(&fd)?;
    Ok(())
}

/// Creates a directory with mode 0700, whatever the umask.
pub(crate) fn mkdir_private(path: &Path) -> io::Result<()> {
    rustix::fs::mkdir(path, Mode::RWXU)?;
    // The umask may have taken bits away; our parent is a private directory of ours, so
    // nobody can have swapped the new directory for a link in between.
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
}

/// Creates `name` in `dir` (O_EXCL, never following a link), writes `data` and sets mode
/// 0600, without syncing: for files whose durability something else provides.
pub(crate) fn create_file(dir: impl AsFd, name: &str, data: &[u8]) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        file_mode(),
    )?;
    rustix::fs::fchmod(&fd, file_mode())?;
    let mut file = File::from(fd);
    file.write_all(data)?;
    Ok(file)
}

/// Reads the regular file `name` in `dir`, never following a link.
pub(crate) fn read_file_in(dir: impl AsFd, name: &str) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    read_regular(File::from(fd))
}

/// Opens the regular file `name` in `dir` for reading, never following a link: for a file
/// that is read a piece at a time.
pub(crate) fn open_file_in(dir: impl AsFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(File::from(fd))
}

/// Reads a regular file given by path, never following a link in the last component.
pub(crate) fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    read_regular(File::from(fd))
}

/// The files read here are never written in place (a new version is renamed over the old
/// one), so the size `fstat` gives is the size to read: one `fstat` and one `read`, where
/// `read_to_end` would add a second `statx`, an `lseek` and a `read` that only finds the end.
fn read_regular(mut file: File) -> io::Result<Vec<u8>> {
    let st = rustix::fs::fstat(&file)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let len = usize::try_from(st.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
    let mut data = vec![0; len];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// Atomically and durably replaces `name` in `dir` with `data`: writes `<name>.tmp`, fsyncs
/// it, renames it over `name` and fsyncs the directory.
pub(crate) fn replace_file_in(dir: impl AsFd, name: &str, data: &[u8]) -> io::Result<()> {
    let dir = dir.as_fd();
    swap_in(dir, name, data, true)?;
    rustix::fs::fsync(dir)?;
    Ok(())
}

/// Atomically replaces `name` in `dir` with `data` (write `<name>.tmp`, rename over `name`)
/// without any fsync: readers see the old or the new bytes, but after a crash the file may
/// hold either, or nothing. Only for files the outcome journal can rewrite.
pub(crate) fn replace_file_unsynced(dir: impl AsFd, name: &str, data: &[u8]) -> io::Result<()> {
    swap_in(dir.as_fd(), name, data, false)
}

/// Overwrites the regular file `name` in `dir` with `data` in place (write from the start, then
/// cut what is left of a longer old content), without syncing; creates it (mode 0600) when it is
/// missing. Only for files whose every change is first recorded durably elsewhere (the outcome
/// journal): a crash can leave the file empty or torn, and the replay rewrites it. Unlike a
/// write-and-rename, it allocates no inode and frees none: at hundreds of records a second, the
/// freed inodes made each new one's allocation scan ext4's "recently deleted" inodes, a quarter
/// of the agent's CPU in a flush. Unlike `O_TRUNC`, it keeps the file's block: truncating to
/// zero freed it and the write allocated it again, the slowest step of a record in `strace -T`.
pub(crate) fn overwrite_unsynced(dir: impl AsFd, name: &str, data: &[u8]) -> io::Result<()> {
    let fd = match rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return replace_file_unsynced(dir, name, data),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut file = File::from(fd);
    file.write_all(data)?;
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > data.len() as u64 {
        file.set_len(data.len() as u64)?;
    }
    Ok(())
}

fn swap_in(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    data: &[u8],
    sync: bool,
) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    match rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let written =
        create_file(dir, &tmp, data).and_then(|f| if sync { f.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    if let Err(e) = rustix::fs::renameat(dir, tmp.as_str(), dir, name) {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e.into());
    }
    Ok(())
}

/// Atomically and durably replaces the file `name` in the directory `dir` with `data` (mode
/// 0600, never following a symbolic link): after a crash the file holds either the old or the
/// new bytes. For small files the agent keeps beside the outboxes.
pub fn replace_file(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    replace_file_in(open_dir(dir)?, name, data)
}

/// Renames `from` to `to`, failing with `EEXIST` instead of replacing an existing `to`
/// (a directory rename would otherwise replace an empty directory).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // Some file systems do not know RENAME_NOREPLACE; check by hand then.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            match fs::symlink_metadata(to) {
                Ok(_) => Err(io::Error::from(rustix::io::Errno::EXIST)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(from, to),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.into()),
    }
}
