//! The HTML report in a real browser: headless Chromium loads the page (its `#selftest`
//! hook switches every flamegraph view and writes what it found into the DOM, which
//! `--dump-dom` prints) and takes a screenshot kept in target/tmp/html/ as an artefact.
//! Skipped, with the reason, where Chromium is not installed (Debian's `chromium`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use gilscope::formats::{Format, RenderOptions};

/// The page's budget for a 60 s recording of 100 threads (issue 24).
const MAX_BYTES: usize = 5 << 20;

fn main() {
    let args = Arguments::from_args();
    let pythons = common::pythons();
    let trials = vec![
        common::on_cli_python(
            &pythons,
            "the_demo_report_shows_every_thread_and_each_state_switches_the_flamegraph",
            demo,
        ),
        Trial::ignorable_test(
            "a_minute_of_a_hundred_threads_stays_under_five_megabytes_and_loads",
            large,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("html");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .map(|name| {
            Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
        })
        .filter_map(Result::ok)
        .find(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Run headless Chromium on `page` with `extra` arguments; its stdout.
fn run_chromium(browser: &Path, page: &Path, extra: &[&str], hash: &str) -> Result<String, Failed> {
    let profile = tempfile::tempdir()?;
    let url = format!("file://{}{hash}", page.display());
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the page's self-test found, from the DOM Chromium dumped.
fn selftest(browser: &Path, page: &Path) -> Result<serde_json::Value, Failed> {
    let dom = run_chromium(browser, page, &["--dump-dom"], "#selftest")?;
    let start = dom
        .find("<pre id=\"selftest\">")
        .ok_or("the page has no self-test output: did its script run?")?;
    let text = &dom[start + "<pre id=\"selftest\">".len()..];
    let text = &text[..text.find("</pre>").ok_or("unterminated self-test output")?];
    let text = text
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    Ok(serde_json::from_str(&text)?)
}

fn screenshot(browser: &Path, page: &Path, name: &str, height: u32) -> Result<PathBuf, Failed> {
    let png = artefacts().join(name);
    run_chromium(
        browser,
        page,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size=1400,{height}"),
        ],
        "",
    )?;
    if !png.exists() {
        return Err(format!("no screenshot at {}", png.display()).into());
    }
    Ok(png)
}

/// The checks every page must pass: no script error, a row per thread, and each flamegraph
/// view its own.
fn check_page(result: &serde_json::Value, threads: usize) -> Result<(), Failed> {
    let errors = result["errors"].as_array().ok_or("no error list")?;
    if !errors.is_empty() {
        return Err(format!("the page logged errors: {errors:?}").into());
    }
    if result["rows"].as_u64() != Some(threads as u64)
        || result["threads"].as_u64() != Some(threads as u64)
    {
        return Err(format!("{threads} threads, but the page shows {result}").into());
    }
    let views = result["views"].as_object().ok_or("no flamegraph views")?;
    for (name, view) in views {
        if view["active"].as_str() != Some(name.as_str()) {
            return Err(format!("switching to {name} left {} shown", view["active"]).into());
        }
    }
    let hold = &views.get("h").ok_or("no hold view")?;
    let wait = &views.get("w").ok_or("no wait view")?;
    if hold["total"].as_u64().unwrap_or(0) == 0 || wait["total"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("hold and wait both hold samples here: {result}").into());
    }
    if hold["total"] == wait["total"] && hold["keys"] == wait["keys"] {
        return Err(format!("switching from hold to wait changed nothing: {result}").into());
    }
    Ok(())
}

fn demo(python: &common::Python) -> Result<Completion, Failed> {
    let Some(browser) = chromium() else {
        return Ok(Completion::ignored_with(
            "Chromium is not installed (apt-get install chromium)",
        ));
    };
    let fx = common::Fixture::start(&python.path, "demo", &["--duration", "60", "--announce"])?;
    let dir = tempfile::tempdir()?;
    let page = dir.path().join("report.html");
    let pid = fx.pid.to_string();
    let page_arg = page.display().to_string();
    common::gilscope_ok(&["record", "--pid", &pid, "--duration", "3", "-o", &page_arg])?;
    let html = std::fs::read_to_string(&page)?;
    // Self-contained: nothing refers to another resource.
    for remote in ["src=\"http", "href=\"http", "@import", "url(http"] {
        if html.contains(remote) {
            return Err(format!("the page loads something from elsewhere: {remote}").into());
        }
    }
    let result = selftest(&browser, &page)?;
    let threads = html.matches("\"tid\":").count();
    check_page(&result, threads)?;
    // Every thread of the fixture has its row, by tid.
    let dom = run_chromium(&browser, &page, &["--dump-dom"], "")?;
    for (role, tid) in &fx.threads {
        if !dom.contains(&format!("id=\"thread-{tid}\"")) {
            return Err(format!("no row for {role} ({tid})").into());
        }
    }
    let png = screenshot(&browser, &page, "demo.png", 2600)?;
    std::fs::copy(&page, artefacts().join("demo.html"))?;
    eprintln!(
        "demo report: {} bytes, drawn in {} ms; screenshot {}",
        html.len(),
        result["renderMs"],
        png.display()
    );
    Ok(Completion::Completed)
}

fn large() -> Result<Completion, Failed> {
    let recording = gilscope::dev::synthetic::recording(100, 60.0, 1000.0);
    let html = Format::Html
        .report()
        .one(&recording, &RenderOptions::default());
    let size = html.len();
    let page = artefacts().join("hundred-threads-a-minute.html");
    std::fs::write(&page, &html)?;
    if size > MAX_BYTES {
        return Err(format!("{size} bytes, over the {MAX_BYTES} budget").into());
    }
    let Some(browser) = chromium() else {
        return Ok(Completion::ignored_with(format!(
            "{size} bytes (within budget); Chromium is not installed to load it \
             (apt-get install chromium)"
        )));
    };
    let result = selftest(&browser, &page)?;
    check_page(&result, 100)?;
    if result["timelineRows"].as_u64() != Some(100) {
        return Err(format!("the timeline should have 100 rows: {result}").into());
    }
    let png = screenshot(&browser, &page, "hundred-threads-a-minute.png", 4200)?;
    eprintln!(
        "100 threads, 60 s: {size} bytes, drawn in {} ms; screenshot {}",
        result["renderMs"],
        png.display()
    );
    Ok(Completion::Completed)
}
