//! The gilscope command: parse the command line, hand it to its command, print errors as one
//! line with a hint, and map them to documented exit codes. Nothing else lives here.

use clap::Parser;

use gilscope::cli::Cli;
use gilscope::error::ExitCode;
use gilscope::formats::printable;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            let (message, usage) = usage_error(&e.to_string());
            eprintln!("gilscope: {}", printable(&message));
            eprintln!("hint: {}", printable(&usage));
            std::process::exit(ExitCode::Usage as i32);
        }
    };
    // Each thread of a target keeps two files open while it is sampled.
    gilscope::target::process::raise_open_file_limit();
    if let Err(error) = gilscope::commands::run(cli.command) {
        // Errors name what the target's user chose (its program's path, what its files
        // hold): escaped, so that a name cannot send a root terminal escape sequences.
        eprintln!("gilscope: {}", printable(&error.to_string()));
        if let Some(hint) = error.hint() {
            eprintln!("hint: {}", printable(&hint));
        }
        std::process::exit(error.exit_code() as i32);
    }
}

/// clap's several-line usage error as gilscope's one line and a hint: the message with what
/// clap puts on the lines below it ("possible values", the missing arguments), and the usage.
fn usage_error(rendered: &str) -> (String, String) {
    let mut message = String::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
        } else if line.is_empty() || line.starts_with("For more information") {
            continue;
        } else if usage.is_none() {
            let line = line.strip_prefix("error: ").unwrap_or(line);
            let line = line
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .unwrap_or(line);
            if !message.is_empty() && !message.ends_with(':') {
                message.push(';');
            }
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(line);
        }
    }
    let hint = match usage {
        Some(usage) => format!("usage: {usage} (see --help)"),
        None => "see gilscope --help".to_string(),
    };
    (message, hint)
}
