//! Disk habits shared by everything that writes files next to the spool.
//!
//! The spool answers 200s after an fdatasync, so its latency is whatever queues in
//! front of that sync on the device. A neighbour that lets megabytes of page cache
//! reach the disk at once makes a concurrent small fdatasync wait behind them for
//! many times its own cost; handing the same bytes to the disk a little at a time,
//! as they are written, keeps the spool's syncs short (figures: docs/benchmarks.md,
//! "Figures behind choices in the code"). Writers other than the spool use
//! [`start_writeback`] or [`write_back`] for that.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// How much a neighbour of the spool lets pile up in the page cache before handing
/// it to the disk.
pub const WRITEBACK_STEP: u64 = 128 * 1024;

/// Starts writeback of `[offset, offset + len)` without waiting for it.
pub fn start_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_file_range(f, offset, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// Writes `[offset, offset + len)` back and waits for it: the range leaves the page
/// cache now, as a small write of its own. No cache flush and no journal commit
/// (that is still an fdatasync's job).
pub fn write_back(f: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_file_range(
        f,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

fn sync_file_range(f: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: a plain syscall on a descriptor `f` keeps open; no memory is passed.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes an unprivileged writer can still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` has room for what the call writes.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// What tells one version of a file from another without keeping its contents:
/// modification time, length and a CRC of the bytes. Secret files and TLS
/// certificates are re-read when theirs changes.
pub type Fingerprint = (std::time::SystemTime, u64, u64);

pub fn fingerprint(path: &std::path::Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let digest = u64::from(crc32c::crc32c(&bytes));
    Some((meta.modified().ok()?, meta.len(), digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writeback_and_free_space_work_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::create(dir.path().join("f")).unwrap();
        f.write_all(&[7u8; 300_000]).unwrap();
        start_writeback(&f, 0, 100_000).unwrap();
        write_back(&f, 100_000, 200_000).unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
