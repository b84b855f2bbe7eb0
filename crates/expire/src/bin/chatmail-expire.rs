//! `chatmail-expire [INI] [--days N] [--maxnum N] [-v] [--remove] [--stat-sizes]`:
//! upstream's command line, plus `--stat-sizes`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chatmail_expire::clock;
use chatmail_expire::expire::{Policy, Run, run_and_summarize};
use clap::Parser;

/// Expire mailboxes and messages according to chatmail config
#[derive(Parser)]
#[command(version)]
struct Args {
    /// path pointing to chatmail.ini file
    #[arg(default_value = chatmail_config::DEFAULT_CONFIG_PATH)]
    chatmail_ini: PathBuf,
    /// assume date to be days older than now
    #[arg(long, allow_negative_numbers = true)]
    days: Option<i64>,
    /// maximum number of mailboxes to iterate on
    #[arg(long, allow_negative_numbers = true)]
    maxnum: Option<i64>,
    /// print out removed files and mailboxes
    #[arg(short = 'v')]
    verbose: bool,
    /// actually remove all expired files and dirs
    #[arg(long)]
    remove: bool,
    /// stat every message for its size and mtime as upstream does, instead of taking
    /// them from Dovecot's file names (,S= size, delivery time)
    #[arg(long)]
    stat_sizes: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match chatmail_config::Config::load(&args.chatmail_ini) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let policy = match Policy::new(
        &config,
        clock::micros_to_secs(clock::now_micros()),
        args.days.unwrap_or(0),
        !args.remove,
    ) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let mut run = Run::new(&config, policy, args.verbose, Path::new("/dev/shm"));
    run.maxnum = args.maxnum;
    run.stat_sizes = args.stat_sizes;
    match run_and_summarize(&run, &mut std::io::stderr().lock()) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
