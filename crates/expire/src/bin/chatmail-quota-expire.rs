//! `chatmail-quota-expire TARGET_MB MAILBOX_PATH`: run by Dovecot's quota-warning service
//! when a mailbox passes 75 % of its quota.

use std::path::PathBuf;
use std::process::ExitCode;

use chatmail_expire::{clock, quota};
use clap::Parser;

/// Remove mailbox messages to stay within a megabyte target.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// target mailbox size in megabytes
    #[arg(allow_negative_numbers = true)]
    target_mb: i64,
    /// path to a user mailbox
    mailbox_path: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let now = clock::micros_to_secs(clock::now_micros());
    match quota::quota_expire(args.target_mb, &args.mailbox_path, now) {
        Ok(Some(line)) => {
            eprintln!("{line}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quota-expire: {}: {err}", args.mailbox_path.display());
            ExitCode::FAILURE
        }
    }
}
