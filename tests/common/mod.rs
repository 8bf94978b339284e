//! Shared test plumbing: find the interpreters on this machine, start fixtures, run the real
//! gilscope binary, and keep tests that measure GIL time from running at the same time.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An interpreter to test against.
#[derive(Debug, Clone)]
pub struct Python {
    /// "pyenv-3.12.1", "system-3.11.2", "debian-3.14.10".
    pub label: String,
    pub path: PathBuf,
    pub version: String,
    /// A separate file with the symbols of a stripped interpreter (for the uprobe reference).
    pub debug_file: Option<PathBuf>,
}

/// What the suite expects to find, and what it found.
#[derive(Debug, Clone)]
pub struct Pythons {
    pub found: Vec<Python>,
    /// (label, why it is missing): reported as skipped trials, never as failures.
    pub missing: Vec<(String, String)>,
}

pub fn pyenv_root() -> Option<PathBuf> {
    if let Ok(root) = std::env::var("PYENV_ROOT") {
        return Some(PathBuf::from(root));
    }
    if let Ok(out) = Command::new("pyenv").arg("root").output() {
        if out.status.success() {
            let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !root.is_empty() {
                return Some(PathBuf::from(root));
            }
        }
    }
    let home = PathBuf::from(std::env::var("HOME").ok()?).join(".pyenv");
    home.exists().then_some(home)
}

