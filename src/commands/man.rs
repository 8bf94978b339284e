//! `gilscope man` and `gilscope completions`: the manual pages and shell completions, made
//! from the command line's own definition so that they cannot drift from it.

use std::io::Write;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::error::{Error, Result};

/// The manual pages, one per command as git has them: gilscope(1) lists the subcommands and
/// refers to gilscope-record(1) and the others.
pub fn run(args: ManArgs) -> Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    if let Some(dir) = args.out_dir {
        let error = |source| Error::Output {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(error)?;
        return clap_mangen::generate_to(command, &dir).map_err(error);
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
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&roff);
    let _ = stdout.flush();
    Ok(())
}

/// A shell's completion script.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}
