//! The `glassgrad` command line. With no command it runs the guided tour.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// A closed stdout (`glassgrad generate … | head -1`) ends the process quietly, as Unix tools do:
/// Rust ignores SIGPIPE, so every later print would panic on EPIPE; restore the default action.
#[cfg(unix)]
fn quiet_on_closed_stdout() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13; // the same on Linux, macOS and the BSDs
    const SIG_DFL: usize = 0;
    // SAFETY: setting a signal's disposition to the default at start-up, before any thread.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    quiet_on_closed_stdout();
    // Bad arguments are one line on stderr (clap's own message would add usage and tips).
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version: print them, exit 0
        Err(e) => {
            let text = e.render().to_string();
            let line =
                text.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: bad arguments");
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // One line: a multi-line message (wgpu's validation reports) is joined with " | ". The
        // no-adapter help keeps its lines: they are commands to copy.
        Err(e @ glassgrad::Error::NoAdapter(_)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            let text = e.to_string();
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            eprintln!("error: {}", lines.join(" | "));
            ExitCode::FAILURE
        }
    }
}