/// The newest pyenv version directory for major.minor ("3.12" -> .../versions/3.12.1).
pub fn pyenv_version(minor: &str) -> Option<PathBuf> {
    let versions = pyenv_root()?.join("versions");
    let prefix = format!("{minor}.");
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(versions)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_str()?.to_string();
            let rest = name.strip_prefix(&prefix)?;
            let patch: u32 = rest.parse().ok()?;
            let parts = minor
                .split('.')
                .filter_map(|p| p.parse().ok())
                .chain([patch]);
            Some((parts.collect(), e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The interpreter's own `sys.version_info` as "3.12.1".
pub fn python_version(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn debian_pythons_dir() -> PathBuf {
    match std::env::var("GILSCOPE_PYTHONS") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/gilscope/pythons"),
    }
}

/// Every interpreter the suite covers: pyenv 3.6-3.13, the system python3, Debian 3.14/3.15.
pub fn pythons() -> Pythons {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for minor in 6..=13 {
        let label = format!("pyenv-3.{minor}");
        let path = pyenv_version(&format!("3.{minor}"))
            .map(|dir| dir.join("bin").join(format!("python3.{minor}")));
        match path.as_deref().and_then(|p| Some((p, python_version(p)?))) {
            Some((p, version)) => found.push(Python {
                label: format!("pyenv-{version}"),
                path: p.to_path_buf(),
                version,
                debug_file: None,
            }),
            None => missing.push((
                label,
                format!("no pyenv CPython 3.{minor} (pyenv install 3.{minor})"),
            )),
        }
    }
    let system = PathBuf::from("/usr/bin/python3");
    match std::fs::canonicalize(&system)
        .ok()
        .and_then(|p| Some((python_version(&p)?, p)))
    {
        Some((version, path)) => found.push(Python {
            label: format!("system-{version}"),
            path,
            version,
            debug_file: None,
        }),
        None => missing.push(("system".into(), "no /usr/bin/python3".into())),
    }
    let debian = debian_pythons_dir();
    for minor in ["3.14", "3.15"] {
        let path = debian.join(minor).join("python");
        match python_version(&path) {
            Some(version) => {
                let debug = debian.join(minor).join("python.debug");
                found.push(Python {
                    label: format!("debian-{version}"),
                    path: std::fs::canonicalize(&path).unwrap_or(path),
                    version,
                    debug_file: debug.exists().then_some(debug),
                })
            }
            None => missing.push((
                format!("debian-{minor}"),
                format!(
                    "no Debian CPython {minor} in {} (run scripts/test-pythons)",
                    debian.display()
                ),
            )),
        }
    }
    Pythons { found, missing }
}

/// Free-threaded builds, kept apart from [`pythons`]: without a GIL their threads neither hold
/// nor wait, so the GIL tests of every other interpreter do not apply. `scripts/test-pythons
/// 3.13t 3.14t` builds them into the same cache as Debian's 3.14/3.15.
pub fn free_threaded_pythons() -> Pythons {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let cache = debian_pythons_dir();
    for version in ["3.13t", "3.14t"] {
        let path = cache.join(version).join("python");
        match python_version(&path) {
            Some(exact) => found.push(Python {
                label: format!("source-{exact}t"),
                path: std::fs::canonicalize(&path).unwrap_or(path),
                version: exact,
                debug_file: None,
            }),
            None => missing.push((
                format!("source-{version}"),
                format!(
                    "no free-threaded CPython {version} in {} (run scripts/test-pythons \
                     {version}: a ~10-15 min build)",
                    cache.display()
                ),
            )),
        }
    }
    Pythons { found, missing }
}

/// The interpreters the default suite leaves to the full matrix: each shares its way of being
/// read with one that stays (3.7 with 3.6's tables and thread ids, 3.8 and 3.9 with 3.10's
/// frames, pyenv's shared 3.11 with the static stripped 3.11, 3.14 with 3.13's and 3.15's
/// debug offsets). Issue 17: the whole suite in under 20 minutes on two cores.
const FULL_MATRIX_ONLY: [&str; 5] = [
    "pyenv-3.7.",
    "pyenv-3.8.",
    "pyenv-3.9.",
    "pyenv-3.11.",
    "debian-3.14.",
];

/// Which part of the interpreter matrix this run takes: `GILSCOPE_MATRIX` unset runs one
/// interpreter per layout family, `all` every interpreter, and `rest` only what the default
/// leaves out (`.ci/run` runs the default, then the rest: every version is proved in CI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    Default,
    All,
    Rest,
}

pub fn matrix_mode() -> Matrix {
    match std::env::var("GILSCOPE_MATRIX").as_deref() {
        Ok("all") => Matrix::All,
        Ok("rest") => Matrix::Rest,
        _ => Matrix::Default,
    }
}

/// Does the default suite run tests of every version on the interpreter labelled `label`?
pub fn in_default_matrix(label: &str) -> bool {
    !FULL_MATRIX_ONLY.iter().any(|p| label.starts_with(p))
}

/// `pythons` narrowed to this run's part of the matrix ([`matrix_mode`]); an interpreter left
/// out is a skipped trial that says where it runs. For tests of what is read from each
/// version; a test whose subject is one version picks it from [`pythons`] itself.
pub fn matrix(pythons: &Pythons) -> Pythons {
    let mode = matrix_mode();
    let mut found = Vec::new();
    let mut missing = pythons.missing.clone();
    for python in &pythons.found {
        let default = in_default_matrix(&python.label);
        match (mode, default) {
            (Matrix::All, _) | (Matrix::Default, true) | (Matrix::Rest, false) => {
                found.push(python.clone())
            }
            (Matrix::Default, false) => missing.push((
                python.label.clone(),
                "in the full matrix only (GILSCOPE_MATRIX=rest or all; .ci/run runs it)".into(),
            )),
            (Matrix::Rest, true) => missing.push((
                python.label.clone(),
                "in the default matrix (run without GILSCOPE_MATRIX)".into(),
            )),
        }
    }
    Pythons { found, missing }
}

/// Part `part` of `parts` of the matrix, for a test made of variants that each need not run
/// on every interpreter of the default pass: there variant `part` takes every `parts`-th
/// interpreter (so each interpreter of the default matrix runs one variant, in turn); the
/// `rest` pass takes its own interpreters and the default ones the variant left out, so
/// that over both passes every variant runs on every interpreter; `all` takes them all.
pub fn matrix_in_turn(pythons: &Pythons, parts: usize, part: usize) -> Pythons {
    let mode = matrix_mode();
    let mut found = Vec::new();
    let mut missing = pythons.missing.clone();
    let defaults = pythons
        .found
        .iter()
        .filter(|p| in_default_matrix(&p.label))
        .enumerate();
    for (index, python) in defaults {
        let in_turn = index % parts.max(1) == part;
        match (mode, in_turn) {
            (Matrix::All, _) | (Matrix::Default, true) | (Matrix::Rest, false) => {
                found.push(python.clone())
            }
            (Matrix::Default, false) => missing.push((
                python.label.clone(),
                "not its turn in the default pass (GILSCOPE_MATRIX=rest runs it)".into(),
            )),
            (Matrix::Rest, true) => missing.push((
                python.label.clone(),
                "in the default matrix (run without GILSCOPE_MATRIX)".into(),
            )),
        }
    }
    let others = pythons
        .found
        .iter()
        .filter(|p| !in_default_matrix(&p.label));
    for python in others {
        match mode {
            Matrix::All | Matrix::Rest => found.push(python.clone()),
            Matrix::Default => missing.push((
                python.label.clone(),
                "in the full matrix only (GILSCOPE_MATRIX=rest or all; .ci/run runs it)".into(),
            )),
        }
    }
    Pythons { found, missing }
}

/// Every interpreter of `pythons`, for the few tests that prove each version is read right
/// in the default suite itself; in the `rest` pass (which only completes the default) none.
pub fn every(pythons: &Pythons) -> Pythons {
    if matrix_mode() != Matrix::Rest {
        return pythons.clone();
    }
    let mut missing = pythons.missing.clone();
    missing.extend(pythons.found.iter().map(|p| {
        (
            p.label.clone(),
            "on every interpreter in the default matrix (run without GILSCOPE_MATRIX)".into(),
        )
    }));
    Pythons {
        found: Vec::new(),
        missing,
    }
}

/// The one interpreter that tests of the command line (not of a version) run against.
pub fn cli_python(pythons: &Pythons) -> Option<Python> {
    pythons
        .found
        .iter()
        .find(|p| p.label.starts_with("pyenv-3.12"))
        .or(pythons.found.first())
        .cloned()
}

/// Just the interpreter of [`cli_python`], for a test whose subject does not depend on the
/// version (what gilscope concludes from figures, how a format escapes a name): the versions
/// themselves are covered by the tests that read them.
pub fn cli_only(pythons: &Pythons) -> Pythons {
    if matrix_mode() == Matrix::Rest {
        return Pythons {
            found: Vec::new(),
            missing: vec![(
                "cli".into(),
                "in the default matrix (run without GILSCOPE_MATRIX)".into(),
            )],
        };
    }
    match cli_python(pythons) {
        Some(python) => Pythons {
            found: vec![python],
            missing: Vec::new(),
        },
        None => Pythons {
            found: Vec::new(),
            missing: vec![("any".into(), "no Python 3 interpreter found".into())],
        },
    }
}

/// A trial named `name::LABEL` per interpreter found, running `test` on it, and one per
/// interpreter missing, ignored with the reason.
pub fn per_interpreter<F>(pythons: &Pythons, name: &str, test: F) -> Vec<libtest_mimic::Trial>
where
    F: Fn(&Python) -> Result<libtest_mimic::Completion, libtest_mimic::Failed>
        + Clone
        + Send
        + 'static,
{
    let mut trials = Vec::new();
    for python in &pythons.found {
        let (python, test) = (python.clone(), test.clone());
        trials.push(libtest_mimic::Trial::ignorable_test(
            format!("{name}::{}", python.label),
            move || test(&python),
        ));
    }
    for (label, why) in &pythons.missing {
        let why = why.clone();
        trials.push(libtest_mimic::Trial::ignorable_test(
            format!("{name}::{label}"),
            move || Ok(libtest_mimic::Completion::ignored_with(why)),
        ));
    }
    trials
}

/// A trial of `test` on the interpreter the CLI tests use (ignored if there is none), with
/// the machine to itself.
pub fn on_cli_python<F>(pythons: &Pythons, name: &str, test: F) -> libtest_mimic::Trial
where
    F: FnOnce(&Python) -> Result<libtest_mimic::Completion, libtest_mimic::Failed> + Send + 'static,
{
    let python = cli_python(pythons);
    let rest = matrix_mode() == Matrix::Rest;
    libtest_mimic::Trial::ignorable_test(name, move || match &python {
        _ if rest => Ok(libtest_mimic::Completion::ignored_with(
            "in the default matrix (run without GILSCOPE_MATRIX)",
        )),
        Some(python) => {
            let _exclusive = exclusive();
            test(python)
        }
        None => Ok(libtest_mimic::Completion::ignored_with(
            "no Python 3 interpreter found",
        )),
    })
}

/// Hold this while a test measures GIL time: those tests share two cores and must not overlap,
/// even across test binaries run in parallel by other runners. Several checkouts on one
/// machine share one lock through `GILSCOPE_TEST_LOCK` (a file path).
pub struct Exclusive {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

pub fn exclusive() -> Exclusive {
    let path = std::env::var_os("GILSCOPE_TEST_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("gil-measuring-tests.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("lock file");
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    Exclusive { _lock: lock }
}

/// A directory holding a copy of `python`'s shared libpython stripped of its symbol table
/// (no take_gil: `--switch-sites` cannot be in effect on it), for LD_LIBRARY_PATH. None,
/// said on stderr, where the interpreter has no shared libpython or strip(1) fails.
#[allow(dead_code)]
pub fn stripped_libpython(
    python: &Python,
) -> Result<Option<tempfile::TempDir>, libtest_mimic::Failed> {
    stripped_libpython_with(python, false)
}

/// As [`stripped_libpython`], with `debug_file`: its symbols and DWARF kept in a separate
/// debug file beside it, which its `.gnu_debuglink` names (as distributions ship them).
#[allow(dead_code)]
pub fn stripped_libpython_with(
    python: &Python,
    debug_file: bool,
) -> Result<Option<tempfile::TempDir>, libtest_mimic::Failed> {
    let prefix = python
        .path
        .parent()
        .and_then(Path::parent)
        .ok_or("no prefix")?;
    let library = std::fs::read_dir(prefix.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libpython3") && n.contains(".so."))
        });
    let Some(library) = library else {
        eprintln!(
            "{}: no shared libpython: the stripped case is not run",
            python.label
        );
        return Ok(None);
    };
    let stripped = tempfile::tempdir()?;
    let copy = stripped.path().join(library.file_name().ok_or("name")?);
    std::fs::copy(&library, &copy)?;
    let run = |program: &str, args: &[&std::ffi::OsStr]| {
        Command::new(program)
            .args(args)
            .current_dir(stripped.path())
            .status()
            .is_ok_and(|s| s.success())
    };
    let name = copy.file_name().ok_or("name")?.to_os_string();
    let mut debug_name = name.clone();
    debug_name.push(".debug");
    if debug_file
        && !run(
            "objcopy",
            &["--only-keep-debug".as_ref(), &name, &debug_name],
        )
    {
        eprintln!("objcopy(1) failed or is missing: the debug-file case is not run");
        return Ok(None);
    }
    if !run("strip", &["--strip-all".as_ref(), &name]) {
        eprintln!("strip(1) failed or is missing: the stripped case is not run");
        return Ok(None);
    }
    let mut link = std::ffi::OsString::from("--add-gnu-debuglink=");
    link.push(&debug_name);
    if debug_file && !run("objcopy", &[&link, &name]) {
        eprintln!("objcopy --add-gnu-debuglink failed: the debug-file case is not run");
        return Ok(None);
    }
    Ok(Some(stripped))
}

/// Start `fixture` on `python` with LD_LIBRARY_PATH set to `library_dir` where given, through
/// env(1), which execs the interpreter: the fixture's pid is the interpreter's.
#[allow(dead_code)]
pub fn start_with_libraries(
    python: &Python,
    library_dir: Option<&Path>,
    fixture: &str,
    args: &[&str],
) -> Result<Fixture, libtest_mimic::Failed> {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(dir) = library_dir {
        argv.push(format!("LD_LIBRARY_PATH={}", dir.display()).into());
    }
    argv.push(python.path.clone().into());
    argv.push(fixture_path(fixture).into());
    argv.extend(args.iter().map(std::ffi::OsString::from));
    Ok(Fixture::start_command(Path::new("/usr/bin/env"), &argv)?)
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.py"))
}

/// The namespaces a container runtime gives a program, made with util-linux's `unshare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// Its own PID namespace (and mount namespace, for its /proc): `docker run`.
    Pid,
    /// Its own user namespace too, root inside mapped to us outside: rootless Podman.
    PidAndUser,
}

impl Container {
    pub const ALL: [Container; 2] = [Container::Pid, Container::PidAndUser];

    /// For test names: "in_its_own_pid_namespace", ...
    pub fn label(self) -> &'static str {
        match self {
            Container::Pid => "pid_namespace",
            Container::PidAndUser => "pid_and_user_namespaces",
        }
    }

    fn unshare_args(self) -> impl Iterator<Item = &'static str> {
        let user: &[&str] = match self {
            Container::Pid => &[],
            Container::PidAndUser => &["--user", "--map-root-user"],
        };
        user.iter()
            .chain(&["--pid", "--fork", "--kill-child", "--mount-proc"])
            .copied()
    }

    /// Why containers cannot be made here, if they cannot.
    pub fn unavailable() -> Option<String> {
        let probe = Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--mount-proc",
                "true",
            ])
            .output();
        match probe {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "unshare cannot make PID and user namespaces here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("no unshare (util-linux): {e}")),
        }
    }
}

