//! The layers of docs/ARCHITECTURE.md, kept by the imports: each top-level module of src/ may
//! name only the modules its layer allows. An upward import fails this test, naming the line.

use std::path::{Path, PathBuf};

/// Each module and the modules it may use (besides itself). Read as "data flows one way":
/// stack -> target -> error -> python -> sample -> model -> recorder | formats | output |
/// exporter -> cli -> commands; dev (test tools) may use anything below the commands.
const ALLOWED: &[(&str, &[&str])] = &[
    ("stack", &[]),
    ("target", &["stack"]),
    // Errors give hints from the machine's settings (ptrace scope).
    ("error", &["target"]),
    ("python", &["stack", "target", "error"]),
    ("sample", &["stack", "target", "error", "python"]),
    ("model", &["stack", "error", "python", "sample"]),
    (
        "recorder",
        &["stack", "target", "error", "python", "sample", "model"],
    ),
    // Formats read the model; they never touch the target or the recorder.
    ("formats", &["stack", "error", "python", "sample", "model"]),
    ("output", &["error"]),
    // serve's HTTP endpoint: delivers the metrics formats' pages, as output writes files.
    ("exporter", &["error", "formats"]),
    ("cli", &["python", "sample", "formats"]),
    (
        "commands",
        &[
            "stack", "target", "error", "python", "sample", "model", "recorder", "formats",
            "output", "exporter", "cli",
        ],
    ),
    (
        "dev",
        &[
            "stack", "target", "error", "python", "sample", "model", "recorder", "formats",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to (None: lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Every `crate::NAME` a line names (in `use` declarations and paths alike).
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == module) else {
            unknown.push(module);
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a source file");
        // A module's unit tests (from `#[cfg(test)]` on, at the end of its file) may also use
        // the test tools (`dev`: synthetic recordings); the code they test may not.
        let mut in_tests = false;
        for (number, line) in text.lines().enumerate() {
            in_tests |= line.trim().starts_with("#[cfg(") && line.contains("test");
            let code = line.split("//").next().unwrap_or("");
            for used in crate_paths(code) {
                let test_tool = in_tests && used == "dev";
                if used != module && !allowed.contains(&used.as_str()) && !test_tool {
                    violations.push(format!(
                        "{}:{}: {module} may not use crate::{used}: {}",
                        file.strip_prefix(&src).unwrap().display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules with no place in the layers (add them to ALLOWED and docs/ARCHITECTURE.md): {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layers (docs/ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    assert_eq!(
        crate_paths("use crate::formats::text; let x = crate::model::Profile::new();"),
        ["formats", "model"]
    );
    assert!(crate_paths("use super::profile;").is_empty());
}
