//! `gilscope man` and `gilscope completions`: the manual pages and shell completions, made
//! from the command line's own definition so that they cannot drift from it.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::{Error, Result};
use crate::output;

/// The manual pages, one per command as git has them: gilscope(1) lists the subcommands and
/// refers to gilscope-record(1) and the others.
pub fn run(args: ManArgs) -> Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    if let Some(dir) = args.out_dir {
        output::create_dirs(&dir)?;
        let mut command = command.disable_help_subcommand(true);
        command.build();
        return write_pages(command, &dir);
    }
    let page = match args.subcommand {
        None => command,
        Some(name) => {
            let Some(sub) = command.find_subcommand(&name) else {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .map(|s| s.get_name())
                    .filter(|&n| n != "help")
                    .collect();
                return Err(Error::Usage(format!(
                    "no subcommand '{name}': the pages are for {}",
                    names.join(", ")
                )));
            };
            let title = format!("{}-{}", command.get_name(), sub.get_name());
            sub.clone()
                .name(title)
                .bin_name(format!("{} {}", command.get_name(), sub.get_name()))
                .version(command.get_version().unwrap_or_default().to_string())
                .disable_version_flag(true)
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .map_err(|e| Error::Internal(format!("cannot render the manual page: {e}")))?;
    output::write_stdout(&roff)
}

/// A command's page and each of its subcommands' into `dir`, vetted and written whole as
/// every output file is (a link or file planted there by another user is not written).
fn write_pages(command: clap::Command, dir: &std::path::Path) -> Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir)?;
    }
    let page = clap_mangen::Man::new(command);
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)
        .map_err(|e| Error::Internal(format!("cannot render the manual page: {e}")))?;
    let prepared = output::prepare(&path)?;
    output::write_prepared(prepared, &path, &roff)
}

/// A shell's completion script.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let name = command.get_name().to_string();
    // Into memory first: clap_complete panics on a write error (a full disk).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    output::write_stdout(&script)
}
