//! Pythons as production runs them, not as `python app.py`: embedded in another program
//! (libpython linked into an application), started through the dynamic loader, and inside
//! another mount namespace where the interpreter's files are not at their paths.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed};
use serde_json::Value;

use common::{fixture_path, gilscope_ok, Fixture, Python};

/// The dynamic loader of x86_64 glibc systems.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

type Test = fn(&Python) -> Result<Completion, Failed>;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let pythons = common::pythons();
    let mut trials = Vec::new();
    let tests: [(&str, Test); 3] = [
        ("an_application_embedding_libpython_is_measured", embedded),
        ("a_python_started_by_the_dynamic_loader_is_measured", loader),
        ("a_python_in_another_mount_namespace_is_measured", namespace),
    ];
    for (name, test) in tests {
        trials.extend(common::per_interpreter(&pythons, name, move |python| {
            let _exclusive = common::exclusive();
            test(python)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}

/// Record the spinners fixture (three threads) for a second and check that gilscope saw what
/// it does: the GIL held nearly all the time, each spinner holding a fair share and waiting
/// for the rest. Returns the report.
fn spinners_measured(fx: &Fixture) -> Result<Value, Failed> {
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1.5",
        "--format",
        "json",
    ])?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let held = report["gil"]["held"].as_f64().unwrap_or(0.0);
    if held < 0.9 {
        return Err(format!("GIL held {held}: three spinners hold it all the time").into());
    }
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let row = common::thread_row(&report, fx.tid(role)).ok_or(format!("no {role}"))?;
        let (hold, wait) = (common::fraction(row, "hold"), common::fraction(row, "wait"));
        if hold < 0.15 || hold + wait < 0.9 {
            return Err(format!("{role}: hold {hold} wait {wait}").into());
        }
    }
    Ok(report)
}

fn fixtures_dir() -> PathBuf {
    fixture_path("gilfixture")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `python3.X-config`'s answer to `args`, if the interpreter has one.
fn config(python: &Python, args: &[&str]) -> Option<String> {
    let name = python.path.file_name()?.to_str()?;
    let tool = python.path.with_file_name(format!("{name}-config"));
    let out = Command::new(tool).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The directory of the interpreter's shared libpython, if it has one.
fn shared_libpython_dir(python: &Python) -> Option<PathBuf> {
    let out = Command::new(&python.path)
        .args([
            "-c",
            "import sysconfig as s; print(s.get_config_var('LIBDIR') if \
             s.get_config_var('Py_ENABLE_SHARED') else '')",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (!dir.as_os_str().is_empty() && dir.is_dir()).then_some(dir)
}

/// A C program that links libpython and runs the fixture in Python threads (the uwsgi or
/// plugin case): the executable is not python and does not define the interpreter.
fn embedded(python: &Python) -> Result<Completion, Failed> {
    let Some(libdir) = shared_libpython_dir(python) else {
        return Ok(Completion::ignored_with(
            "this build has no shared libpython to embed",
        ));
    };
    let flags = config(python, &["--embed", "--cflags", "--ldflags"])
        .or_else(|| config(python, &["--cflags", "--ldflags"]));
    let Some(flags) = flags else {
        return Ok(Completion::ignored_with("no python3.X-config beside it"));
    };
    let dir = tempfile::tempdir()?;
    let host = dir.path().join("embedding-app");
    let source = fixtures_dir().join("embedded").join("host.c");
    let out = Command::new("cc")
        .arg("-o")
        .arg(&host)
        .arg(&source)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-Wno-deprecated-declarations")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "cc {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let spinners = fixture_path("spinners");
    let fx = Fixture::start_command(&host, &[spinners.as_os_str()])?;
    let report = spinners_measured(&fx)?;
    let binary = report["target"]["binary"].as_str().unwrap_or("");
    if !binary.contains("libpython") {
        return Err(format!("the interpreter was found in {binary}, not libpython").into());
    }
    Ok(Completion::Completed)
}

/// The program interpreter an ELF64 executable asks for (PT_INTERP), read from the program
/// headers alone (a stripped binary's other parts need not parse).
fn requested_loader(elf: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let (phoff, size, count) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    (0..count as usize).find_map(|i| {
        let header = phoff + i * size as usize;
        if u32_at(header)? != PT_INTERP {
            return None;
        }
        let (offset, len) = (u64_at(header + 8)? as usize, u64_at(header + 32)? as usize);
        let path = elf.get(offset..offset + len)?;
        let path = path.split(|&b| b == 0).next()?;
        Some(PathBuf::from(std::str::from_utf8(path).ok()?))
    })
}

/// `ld.so python3.X app.py`: /proc/PID/exe is the loader, not the interpreter. The loader
/// is the one the executable asks for (its PT_INTERP), or the system's for a static one.
fn loader(python: &Python) -> Result<Completion, Failed> {
    let bytes = std::fs::read(&python.path)?;
    let loader = requested_loader(&bytes).unwrap_or_else(|| PathBuf::from(LOADER));
    if !loader.exists() {
        return Ok(Completion::ignored_with(format!("no {}", loader.display())));
    }
    let spinners = fixture_path("spinners");
    let fx = Fixture::start_command(&loader, &[python.path.as_os_str(), spinners.as_os_str()])?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", fx.pid))?;
    if !exe.to_string_lossy().contains("ld-linux") {
        return Err(format!("the fixture's executable is {}", exe.display()).into());
    }
    spinners_measured(&fx)?;
    Ok(Completion::Completed)
}

/// The interpreter's installation (the directory above its bin/) mounted at a path that
/// exists only in the target's own mount namespace, as in a container: gilscope must open
/// the executable and libpython through /proc/PID/root.
fn namespace(python: &Python) -> Result<Completion, Failed> {
    if Command::new("unshare").arg("--version").output().is_err() {
        return Ok(Completion::ignored_with("no unshare (util-linux)"));
    }
    let (Some(bin), Some(name)) = (python.path.parent(), python.path.file_name()) else {
        return Err(format!("{} has no directory", python.path.display()).into());
    };
    let prefix = bin.parent().ok_or("no installation directory")?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().display().to_string();
    let program = format!(
        "{root}/py/{}/{}",
        bin.file_name().unwrap_or_default().to_string_lossy(),
        name.to_string_lossy()
    );
    let spinners = fixture_path("spinners");
    let script = format!(
        "mount -t tmpfs none {root} && mkdir {root}/py && mount --bind '{}' {root}/py && \
         exec env LD_LIBRARY_PATH={root}/py/lib {program} '{}'",
        prefix.display(),
        spinners.display()
    );
    let fx = Fixture::start_command(
        Path::new("unshare"),
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )?;
    let report = spinners_measured(&fx)?;
    let binary = report["target"]["binary"].as_str().unwrap_or("");
    if !binary.starts_with(&root) {
        return Err(format!("interpreter {binary}: not the namespace's {root}").into());
    }
    if Path::new(binary).exists() {
        return Err(format!("{binary} is visible outside the namespace: not a test").into());
    }
    Ok(Completion::Completed)
}
