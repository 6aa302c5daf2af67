//! File I/O with the project's guarantees: JSONL read with line-numbered errors, and writes
//! that go to a temporary file in the same directory and are renamed into place, so that an
//! interrupted run never leaves a truncated file.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CoreError;

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), CoreError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// What stands at `path` if it is not a regular file: the rename of an atomic write would
/// replace it (a link with a file, `/dev/null` with a file), so such outputs are refused.
fn not_a_file(path: &Path) -> Option<&'static str> {
    let kind = fs::symlink_metadata(path).ok()?.file_type();
    if kind.is_file() {
        None
    } else if kind.is_symlink() {
        Some("a symbolic link (give its target instead)")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("a special file (FIFO, device or socket)")
    }
}

/// Like [`write_atomic`], with the content produced by a writer callback. A path that holds
/// anything but a regular file is refused before anything is written.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), CoreError> {
    let path = path.as_ref();
    if let Some(what) = not_a_file(path) {
        return Err(CoreError::NotAFile {
            path: path.to_path_buf(),
            what,
        });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let file = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CoreError::io(path, e));
    }
    Ok(())
}

/// The three names beside `dir` that [`write_dir_atomic`] uses: `.NAME.tmp` (being written),
/// `.NAME.ready` (complete, waiting to take `dir`'s place) and `.NAME.old` (the replaced one).
fn swap_names(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    (
        parent.join(format!(".{name}.tmp")),
        parent.join(format!(".{name}.ready")),
        parent.join(format!(".{name}.old")),
    )
}

fn remove_dir_if_present(path: &Path) -> Result<(), CoreError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CoreError::io(path, e)),
        _ => Ok(()),
    }
}

/// Replaces the directory `dir` with one that `fill` writes, so that a crash at any instant
/// leaves `dir` whole, old or new, or absent with the new one complete beside it, which
/// [`recover_dir`] (and the next write) puts in place. `fill` writes into `.NAME.tmp`; when it
/// returns, that directory is renamed `.NAME.ready` (complete), `dir` is renamed `.NAME.old`,
/// `.NAME.ready` is renamed `dir`, and `.NAME.old` is removed. A `dir` that is a symbolic link
/// or not a directory is refused before anything is written.
pub fn write_dir_atomic<E: From<CoreError>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if let Ok(meta) = fs::symlink_metadata(dir)
        && !meta.file_type().is_dir()
    {
        return Err(CoreError::NotAFile {
            path: dir.to_path_buf(),
            what: if meta.file_type().is_symlink() {
                "a symbolic link (give its target instead)"
            } else {
                "not a directory"
            },
        }
        .into());
    }
    recover_dir(dir)?;
    let (tmp, ready, _) = swap_names(dir);
    remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    fill(&tmp)?;
    fs::rename(&tmp, &ready).map_err(|e| CoreError::io(&ready, e))?;
    recover_dir(dir)?;
    Ok(())
}

