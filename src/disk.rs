//! What the file system has left, for error messages about a full disk, and
//! which boot of the kernel wrote what it holds, for trusting partial files.

use std::path::Path;
use std::sync::OnceLock;

/// "N MiB free on the file system of PATH", or why that is unknown. Walks up
/// to the nearest existing folder, since the failing file may be gone.
pub fn free_space_text(path: &Path) -> String {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    match rustix::fs::statvfs(existing) {
        Ok(stats) => {
            let free = stats.f_bavail.saturating_mul(stats.f_frsize);
            format!("{} free on the file system of {}", human_bytes(free), existing.display())
        }
        Err(error) => format!("free space unknown ({error})"),
    }
}

/// This boot of the kernel, where the system says (Linux); `None` elsewhere.
///
/// Bytes a process wrote but never fsynced sit in the page cache, which a
/// kill of the process leaves whole: only a kernel crash or a power cut can
/// lose them, and either ends the boot. So bytes written under the boot that
/// is running now are as good as fsynced ones, for reading them back.
pub fn boot_id() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    let read = || {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(text.trim().to_owned()).filter(|id| !id.is_empty())
    };
    BOOT_ID.get_or_init(read).as_deref()
}

/// Bytes in the largest binary unit that keeps a number of at least 1.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn the_boot_id_is_read_once_and_stays() {
        let first = boot_id();
        if cfg!(target_os = "linux") {
            let id = first.expect("Linux says which boot this is");
            assert_eq!(id.len(), 36, "a UUID: {id}");
        }
        assert_eq!(boot_id(), first);
    }

    #[test]
    fn a_missing_file_reports_its_nearest_folder() {
        let dir = tempfile::tempdir().unwrap();
        let text = free_space_text(&dir.path().join("gone/deeper/file.part"));
        assert!(text.contains("free on the file system of"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }
}
