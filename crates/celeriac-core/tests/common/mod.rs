//! Loading the Celery 5.7 wire vectors (`shared/celery-vectors`) for the golden tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub const VECTOR_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/celery-vectors"
);

pub fn vector_files() -> Vec<(String, Value)> {
    let dir = Path::new(VECTOR_DIR);
    assert!(
        dir.is_dir(),
        "Celery wire vectors not found at {} (expected <checkout>/../shared/celery-vectors); \
         these golden tests cannot run without them",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 27,
        "expected the 27 Celery 5.7 vector files in {}, found {}",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            let v: Value = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

/// The vector whose file name starts with `prefix` (e.g. `"01_"`).
pub fn vector(prefix: &str) -> Value {
    vector_files()
        .into_iter()
        .find(|(name, _)| name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no vector file starting with {prefix}"))
        .1
}

pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('/') {
        cur = match cur {
            Value::Array(items) => &items[part.parse::<usize>().expect("array index")],
            _ => cur
                .get(part)
                .unwrap_or_else(|| panic!("vector has no `{part}` in path {path}")),
        };
    }
    cur
}
