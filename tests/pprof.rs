//! pprof profiles as `go tool pprof` reads them: a real recording of fixtures/demo.py written
//! with `-o profile.pb.gz`, listed with `go tool pprof -top` for a sample type per state.
//! Skipped, with the reason, where Go is not installed (Debian's `golang-go`).

mod common;

use std::process::{Command, Stdio};

use libtest_mimic::{Completion, Failed};

fn main() {
    let pythons = common::pythons();
    let trials = vec![common::on_cli_python(
        &pythons,
        "go_tool_pprof_reads_a_sample_type_per_state_with_the_demos_functions",
        go_pprof,
    )];
    common::Suite::run_trials(trials);
}

fn go_pprof(python: &common::Python) -> Result<Completion, Failed> {
    let go = Command::new("go")
        .arg("version")
        .stdin(Stdio::null())
        .output();
    if !go.is_ok_and(|out| out.status.success()) {
        return Ok(Completion::ignored_with(
            "Go is not installed (apt-get install golang-go)",
        ));
    }
    let fx = common::Fixture::start(&python.path, "demo", &["--duration", "60", "--announce"])?;
    let dir = tempfile::tempdir()?;
    let profile = dir.path().join("profile.pb.gz");
    let pid = fx.pid.to_string();
    let path = profile.display().to_string();
    common::gilscope_ok(&["record", "--pid", &pid, "--duration", "2", "-o", &path])?;
    // gzip magic: the file is what pprof readers expect on disk.
    let bytes = std::fs::read(&profile)?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err("the profile is not gzip-compressed".into());
    }
    let top = |index: &str| -> Result<String, Failed> {
        let out = Command::new("go")
            .args([
                "tool",
                "pprof",
                "-top",
                &format!("-sample_index={index}"),
                &path,
            ])
            .env("HOME", dir.path())
            .env("PPROF_TMPDIR", dir.path())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "go tool pprof -sample_index={index}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The handlers hold the GIL in handle_requests; the client and server wait in theirs.
    let hold = top("hold")?;
    if !hold.contains("handle_requests") || !hold.contains("Type: hold") {
        return Err(format!("the hold profile misses handle_requests:\n{hold}").into());
    }
    let wait = top("wait_samples")?;
    if !wait.contains("Type: wait_samples") || !(wait.contains("server") || wait.contains("client"))
    {
        return Err(format!("the wait profile misses the I/O threads:\n{wait}").into());
    }
    let running = top("running")?;
    if !running.contains("compress") {
        return Err(format!("the running profile misses compress:\n{running}").into());
    }
    // Labels: each thread's samples are tagged with its name and tid.
    let out = Command::new("go")
        .args(["tool", "pprof", "-tags", "-sample_index=hold", &path])
        .env("HOME", dir.path())
        .env("PPROF_TMPDIR", dir.path())
        .stdin(Stdio::null())
        .output()?;
    let tags = String::from_utf8_lossy(&out.stdout);
    let handler = fx.tid("handler-1").to_string();
    if !tags.contains("thread_name") || !tags.contains("handler-1") || !tags.contains(&handler) {
        return Err(format!("no thread labels in:\n{tags}").into());
    }
    Ok(Completion::Completed)
}
