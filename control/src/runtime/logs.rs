//! Size caps on the log files of VNFs and SFF processes: each writes to a
//! file opened for appending, which grows for as long as it runs. A file
//! over the cap is copied to `<name>.1` (the one before replaced) and
//! emptied in place; its writer goes on at the new end (`O_APPEND`). What
//! is written between the copy and the emptying is lost (logrotate's
//! `copytruncate` has the same gap); a process is never stopped for it.

use std::path::Path;

/// The default cap per file: 16 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// Caps every `*.log` file under `dir` (recursively) at `max_bytes`;
/// returns how many were rotated. Files that vanish meanwhile are skipped.
pub fn cap(dir: &Path, max_bytes: u64) -> std::io::Result<usize> {
    let mut rotated = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            rotated += cap(&path, max_bytes)?;
        } else if kind.is_file()
            && path.extension().is_some_and(|x| x == "log")
            && e.metadata().is_ok_and(|m| m.len() > max_bytes)
        {
            let mut old = path.clone().into_os_string();
            old.push(".1");
            std::fs::copy(&path, &old)?;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(0)?;
            rotated += 1;
        }
    }
    Ok(rotated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_its_cap_is_kept_once_and_its_writer_goes_on() {
        let dir = std::env::temp_dir().join(format!("nham-logs-{}", std::process::id()));
        let sub = dir.join("web");
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("fw.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(&[b'x'; 100]).unwrap();
        std::fs::write(sub.join("small.log"), b"y").unwrap();
        std::fs::write(sub.join("data.bin"), [0u8; 200]).unwrap();
        assert_eq!(cap(&dir, 50).unwrap(), 1);
        assert_eq!(std::fs::metadata(sub.join("fw.log.1")).unwrap().len(), 100);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        writer.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
        assert_eq!(std::fs::metadata(sub.join("data.bin")).unwrap().len(), 200);
        assert_eq!(cap(&dir, 50).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
