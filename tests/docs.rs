//! Every schema name and version a user reads (help, man pages, README, docs, code comments)
//! is the one gilscope writes. Versions of the past are allowed only in the history: the
//! CHANGELOG and a "Version history" section of a doc.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `gilscope.NAME/N` mentions in `text`, as (name, version, line number).
fn mentions(text: &str) -> Vec<(String, u32, usize)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("gilscope.") {
            rest = &rest[at + "gilscope.".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let after = &rest[name.len()..];
            let Some(digits) = after.strip_prefix('/') else {
                continue;
            };
            let version: String = digits.chars().take_while(char::is_ascii_digit).collect();
            if let (false, Ok(version)) = (name.is_empty(), version.parse()) {
                found.push((name, version, number + 1));
            }
        }
    }
    found
}

/// The schemas the code writes: the `SCHEMA` constants of src/formats.
fn written() -> BTreeMap<String, u32> {
    let mut schemas = BTreeMap::new();
    for file in rust_files(Path::new("src/formats")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("pub const") && line.contains("SCHEMA") {
                for (name, version, _) in mentions(line) {
                    let previous = schemas.insert(name.clone(), version);
                    assert!(
                        previous.is_none_or(|v| v == version),
                        "{name} is written as two versions"
                    );
                }
            }
        }
    }
    assert!(
        schemas.contains_key("report") && schemas.contains_key("dump"),
        "no SCHEMA constants found in src/formats: {schemas:?}"
    );
    schemas
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `text` without its "Version history" sections (from such a heading to the next heading of
/// the same or a higher level), lines kept in place so that line numbers still point right.
fn without_history(text: &str) -> String {
    let mut history_level = None;
    let mut kept = Vec::new();
    for line in text.lines() {
        let level = line.chars().take_while(|&c| c == '#').count();
        let heading = level > 0 && line[level..].starts_with(' ');
        if heading {
            if history_level.is_some_and(|l| level <= l) {
                history_level = None;
            }
            if line.to_lowercase().contains("version history") {
                history_level = Some(level);
            }
        }
        kept.push(if history_level.is_some() { "" } else { line });
    }
    kept.join("\n")
}

/// Every mention in `text` (read from `source`) that is not the version the code writes.
fn stale(source: &str, text: &str, schemas: &BTreeMap<String, u32>) -> Vec<String> {
    mentions(text)
        .into_iter()
        .filter_map(|(name, version, line)| match schemas.get(&name) {
            Some(&current) if current == version => None,
            Some(&current) => Some(format!(
                "{source}:{line}: gilscope.{name}/{version}, but gilscope writes \
                 gilscope.{name}/{current}"
            )),
            None => Some(format!(
                "{source}:{line}: gilscope.{name}/{version}, a schema gilscope does not write"
            )),
        })
        .collect()
}

#[test]
fn schema_names_in_help_man_pages_and_docs_are_the_ones_written() {
    let schemas = written();
    let mut problems = Vec::new();
    let mut read = 0;
    // What the binary prints: every command's help and every manual page.
    let commands = ["record", "dump", "top", "serve", "man", "completions"];
    for args in std::iter::once(vec!["--help"]).chain(commands.iter().map(|c| vec![*c, "--help"])) {
        let out = common::gilscope(&args);
        assert!(out.status.success(), "gilscope {args:?} failed");
        problems.extend(stale(
            &format!("gilscope {}", args.join(" ")),
            &common::stdout_of(&out),
            &schemas,
        ));
        read += 1;
    }
    let pages = tempfile::tempdir().unwrap();
    let out_dir = pages.path().join("man1");
    let out = common::gilscope(&["man", "--out-dir", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr_of(&out));
    for page in std::fs::read_dir(&out_dir).unwrap() {
        let page = page.unwrap().path();
        let text = std::fs::read_to_string(&page).unwrap();
        problems.extend(stale(&page.display().to_string(), &text, &schemas));
        read += 1;
    }
    // What the repository says: README, docs (but their version histories), the code.
    let mut files = vec![PathBuf::from("README.md")];
    for entry in std::fs::read_dir("docs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.extend(rust_files(Path::new("src")));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        problems.extend(stale(
            &file.display().to_string(),
            &without_history(&text),
            &schemas,
        ));
        read += 1;
    }
    assert!(read > 10, "only {read} texts read");
    assert!(
        problems.is_empty(),
        "stale schema names:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_finds_a_stale_version_and_spares_the_history() {
    let schemas = BTreeMap::from([("report".to_string(), 5)]);
    let doc = "# Report\n`gilscope.report/4` is written\n## Version history\n\
               - `gilscope.report/4`: old\n### 4\nstill history gilscope.report/3\n\
               ## Fields\n| schema | `\"gilscope.report/5\"` |\ngilscope.reports/1\n";
    let problems = stale("doc", &without_history(doc), &schemas);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("doc:2: gilscope.report/4"));
    assert!(problems[1].starts_with("doc:9: gilscope.reports/1"));
}
