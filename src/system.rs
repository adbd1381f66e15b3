//! What the machine has free: memory, checked before a run allocates its model and batches,
//! and disk space, checked before a cache is written. Unknown (None) off Linux.

use std::path::Path;

/// Bytes of memory this process can still allocate: the kernel's `MemAvailable`, lowered by
/// the cgroup's limit (a container's `memory.max`) and by an address-space limit (`ulimit
/// -v`) where there are any.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut available = meminfo_field(&meminfo, "MemAvailable:")?;
    if let Some(room) = cgroup_room() {
        available = available.min(room);
    }
    if let Some(room) = address_space_room() {
        available = available.min(room);
    }
    Some(available)
}

/// `Field:  1234 kB` of /proc/meminfo (or /proc/self/status), in bytes.
fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The cgroup v2 limit minus what the cgroup uses.
fn cgroup_room() -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max": no limit
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// `RLIMIT_AS` minus the address space this process maps already.
#[cfg(not(unix))]
fn address_space_room() -> Option<u64> {
    None
}
#[cfg(unix)]
fn address_space_room() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mapped = meminfo_field(&status, "VmSize:")?;
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every unix
    let limit = limit.rlim_cur as u64;
    Some(limit.saturating_sub(mapped))
}

/// Free bytes (for an unprivileged user) on the file system holding `path` (or its nearest
/// existing ancestor).
#[cfg(not(unix))]
pub fn free_disk_space(_path: &Path) -> Option<u64> {
    None
}
#[cfg(unix)]
pub fn free_disk_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Maps the whole pages inside `buf` in now, in one call (`MADV_POPULATE_WRITE`, Linux 5.14
/// and later), rather than one page fault at a time as the first write reaches each: for a
/// fresh 180 MB set of decoded images, 66-76 ms of two threads' time in single faults
/// against 45-57 ms populated (2-core Xeon, under load); and memory read before it is
/// written gets pages of its own at once, not the shared zero page and then a copy (see the
/// CPU backend's `zeros`). The loader calls it on each image's slot just before the image is
/// written there, so that the lines the kernel has just zeroed are still in cache when they
/// are overwritten. Where the call is not supported, the pages fault in as before; the
/// contents (zeros for fresh memory) do not change either way.
pub fn populate<T: Copy>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the same memory as bytes (T is plain data); only its pages are touched.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                buf.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(buf),
            )
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 {
            return;
        }
        let skip = buf.as_ptr().align_offset(page).min(buf.len());
        let whole = (buf.len() - skip) / page * page;
        if whole == 0 {
            return;
        }
        // SAFETY: the range is whole pages of memory this slice owns; populating changes no
        // byte of it. A failure (an old kernel: EINVAL) leaves the pages to fault in on
        // first write.
        unsafe {
            libc::madvise(
                buf.as_mut_ptr().add(skip).cast(),
                whole,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// `1.23 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_reports_memory_and_disk() {
        let mem = available_memory().expect("Linux has /proc/meminfo");
        assert!(mem > 1 << 20, "{mem}");
        let disk = free_disk_space(&std::env::temp_dir().join("no/such/folder")).unwrap();
        assert!(disk > 0);
        assert_eq!(
            meminfo_field("MemAvailable:   2048 kB\n", "MemAvailable:"),
            Some(2 << 20)
        );
    }

    /// Populating pages changes no byte: fresh memory stays zero, written memory keeps what
    /// was written, in a slice that starts and ends inside pages.
    #[test]
    fn populating_keeps_the_contents() {
        let mut fresh = vec![0u8; 9 << 20];
        populate(&mut fresh[3..(9 << 20) - 5]);
        assert!(fresh.iter().all(|&b| b == 0));
        let mut written: Vec<u8> = (0..(9usize << 20)).map(|i| (i % 251) as u8).collect();
        populate(&mut written[3..]);
        assert!(
            written
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8)
        );
        populate::<u8>(&mut []);
    }
}