/// The one child of `pid` (a container's first process under `unshare --fork`), within 5 s.
pub fn only_child(pid: i32) -> Option<i32> {
    for _ in 0..500 {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        if let Some(child) = children
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
        {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The threads of `pid`: the id each has in its own PID namespace -> this host's id, from
/// the NSpid lines (the last id is the innermost namespace's).
pub fn own_ids_on_host(pid: i32) -> BTreeMap<i32, i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let host: i32 = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            let own: i32 = line.split_whitespace().last()?.parse().ok()?;
            Some((own, host))
        })
        .collect()
}

/// A running fixture process; killed when dropped.
pub struct Fixture {
    pub child: Child,
    pub pid: i32,
    /// Role ("spinner-0", "main", ...) -> kernel tid.
    pub threads: BTreeMap<String, i32>,
    /// In a container: role -> the tid the thread has in its own PID namespace (what the
    /// fixture announced); empty otherwise.
    pub ns_threads: BTreeMap<String, i32>,
    /// The process group killed when the fixture is dropped (its first process's pid).
    group: i32,
    /// Facts the fixture announced about this build (`facts` in the announcement).
    pub facts: serde_json::Value,
}

impl Fixture {
    /// Start `fixtures/<name>.py` under `python` and wait for its announcement line.
    pub fn start(python: &Path, name: &str, args: &[&str]) -> Result<Fixture, String> {
        Fixture::start_script(python, &fixture_path(name), args)
    }

