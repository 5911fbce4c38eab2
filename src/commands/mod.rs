//! The subcommands of the `outpost` binary, one file each: what a command line asks for,
//! turned into calls of the library. Parsing and dispatch are `main.rs`'s.

pub mod check;
pub mod listeners;
pub mod load;
pub mod replay;
pub mod serve;
pub mod warm;

/// A progress bar on stderr drawn with `template` (`total` steps, when known), or a hidden
/// one for `--quiet`.
pub fn progress_bar(quiet: bool, total: Option<u64>, template: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
