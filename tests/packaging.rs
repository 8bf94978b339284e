//! Packaging: `pip install .` in a fresh virtualenv puts a working `gilscope` on the
//! virtualenv's PATH (maturin, `bindings = "bin"`), with its completions and manual pages.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Fixture;

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pip_install_puts_a_working_gilscope_on_the_virtualenvs_path() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let venv = dir.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("skipped: python3 -m venv failed: {}", text(&out));
            return;
        }
        Err(e) => {
            eprintln!("skipped: no python3 to make a virtualenv with: {e}");
            return;
        }
    }
    // Its own target directory: the one of this `cargo test` is locked while tests run, and
    // a persistent one makes the next run incremental.
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--no-input", "--disable-pip-version-check"])
        .arg(repo)
        .env("CARGO_TARGET_DIR", repo.join("target/pip"))
        .output()
        .expect("run pip");
    let said = text(&out);
    if !out.status.success() {
        let unreachable = [
            "No matching distribution found for maturin",
            "Could not find a version that satisfies the requirement maturin",
            "Failed to establish a new connection",
        ];
        if unreachable.iter().any(|u| said.contains(u)) {
            eprintln!("skipped: the build backend (maturin) cannot be fetched from PyPI:\n{said}");
            return;
        }
        panic!("pip install . failed:\n{said}");
    }
    let gilscope = venv.join("bin/gilscope");
    assert!(
        gilscope.is_file(),
        "no {} after:\n{said}",
        gilscope.display()
    );

    let version = run(&gilscope, &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("gilscope {}", env!("CARGO_PKG_VERSION"))
    );
    let completions = run(&gilscope, &["completions", "bash"]);
    assert!(
        completions.status.success() && text(&completions).contains("complete -F _gilscope"),
        "{}",
        text(&completions)
    );
    let man = run(&gilscope, &["man", "serve"]);
    assert!(
        man.status.success() && text(&man).contains(".TH gilscope-serve 1"),
        "{}",
        text(&man)
    );

    // And it does its job: a snapshot of a live Python process.
    let pythons = common::pythons();
    let Some(python) = common::cli_python(&pythons) else {
        eprintln!("no Python interpreter to take a snapshot of: installed binary not run");
        return;
    };
    let fixture = Fixture::start(&python.path, "spinners", &["--threads", "2"]).expect("fixture");
    let dump = run(&gilscope, &["dump", "--pid", &fixture.pid.to_string()]);
    let said = text(&dump);
    assert!(dump.status.success(), "{said}");
    for thread in ["spinner-0", "spinner-1"] {
        assert!(said.contains(thread), "no {thread} in:\n{said}");
    }
}
