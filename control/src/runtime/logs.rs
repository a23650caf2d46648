//! Size caps on the log files of VNFs and SFF processes: each writes to a
//! file opened for appending, which grows for as long as it runs. A file
//! over the cap is copied to `<name>.1` (the one before replaced) and
//! emptied in place; its writer goes on at the new end (`O_APPEND`). What
//! is written between the copy and the emptying is lost (logrotate's
//! `copytruncate` has the same gap); a process is never stopped for it.

use std::path::Path;

/// The default cap per file: 16 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// Caps the log files under `dir` (recursively) at `max_bytes`: every
/// `*.log`, or only files called `only` (where other programs' files live
/// too, as in VNFs' working directories). Returns how many were rotated,
/// and the first error met (the others are still done; a file that
/// vanished meanwhile is no error).
pub fn cap(dir: &Path, max_bytes: u64, only: Option<&str>) -> (usize, Option<std::io::Error>) {
    let mut rotated = 0;
    let mut first_error = None;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, None);
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        let ours = match only {
            Some(name) => e.file_name() == name,
            None => path.extension().is_some_and(|x| x == "log"),
        };
        if kind.is_dir() {
            let (n, err) = cap(&path, max_bytes, only);
            rotated += n;
            first_error = first_error.or(err);
        } else if kind.is_file() && ours && e.metadata().is_ok_and(|m| m.len() > max_bytes) {
            let mut old = path.clone().into_os_string();
            old.push(".1");
            let done = std::fs::copy(&path, &old).and_then(|_| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(0)
            });
            match done {
                Ok(()) => rotated += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
    }
    (rotated, first_error)
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
        std::fs::write(sub.join("own.log"), [b'z'; 100]).unwrap();
        // Only the files named, where others' files live too.
        assert_eq!(cap(&dir, 50, Some("fw.log")).0, 1);
        assert_eq!(std::fs::metadata(sub.join("own.log")).unwrap().len(), 100);
        assert_eq!(std::fs::metadata(sub.join("fw.log.1")).unwrap().len(), 100);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        writer.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
        // Every *.log over the cap, nothing else.
        let (n, error) = cap(&dir, 50, None);
        assert_eq!((n, error.is_none()), (1, true));
        assert_eq!(std::fs::metadata(sub.join("own.log")).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(sub.join("data.bin")).unwrap().len(), 200);
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
