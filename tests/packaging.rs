//! Packaging: `pip install .` in a fresh virtualenv puts a working `gilscope` on the
//! virtualenv's PATH (maturin, `bindings = "bin"`), with its completions and manual pages;
//! the wheel for other hosts carries the static build, tagged for old ones (manylinux2014).

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
    // What is under test is pip's path through pyproject.toml and maturin (the command on
    // PATH, its completions and pages), not a second compilation of the source every other
    // test runs: pip builds the static target into the directory where `.ci/run` (or
    // `cargo build --release --target x86_64-unknown-linux-musl`) built it, finds it up to
    // date, and packs it. Without that build, the test says so and skips, rather than
    // compiling the whole tree again for minutes inside a first `cargo test`.
    if let Some(why) = no_static_build() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "--no-input", "--disable-pip-version-check"])
        .arg(repo)
        .env("CARGO_TARGET_DIR", musl_target_dir())
        .env(
            "MATURIN_PEP517_ARGS",
            "--target x86_64-unknown-linux-musl --compatibility manylinux2014",
        );
    let out = pip.output().expect("run pip");
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

/// The wheel to copy to other hosts: the static (musl) build, which maturin's own audit lets
/// carry the manylinux2014 tag (glibc 2.17: RHEL 7, every distribution since) besides
/// musllinux: pip on an old host takes it. It must install and run here, and its binary must
/// run in a Debian 11 root (glibc 2.31), where the glibc build does not start.
#[test]
fn the_wheel_for_other_hosts_carries_a_static_binary_tagged_manylinux2014() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(why) = no_static_build() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let venv = dir.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output();
    if !made.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 -m venv failed");
        return;
    }
    let pip = venv.join("bin/pip");
    let out = run(
        &pip,
        &[
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "maturin>=1.5,<2",
        ],
    );
    if !out.status.success() {
        eprintln!(
            "skipped: maturin cannot be fetched from PyPI:\n{}",
            text(&out)
        );
        return;
    }
    let wheels = dir.path().join("wheels");
    let out = Command::new(venv.join("bin/maturin"))
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .args(["--compatibility", "manylinux2014", "musllinux_1_2", "--out"])
        .arg(&wheels)
        .current_dir(repo)
        .env("CARGO_TARGET_DIR", musl_target_dir())
        .output()
        .expect("run maturin");
    assert!(
        out.status.success(),
        "maturin build failed:\n{}",
        text(&out)
    );
    let wheel = std::fs::read_dir(&wheels)
        .expect("wheels")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    let name = wheel
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    for tag in ["manylinux2014_x86_64", "musllinux_1_2_x86_64"] {
        assert!(name.contains(tag), "{name} is not tagged {tag}");
    }
    // The binary in it: no program interpreter, no shared library.
    let unpacked = dir.path().join("unpacked");
    let out = Command::new(venv.join("bin/python"))
        .args(["-m", "zipfile", "-e"])
        .args([&wheel, &unpacked])
        .output()
        .expect("unzip");
    assert!(out.status.success(), "{}", text(&out));
    let version = env!("CARGO_PKG_VERSION");
    let binary = unpacked.join(format!("gilscope-{version}.data/scripts/gilscope"));
    let bytes = std::fs::read(&binary).expect("the binary in the wheel");
    let elf = goblin::elf::Elf::parse(&bytes).expect("an ELF file");
    assert!(
        elf.interpreter.is_none() && elf.libraries.is_empty(),
        "not static: interpreter {:?}, libraries {:?}",
        elf.interpreter,
        elf.libraries
    );
    // pip here takes it, and the command runs.
    let out = Command::new(&pip)
        .args(["install", "--no-index", "--disable-pip-version-check"])
        .arg(&wheel)
        .output()
        .expect("pip install the wheel");
    assert!(out.status.success(), "pip install {name}:\n{}", text(&out));
    let said = run(&venv.join("bin/gilscope"), &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&said.stdout).trim(),
        format!("gilscope {version}")
    );
    // And in an old distribution, where it matters.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let root = std::env::var("GILSCOPE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(&home).join(".cache/gilscope"))
        .join("bullseye");
    if !root.join("usr/bin/python3.9").exists() {
        eprintln!(
            "not run in Debian 11: no {} (scripts/old-distro)",
            root.display()
        );
        return;
    }
    let inside = tempfile::tempdir_in(root.join("tmp")).expect("tempdir in the root");
    let copy = inside.path().join("gilscope");
    std::fs::copy(&binary, &copy).expect("copy");
    // `python -m zipfile -e` keeps no modes (pip sets the scripts' own when it installs).
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = Path::new("/tmp")
        .join(inside.path().file_name().unwrap_or_default())
        .join("gilscope");
    let out = Command::new("chroot")
        .arg(&root)
        .arg(&path)
        .arg("--version")
        .output()
        .expect("chroot");
    assert!(
        out.status.success() && text(&out).contains(version),
        "the wheel's binary in Debian 11: {}",
        text(&out)
    );
}

fn musl_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("x86_64-unknown-linux-musl"))
}

/// Why the static build these tests pack is missing, if it is: the musl target, or its
/// release build (`.ci/run` makes it before the suite).
fn no_static_build() -> Option<String> {
    if !musl_installed() {
        return Some("no musl target (rustup target add x86_64-unknown-linux-musl)".into());
    }
    let binary = musl_target_dir().join("x86_64-unknown-linux-musl/release/gilscope");
    (!binary.is_file()).then(|| {
        format!(
            "no static build at {} to pack (cargo build --release --target \
             x86_64-unknown-linux-musl, as .ci/run does first)",
            binary.display()
        )
    })
}

/// Where maturin builds the static binary: this build's own target directory, whose musl part
/// `.ci/run` has built already (and which this `cargo test` does not lock: it locks
/// `release/`, not `x86_64-unknown-linux-musl/release/`), so that CI builds it once.
fn musl_target_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_gilscope"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