    /// Start a fixture from a script anywhere (a copy under another name, say): it finds
    /// `gilfixture` in fixtures/ through PYTHONPATH.
    pub fn start_script(python: &Path, script: &Path, args: &[&str]) -> Result<Fixture, String> {
        let mut argv: Vec<&std::ffi::OsStr> = vec![script.as_os_str()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        Fixture::start_command(python, &argv)
    }

    /// Start any command that runs a fixture (an embedding program, the dynamic loader, a
    /// namespace): it must print the fixture's announcement line first.
    pub fn start_command<S: AsRef<std::ffi::OsStr>>(
        program: &Path,
        args: &[S],
    ) -> Result<Fixture, String> {
        let name = format!(
            "{} {}",
            program.display(),
            args.first()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut child = Command::new(program)
            .args(args)
            .process_group(0)
            .env(
                "PYTHONPATH",
                fixture_path("gilfixture").parent().expect("fixtures"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        let line = match first_line(&mut child, Duration::from_secs(30)) {
            Some(line) => line,
            None => {
                let _ = child.kill();
                return Err(format!("{name} did not start"));
            }
        };
        let announce: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{name}: bad announcement {line:?}: {e}"))?;
        let threads = announce["threads"]
            .as_object()
            .ok_or("announcement without threads")?
            .iter()
            .map(|(role, tid)| (role.clone(), tid.as_i64().unwrap_or(0) as i32))
            .collect();
        Ok(Fixture {
            pid: child.id() as i32,
            group: child.id() as i32,
            child,
            threads,
            ns_threads: BTreeMap::new(),
            facts: announce["facts"].clone(),
        })
    }

    /// Start `fixtures/<name>.py` in a container of `kind`, as a container runtime would:
    /// `unshare` makes the namespaces and the fixture is their first process (pid 1). `pid`
    /// and `threads` are then the ids this host gives them (what gilscope must report), and
    /// `ns_threads` those the fixture announced from inside.
    pub fn start_contained(
        python: &Path,
        name: &str,
        args: &[&str],
        kind: Container,
    ) -> Result<Fixture, String> {
        let script = fixture_path(name);
        let mut argv: Vec<std::ffi::OsString> = kind.unshare_args().map(Into::into).collect();
        argv.push(python.into());
        argv.push(script.into());
        argv.extend(args.iter().map(Into::into));
        let mut fx = Fixture::start_command(Path::new("unshare"), &argv)?;
        let host_pid = only_child(fx.pid).ok_or("no process inside the container")?;
        let host_tids = own_ids_on_host(host_pid);
        fx.ns_threads = std::mem::take(&mut fx.threads);
        for (role, own) in &fx.ns_threads {
            let host = host_tids.get(own).ok_or(format!(
                "thread {role} ({own} inside) is not a thread on the host"
            ))?;
            fx.threads.insert(role.clone(), *host);
        }
        fx.pid = host_pid;
        Ok(fx)
    }

    pub fn tid(&self, role: &str) -> i32 {
        self.threads[role]
    }
}

impl Drop for Fixture {
    /// Kill the fixture's whole process group: helpers it started (a pool's workers, its fork
    /// server) must not outlive the test and take CPU from the next one.
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.group),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gilscope binary the tests run: the one cargo built, or `GILSCOPE_BIN` (e.g. the static
/// musl build, target/x86_64-unknown-linux-musl/release/gilscope).
pub fn gilscope_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("GILSCOPE_BIN") {
        Ok(bin) if !bin.is_empty() => {
            // A mistyped path must not quietly test nothing.
            assert!(
                Path::new(&bin).is_file(),
                "GILSCOPE_BIN={bin} is not a file"
            );
            bin
        }
        _ => env!("CARGO_BIN_EXE_gilscope").to_string(),
    })
}

/// Run gilscope with `args` and return its output.
pub fn gilscope(args: &[&str]) -> Output {
    Command::new(gilscope_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gilscope")
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run gilscope with `args`; its output if it succeeded, else a failure with its stderr.
pub fn gilscope_ok(args: &[&str]) -> Result<Output, libtest_mimic::Failed> {
    let out = gilscope(args);
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    Ok(out)
}

/// The first line `gilscope top --pid PID` writes into a pipe (the last second's figures),
/// within 10 s.
pub fn top_first_line(pid: i32) -> Result<String, String> {
    let mut child = Command::new(gilscope_bin())
        .args(["top", "--pid", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start gilscope top: {e}"))?;
    let line = first_line(&mut child, Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    line.ok_or_else(|| "no line from gilscope top in time".to_string())
}

/// The first line of `child`'s piped stdout, if it comes `within` the time (the child may
/// write nothing and keep running: the line is read on a thread of its own).
fn first_line(child: &mut Child, within: Duration) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).ok()
}

/// What gilscope may do, as deployments restrict it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// Root with every capability.
    Full,
    /// Root with CAP_SYS_PTRACE alone: a pod with `capabilities: add: [SYS_PTRACE]`. No
    /// real-time priority (CAP_SYS_NICE); perf task clocks still open at
    /// perf_event_paranoid 2 and below.
    SysPtraceOnly,
    /// Every capability, but perf_event_open refused by a seccomp filter, as container
    /// runtimes' default profiles refuse it.
    NoPerfEvents,
    /// Both: CAP_SYS_PTRACE alone under such a filter.
    SysPtraceOnlyNoPerfEvents,
}

impl Privileges {
    /// For test names.
    pub fn label(self) -> &'static str {
        match self {
            Privileges::Full => "with_every_privilege",
            Privileges::SysPtraceOnly => "with_sys_ptrace_alone",
            Privileges::NoPerfEvents => "without_perf_events",
            Privileges::SysPtraceOnlyNoPerfEvents => "with_sys_ptrace_alone_without_perf_events",
        }
    }

    /// The capabilities-only modes drop everything but CAP_SYS_PTRACE with setpriv.
    fn ptrace_only(self) -> bool {
        matches!(
            self,
            Privileges::SysPtraceOnly | Privileges::SysPtraceOnlyNoPerfEvents
        )
    }

    fn no_perf(self) -> bool {
        matches!(
            self,
            Privileges::NoPerfEvents | Privileges::SysPtraceOnlyNoPerfEvents
        )
    }

    /// A command that runs gilscope with these privileges.
    pub fn gilscope(self) -> Command {
        let mut command = if self.ptrace_only() {
            let mut c = Command::new("setpriv");
            c.args(["--inh-caps=-all", "--bounding-set=-all,+sys_ptrace", "--"])
                .arg(gilscope_bin());
            c
        } else {
            Command::new(gilscope_bin())
        };
        if self.no_perf() {
            // SAFETY: between fork and exec only prctl is called, which is async-signal-safe.
            unsafe {
                command.pre_exec(refuse_perf_event_open);
            }
        }
        command
    }
}

/// Install a seccomp filter on this (forked) process that makes perf_event_open fail with
/// EPERM, as Docker's default seccomp profile does for a container without CAP_PERFMON.
fn refuse_perf_event_open() -> std::io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const LOAD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        op(LOAD, 0, 0, 4), // seccomp_data.arch
        op(JUMP_IF_EQUAL, 1, 0, AUDIT_ARCH_X86_64),
        op(RETURN, 0, 0, SECCOMP_RET_ALLOW),
        op(LOAD, 0, 0, 0), // seccomp_data.nr
        op(JUMP_IF_EQUAL, 0, 1, libc::SYS_perf_event_open as u32),
        op(RETURN, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(RETURN, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid program that outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Record `pid` for `secs` seconds at default settings and parse the JSON report.
pub fn record_json(pid: i32, secs: f64) -> Result<serde_json::Value, String> {
    record_json_with(pid, secs, Privileges::Full)
}

/// [`record_json`] with gilscope's privileges restricted.
pub fn record_json_with(
    pid: i32,
    secs: f64,
    privileges: Privileges,
) -> Result<serde_json::Value, String> {
    record_json_ticks(pid, secs, privileges, None, &[])
}

/// [`record_json_with`], also writing every raw tick to `ticks` (`record --observations`):
/// the instants at which gilscope looked, to tell sampling error from classification error.
pub fn record_json_observed(
    pid: i32,
    secs: f64,
    privileges: Privileges,
    ticks: &Path,
) -> Result<serde_json::Value, String> {
    record_json_ticks(pid, secs, privileges, Some(ticks), &[])
}

/// [`record_json_observed`] with more options of `record` (`--native`).
pub fn record_json_observed_with(
    pid: i32,
    secs: f64,
    privileges: Privileges,
    ticks: &Path,
    options: &[&str],
) -> Result<serde_json::Value, String> {
    record_json_ticks(pid, secs, privileges, Some(ticks), options)
}

fn record_json_ticks(
    pid: i32,
    secs: f64,
    privileges: Privileges,
    ticks: Option<&Path>,
    options: &[&str],
) -> Result<serde_json::Value, String> {
    let mut command = privileges.gilscope();
    command.args([
        "record",
        "--pid",
        &pid.to_string(),
        "--duration",
        &secs.to_string(),
        "--format",
        "json",
    ]);
    if let Some(ticks) = ticks {
        command.arg("--observations").arg(ticks);
    }
    command.args(options);
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run gilscope: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "gilscope failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON: {e}"))
}

/// The report row of thread `tid`.
pub fn thread_row(report: &serde_json::Value, tid: i32) -> Option<&serde_json::Value> {
    report["threads"]
        .as_array()?
        .iter()
        .find(|t| t["native_id"].as_i64() == Some(tid as i64))
}

/// Each thread of a report as one line of its fractions, for failure messages.
pub fn thread_rows(report: &serde_json::Value) -> Vec<String> {
    report["threads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let mut row = format!(
                        "{} {}: hold {} wait {} running {} idle {}",
                        t["native_id"], t["name"], t["hold"], t["wait"], t["running"], t["idle"]
                    );
                    if !t["attached"].is_null() {
                        row.push_str(&format!(
                            " attached {} suspended {}",
                            t["attached"], t["suspended"]
                        ));
                    }
                    row
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn fraction(row: &serde_json::Value, state: &str) -> f64 {
    row[state].as_f64().unwrap_or(f64::NAN)
}

/// Attempts per trial when the hypervisor keeps stealing CPU time.
pub const ATTEMPTS: usize = 3;

/// How one measured attempt ended.
pub enum Attempt {
    Done(libtest_mimic::Completion),
    /// The answer was wrong; `steal` is the host steal the report measured in its window.
    Missed {
        message: String,
        steal: Option<f64>,
    },
    /// The measurement itself was invalid (the reference lost a probe hit): try again.
    Invalid {
        message: String,
    },
}

/// Run a test that samples a real process, measuring the host steal over the whole test
/// (for tests that read no report's own figure): its outcome as an `Attempt`.
pub fn steal_measured(test: impl FnOnce() -> Result<(), libtest_mimic::Failed>) -> Attempt {
    let before = gilscope::target::process::cpu_times();
    let result = test();
    let steal =
        gilscope::target::process::steal_share(before, gilscope::target::process::cpu_times());
    match result {
        Ok(()) => Attempt::Done(libtest_mimic::Completion::Completed),
        Err(failed) => Attempt::Missed {
            message: failed.message().unwrap_or("failed").to_string(),
            steal,
        },
    }
}

/// The host steal a report measured in its window.
pub fn report_steal(report: &serde_json::Value) -> Option<f64> {
    report["sampler"]["host_steal"].as_f64()
}

/// Run a measured trial. A window in which the hypervisor took more than gilscope's warning
/// threshold of CPU time is not a valid test: no tick happens while the sampler's CPU is
/// stolen (measured: 10% steal gave errors of 1.5 points, 22% of 4, 41% of 8), and the
/// workload's own timing changes (a waiter woken by a hand-off is not scheduled, so the GIL
/// sits free). A miss there is measured again, and skipped with the reason if the host keeps
/// stealing; a miss in an undisturbed window fails.
pub fn unless_host_steals(
    mut attempt: impl FnMut() -> Result<Attempt, libtest_mimic::Failed>,
) -> Result<libtest_mimic::Completion, libtest_mimic::Failed> {
    let mut last = None;
    let mut invalid = None;
    for _ in 0..ATTEMPTS {
        match attempt()? {
            Attempt::Done(completion) => return Ok(completion),
            Attempt::Invalid { message } => invalid = Some(message),
            Attempt::Missed { message, steal } => {
                let disturbed = steal.is_some_and(|s| s > gilscope::model::STEAL_WARNING);
                if !disturbed {
                    return Err(message.into());
                }
                last = Some((message, steal.unwrap_or(0.0)));
            }
        }
    }
    let Some((message, steal)) = last else {
        return Ok(libtest_mimic::Completion::ignored_with(format!(
            "no valid measurement in {ATTEMPTS} attempts; last: {}",
            invalid.unwrap_or_default()
        )));
    };
    Ok(libtest_mimic::Completion::ignored_with(format!(
        "the hypervisor took {:.0}% of CPU time in each of {ATTEMPTS} windows, too much for a \
         valid measurement; last: {}",
        100.0 * steal,
        message.lines().next().unwrap_or("")
    )))
}

/// Check a JSON document against a schema page's field table, in both directions: every
/// documented field is in the document with its documented type, and every field of the
/// document is documented.
pub fn matches_documented_schema(
    document: &serde_json::Value,
    page: &str,
) -> Result<(), libtest_mimic::Failed> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page))?;
    let documented = documented_fields(&doc);
    if documented.len() < 20 {
        return Err(format!("{page} documents too few fields: table format changed?").into());
    }
    let mut actual = Vec::new();
    collect_fields(document, "", &mut actual);
    for (path, kind) in &documented {
        let found: Vec<&(String, &str)> = actual.iter().filter(|(p, _)| p == path).collect();
        if found.is_empty()
            && !inside_empty_arrays(path, &actual)
            && !inside_null_object(path, &documented, &actual)
        {
            return Err(format!("documented field {path} is not in the document").into());
        }
        for (_, actual_kind) in found {
            if !kind.split(" or ").any(|k| k.trim() == *actual_kind) {
                return Err(format!("{path} is {actual_kind}, documented as {kind}").into());
            }
        }
    }
    for (path, _) in &actual {
        if !documented.iter().any(|(p, _)| p == path) {
            return Err(format!("field {path} is not documented in {page}").into());
        }
    }
    Ok(())
}

/// Is `path` inside an array that is present but empty in every instance (so no element
/// could show the field)? E.g. `threads[].top_running[].line` when no thread ran native code.
fn inside_empty_arrays(path: &str, actual: &[(String, &str)]) -> bool {
    let Some(at) = path.rfind("[]") else {
        return false;
    };
    let array = &path[..at];
    let element = &path[..at + 2];
    let has = |p: &str| actual.iter().any(|(a, _)| a == p);
    if has(element) {
        return false;
    }
    has(array) || inside_empty_arrays(array, actual)
}

/// Is `path` under an object that this document has as null, where the schema allows null?
/// E.g. `sample.top_blame.share` when nobody waited during the sample.
fn inside_null_object(
    path: &str,
    documented: &[(String, String)],
    actual: &[(String, &str)],
) -> bool {
    let parents = path.match_indices('.').map(|(at, _)| &path[..at]);
    parents.into_iter().any(|parent| {
        let null_here = actual.iter().any(|(p, k)| p == parent && *k == "null");
        let may_be_null = documented
            .iter()
            .any(|(p, kind)| p == parent && kind.split(" or ").any(|k| k.trim() == "null"));
        null_here && may_be_null
    })
}

/// Rows "| `path` | type | meaning |" of the field tables.
fn documented_fields(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let path = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((path.to_string(), cells.get(2)?.to_string()))
        })
        .collect()
}

