//! knat's commands when the reader of stdout or stderr has gone away (`knat ... 2>&1 | head`,
//! a log collector restarted): they finish with their own exit code instead of panicking.

use std::io::pipe;
use std::process::{Command, Stdio};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

fn mixed_fixture() -> String {
    format!("{}/tests/fixtures/mixed.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// Runs knat with stderr (and, when `close_stdout`, stdout too) writing into a pipe whose
/// reading end is already closed; returns the exit code.
fn run_with_closed_pipes(args: &[&str], close_stdout: bool) -> Option<i32> {
    let (err_reader, err_writer) = pipe().expect("pipe");
    drop(err_reader);
    let mut cmd = Command::new(KNAT);
    cmd.args(args).stderr(err_writer);
    if close_stdout {
        let (out_reader, out_writer) = pipe().expect("pipe");
        drop(out_reader);
        cmd.stdout(out_writer);
    } else {
        cmd.stdout(Stdio::null());
    }
    cmd.status().expect("run knat").code()
}

#[test]
fn render_logging_into_a_closed_stderr_still_succeeds() {
    // mixed.yaml makes render log two skipped Services at info level: those writes fail.
    let fixture = mixed_fixture();
    let args = [
        "render",
        "--node-name",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16",
        fixture.as_str(),
    ];
    assert_eq!(run_with_closed_pipes(&args, false), Some(0));
}

#[test]
fn an_error_into_a_closed_stderr_keeps_its_exit_code() {
    let args = [
        "render",
        "--node-name",
        "node-1",
        "/nonexistent/knat-input.yaml",
    ];
    assert_eq!(run_with_closed_pipes(&args, true), Some(2));
}
