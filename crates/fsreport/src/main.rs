//! `chatmail-fsreport [INI] [--days N] [--min-login-age DAYS] [--mdir X] [--maxnum N]
//! [--textfile PATH] [--legacy-metrics [FILE]] [--stat-sizes]`: upstream's command line,
//! plus `--stat-sizes`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chatmail_expire::clock;
use chatmail_fsreport::{DEFAULT_LEGACY_METRICS, Options, collect, textfile_target, write_atomic};
use clap::Parser;

/// Report about filesystem storage usage of all mailboxes and messages
#[derive(Parser)]
#[command(version)]
struct Args {
    /// path pointing to chatmail.ini file
    #[arg(default_value = chatmail_config::DEFAULT_CONFIG_PATH)]
    chatmail_ini: PathBuf,
    /// assume date to be DAYS older than now
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    days: i64,
    /// only sum up message size if last login is at least DAYS days old
    #[arg(
        long,
        value_name = "DAYS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    min_login_age: i64,
    /// only consider messages in specified Maildir subdirectory for summary
    #[arg(long, value_name = "{cur,new,tmp}")]
    mdir: Option<String>,
    /// maximum number of mailboxes to iterate on
    #[arg(long, allow_negative_numbers = true)]
    maxnum: Option<i64>,
    /// write Prometheus textfile to PATH (directory or file); if PATH is a directory,
    /// writes 'fsreport.prom' inside it
    #[arg(long, value_name = "PATH")]
    textfile: Option<PathBuf>,
    /// write legacy metrics.py textfile (default: /var/www/html/metrics)
    #[arg(long, value_name = "FILENAME", num_args = 0..=1, default_missing_value = DEFAULT_LEGACY_METRICS)]
    legacy_metrics: Option<PathBuf>,
    /// stat every message for its size as upstream does, instead of taking Dovecot's
    /// ,S= size from the file name
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
    let options = Options {
        now_micros: clock::now_micros().saturating_sub(args.days.saturating_mul(86_400_000_000)),
        min_login_age: args.min_login_age,
        mdir: args.mdir.clone(),
        stat_sizes: args.stat_sizes,
    };
    let index_root = config.tmpfs_index.then(|| Path::new("/dev/shm").to_owned());
    let report = match collect(
        &config.mailboxes_dir,
        args.maxnum,
        index_root,
        &options,
        &mut std::io::stderr().lock(),
    ) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    if args.textfile.is_none() && args.legacy_metrics.is_none() {
        print!("{}", report.summary(&options));
        return ExitCode::SUCCESS;
    }
    let mut outputs = Vec::new();
    if let Some(path) = &args.textfile {
        outputs.push((textfile_target(path), report.textfile()));
    }
    if let Some(path) = &args.legacy_metrics {
        outputs.push((path.clone(), report.legacy_metrics()));
    }
    for (path, content) in outputs {
        if let Err(err) = write_atomic(&path, &content) {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