/// (path, JSON type) of every leaf and object; array elements as `name[]`.
fn collect_fields(value: &serde_json::Value, path: &str, out: &mut Vec<(String, &'static str)>) {
    let kind = match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    if !path.is_empty() {
        out.push((path.to_string(), kind));
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                collect_fields(v, &sub, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_fields(item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// What a test function returns: nothing (it completed) or a completion of its own (ignored
/// with a reason).
pub trait Outcome {
    fn completion(self) -> libtest_mimic::Completion;
}

impl Outcome for () {
    fn completion(self) -> libtest_mimic::Completion {
        libtest_mimic::Completion::Completed
    }
}

impl Outcome for libtest_mimic::Completion {
    fn completion(self) -> libtest_mimic::Completion {
        self
    }
}

/// `test` on its turn of the default matrix (part `part` of `parts`, see [`matrix_in_turn`]):
/// for tests that read nothing a version's layout changes but need a few versions' processes
/// (how they are found, followed, deployed); the `rest` pass runs the other turns.
pub fn turn_trials<T: Outcome + 'static>(
    pythons: &Pythons,
    parts: usize,
    part: usize,
    name: &str,
    test: fn(&Python) -> Result<T, libtest_mimic::Failed>,
) -> Vec<libtest_mimic::Trial> {
    per_interpreter(&matrix_in_turn(pythons, parts, part), name, move |python| {
        let _exclusive = exclusive();
        test(python).map(Outcome::completion)
    })
}

/// `test` on each interpreter of this run's part of the [`matrix`] of `pythons`, holding the
/// machine-wide [`exclusive`] lock: [`Suite::every_version`] for binaries with a main of
/// their own.
pub fn matrix_trials<T: Outcome + 'static>(
    pythons: &Pythons,
    name: &str,
    test: fn(&Python) -> Result<T, libtest_mimic::Failed>,
) -> Vec<libtest_mimic::Trial> {
    per_interpreter(&matrix(pythons), name, move |python| {
        let _exclusive = exclusive();
        test(python).map(Outcome::completion)
    })
}

/// The harness every test binary of Python processes shares: trials run one at a time (they
/// share two cores and measure time), a test of every version is named `name::LABEL` per
/// interpreter (and ignored, with the reason, for one that is missing), and each holds the
/// machine-wide [`exclusive`] lock while it runs.
pub struct Suite {
    args: libtest_mimic::Arguments,
    pub pythons: Pythons,
    trials: Vec<libtest_mimic::Trial>,
}

impl Suite {
    /// A suite over `pythons`, from the command line's arguments.
    pub fn new(pythons: Pythons) -> Suite {
        let mut args = libtest_mimic::Arguments::from_args();
        args.test_threads = Some(1);
        Suite {
            args,
            pythons,
            trials: Vec::new(),
        }
    }

    /// `test` on every interpreter of this run's part of the [`matrix`].
    pub fn every_version<T: Outcome + 'static>(
        &mut self,
        name: &str,
        test: fn(&Python) -> Result<T, libtest_mimic::Failed>,
    ) {
        self.trials.extend(matrix_trials(&self.pythons, name, test));
    }

    /// `test` once, on the interpreter of [`cli_python`].
    pub fn once<T: Outcome + 'static>(
        &mut self,
        name: &str,
        test: fn(&Python) -> Result<T, libtest_mimic::Failed>,
    ) {
        self.trials
            .push(on_cli_python(&self.pythons, name, move |python| {
                test(python).map(Outcome::completion)
            }));
    }

    /// Trials made by hand (a measured retry, a setup of their own).
    pub fn add(&mut self, trials: impl IntoIterator<Item = libtest_mimic::Trial>) {
        self.trials.extend(trials);
    }

    pub fn run(self) -> ! {
        libtest_mimic::run(&self.args, self.trials).exit()
    }

    /// Run `trials` made by hand, one at a time, as [`Suite::run`] does.
    pub fn run_trials(trials: Vec<libtest_mimic::Trial>) -> ! {
        Suite::run_trials_then(trials, || ())
    }

    /// [`Suite::run_trials`], calling `after` once they are over (before the process exits:
    /// a scratch directory's cleanup).
    pub fn run_trials_then(trials: Vec<libtest_mimic::Trial>, after: impl FnOnce()) -> ! {
        let mut suite = Suite::new(Pythons {
            found: Vec::new(),
            missing: Vec::new(),
        });
        suite.add(trials);
        let conclusion = libtest_mimic::run(&suite.args, suite.trials);
        after();
        conclusion.exit()
    }
}
