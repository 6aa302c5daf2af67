//! File I/O with the project's guarantees: JSONL read with line-numbered errors, and writes
//! that go to a temporary file in the same directory and are renamed into place, so that an
//! interrupted run never leaves a truncated file.

use std::fs;
use std::io::{BufRead, BufReader, Write};
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
    let mut rows = Vec::new();
    for (i, bytes) in BufReader::new(file).split(b'\n').enumerate() {
        let bytes = bytes.map_err(|e| CoreError::io(path, e))?;
        let bad = |message: String| CoreError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
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