/// Completes a [`write_dir_atomic`] that a crash interrupted: a complete `.NAME.ready` takes
/// `dir`'s place (the old `dir`, if still there, is removed), and leftovers (`.NAME.old`, a
/// partial `.NAME.tmp`) are removed. Does nothing when there is nothing to complete.
pub fn recover_dir(dir: &Path) -> Result<(), CoreError> {
    let (tmp, ready, old) = swap_names(dir);
    if ready.is_dir() {
        if dir.exists() {
            remove_dir_if_present(&old)?;
            fs::rename(dir, &old).map_err(|e| CoreError::io(dir, e))?;
        }
        fs::rename(&ready, dir).map_err(|e| CoreError::io(dir, e))?;
    } else if !dir.exists() && old.is_dir() {
        // Not a state the swap leaves (it moves `dir` aside only with a complete replacement
        // ready), but if something else did: the old directory is all there is.
        fs::rename(&old, dir).map_err(|e| CoreError::io(dir, e))?;
    }
    remove_dir_if_present(&old)?;
    remove_dir_if_present(&tmp)
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<(), CoreError> {
    let path = path.as_ref();
    let text = serde_json::to_string_pretty(value).map_err(|source| CoreError::Serialize {
        what: path.display().to_string(),
        source,
    })?;
    write_atomic(path, format!("{text}\n").as_bytes())
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl_atomic<T: Serialize>(
    path: impl AsRef<Path>,
    rows: &[T],
) -> Result<(), CoreError> {
    let path = path.as_ref();
    let mut text = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line = serde_json::to_string(row).map_err(|source| CoreError::Serialize {
            what: format!("{} row {}", path.display(), i + 1),
            source,
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Reads a JSONL file into typed rows. Blank lines are skipped; a malformed line is an error
/// naming the file, the 1-based line number and what serde expected.
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>, CoreError> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, row)| row)
        .collect())
}

/// [`read_jsonl`] with each row's 1-based line number in the file (blank lines skipped but
/// counted), for callers that check rows further and must name the right line. A UTF-8 byte
/// order mark at the start is accepted; a line that is not UTF-8 is an error naming it.
pub fn read_jsonl_numbered<T: DeserializeOwned>(
    path: impl AsRef<Path>,
) -> Result<Vec<(usize, T)>, CoreError> {
    let path = path.as_ref();
    let file = fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut rows = Vec::new();
    let mut bytes = Vec::new();
    for i in 0.. {
        bytes.clear();
        // At most one byte past the limit, so that an endless line (`/dev/zero`) is an error,
        // not an allocation that takes the machine's memory.
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .map_err(|e| CoreError::io(path, e))?;
        if read == 0 {
            break;
        }
        let bad = |message: String| CoreError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        } else if bytes.len() > MAX_LINE_BYTES {
            return Err(bad(format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        let line = std::str::from_utf8(&bytes).map_err(|e| bad(format!("not UTF-8 ({e})")))?;
        let line = if i == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        rows.push((i + 1, row));
    }
    Ok(rows)
}

/// The longest JSONL line read (64 MiB): far above any prompt or completion this project
/// handles, far below a machine's memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Reads a whole file to a string, naming the file on error.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String, CoreError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|e| CoreError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Row {
        prompt: String,
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_is_replaced_whole_and_every_crash_state_recovers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("final");
        let files = |d: &Path| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = fs::read_dir(d)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, fs::read_to_string(e.path()).unwrap())
                })
                .collect();
            v.sort();
            v
        };
        let write = |d: &Path, names: &[(&str, &str)]| {
            for (n, c) in names {
                fs::write(d.join(n), c).unwrap();
            }
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        write_dir_atomic::<CoreError>(&dir, |d| {
            write(d, &[("a", "1"), ("config", "old")]);
            Ok(())
        })
        .unwrap();
        // A new version replaces the whole directory: no file of the old one survives.
        write_dir_atomic::<CoreError>(&dir, |d| {
            write(d, &[("b", "2")]);
            Ok(())
        })
        .unwrap();
        assert_eq!(files(&dir), vec![pair("b", "2")]);
        let (tmp, ready, old) = swap_names(&dir);
        assert!(!tmp.exists() && !ready.exists() && !old.exists());
        // A failing fill leaves the directory as it was.
        let e = write_dir_atomic::<CoreError>(&dir, |d| {
            write(d, &[("c", "3")]);
            Err(CoreError::Worker("stop".into()))
        });
        assert!(e.is_err());
        assert_eq!(files(&dir), vec![pair("b", "2")]);
        // Crashed while writing: a partial .tmp; the directory is the old one.
        fs::create_dir_all(&tmp).unwrap();
        write(&tmp, &[("half", "")]);
        recover_dir(&dir).unwrap();
        assert_eq!(files(&dir), vec![pair("b", "2")]);
        assert!(!tmp.exists());
        // Crashed with the new one complete, before or between the two renames.
        for moved_aside in [false, true] {
            fs::create_dir_all(&ready).unwrap();
            write(&ready, &[("n", "new")]);
            if moved_aside {
                fs::rename(&dir, &old).unwrap();
            }
            recover_dir(&dir).unwrap();
            assert_eq!(
                files(&dir),
                vec![pair("n", "new")],
                "moved aside: {moved_aside}"
            );
            assert!(!ready.exists() && !old.exists());
            fs::remove_file(dir.join("n")).unwrap();
            write(&dir, &[("b", "2")]);
        }
        // A link is refused, and nothing is written through it.
        #[cfg(unix)]
        {
            let target = root.path().join("elsewhere");
            fs::create_dir_all(&target).unwrap();
            let link = root.path().join("link");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let e = write_dir_atomic::<CoreError>(&link, |_| Ok(())).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert!(fs::read_dir(&target).unwrap().next().is_none());
        }
    }

    #[test]
    #[cfg(unix)]
    fn an_endless_line_is_an_error_not_an_allocation() {
        let e = read_jsonl_numbered::<serde_json::Value>("/dev/zero").unwrap_err();
        assert!(e.to_string().contains("/dev/zero:1: longer than"), "{e}");
    }

    #[test]
    fn outputs_replace_only_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.json");
        write_atomic(&file, b"1").unwrap();
        write_atomic(&file, b"2").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"2");
        // A link, a directory and a device stay what they are.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = write_atomic(&link, b"3").unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains("link.json"),
            "{e}"
        );
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&file).unwrap(), b"2");
        let e = write_atomic(dir.path(), b"3").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = write_atomic("/dev/null", b"3").unwrap_err().to_string();
        assert!(e.contains("special file"), "{e}");
        assert!(!fs::metadata("/dev/null").unwrap().file_type().is_file());
    }

    #[test]
    fn jsonl_rows_keep_their_line_numbers_after_blank_lines_a_bom_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.jsonl");
        fs::write(
            &p,
            "\u{feff}{\"prompt\": \"a\"}\r\n\n\n{\"prompt\": \"b\"}\n\n{\"prompt\": 3}\n",
        )
        .unwrap();
        let e = read_jsonl_numbered::<Row>(&p).unwrap_err().to_string();
        assert!(e.contains("b.jsonl:6"), "{e}");
        fs::write(
            &p,
            "\u{feff}{\"prompt\": \"a\"}\r\n\n\n{\"prompt\": \"b\"}\n",
        )
        .unwrap();
        let rows: Vec<(usize, Row)> = read_jsonl_numbered(&p).unwrap();
        assert_eq!(
            rows.iter()
                .map(|(l, r)| (*l, r.prompt.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (4, "b")]
        );
        // Bytes that are not UTF-8 name their line.
        fs::write(&p, b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
        let e = read_jsonl::<Row>(&p).unwrap_err().to_string();
        assert!(e.contains("b.jsonl:2") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn jsonl_round_trip_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/p.jsonl");
        let rows = vec![
            Row { prompt: "a".into() },
            Row {
                prompt: "b\n".into(),
            },
        ];
        write_jsonl_atomic(&p, &rows).unwrap();
        assert_eq!(read_jsonl::<Row>(&p).unwrap(), rows);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);

        fs::write(&p, "{\"prompt\": \"a\"}\n\n{\"prompt\": 3}\n").unwrap();
        let err = read_jsonl::<Row>(&p).unwrap_err().to_string();
        assert!(err.contains("p.jsonl:3:"), "{err}");
        assert!(err.contains("expected a string"), "{err}");
        let err = read_jsonl::<Row>(dir.path().join("missing.jsonl")).unwrap_err();
        assert!(err.to_string().contains("missing.jsonl"));
    }
}
