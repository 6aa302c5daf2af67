//! Run configs: TOML files with `--set key=value` overrides (dotted keys reach into tables), so
//! every run can be written down, reproduced, and varied from the command line.
//!
//! Invariant: config types use `#[serde(deny_unknown_fields)]`, so a key the type does not know
//! (a typo in the file or in `--set`) is an error naming it, never a silently ignored setting.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CoreError;

/// Builds a config: defaults of `T`, then the TOML file (if any), then each `key=value`.
/// Values are parsed as TOML (`3`, `1e-3`, `true`, `"text"`, `[1, 2]`); a bare word is a string.
pub fn load_config<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    overrides: &[String],
) -> Result<T, CoreError> {
    let err = |message: String| CoreError::Config { message };
    let mut value = toml::Value::try_from(T::default())
        .map_err(|e| err(format!("default config does not serialize: {e}")))?;
    if let Some(path) = file {
        let text = crate::io::read_to_string(path)?;
        let from_file: toml::Value =
            toml::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
        merge(&mut value, from_file, &path.display().to_string())?;
    }
    for item in overrides {
        let (key, raw) = item
            .split_once('=')
            .ok_or_else(|| err(format!("--set `{item}`: expected key=value")))?;
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        set(&mut value, key.trim(), parsed)?;
    }
    value.try_into().map_err(|e: toml::de::Error| {
        let origin = file
            .map(|p| format!("{}: ", p.display()))
            .unwrap_or_default();
        err(format!("{origin}{}", e.to_string().trim()))
    })
}

fn merge(base: &mut toml::Value, other: toml::Value, origin: &str) -> Result<(), CoreError> {
    match (base, other) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v, origin)?,
                    Some(slot) => *slot = v,
                    None => {
                        b.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (b, o) => {
            *b = o;
            let _ = origin;
            Ok(())
        }
    }
}

fn set(root: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), CoreError> {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = cur.as_table_mut().ok_or_else(|| CoreError::Config {
            message: format!("--set {key}: `{}` is not a table", parts[..i].join(".")),
        })?;
        if i + 1 == parts.len() {
            table.insert((*part).to_string(), value);
            return Ok(());
        }
        cur = table
            .entry((*part).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        lr: f64,
        name: String,
    }
    impl Default for Inner {
        fn default() -> Self {
            Self {
                lr: 1e-3,
                name: "a".into(),
            }
        }
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        steps: u64,
        inner: Inner,
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "steps = 5\n[inner]\nname = \"b\"\n").unwrap();
        let c: Outer = load_config(Some(&p), &["inner.lr=0.5".into(), "steps=7".into()]).unwrap();
        assert_eq!(
            c,
            Outer {
                steps: 7,
                inner: Inner {
                    lr: 0.5,
                    name: "b".into()
                }
            }
        );
        let c: Outer = load_config(None, &["inner.name=plain".into()]).unwrap();
        assert_eq!(c.inner.name, "plain");
        let e = load_config::<Outer>(None, &["inner.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrr") && e.contains("lr"), "{e}");
        std::fs::write(&p, "stepz = 5\n").unwrap();
        let e = load_config::<Outer>(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("stepz"), "{e}");
        let e = load_config::<Outer>(None, &["steps=minus".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps") || e.contains("integer"), "{e}");
    }
}
