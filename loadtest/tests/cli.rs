//! The `traceo-loadgen` command line, run as a process: mistakes are refused together, each
//! named, before anything is sent. (Being an integration test of this package also makes
//! `cargo test --workspace` build the binary, which the gateway's end-to-end tests drive.)

use std::process::Command;

const LOADGEN: &str = env!("CARGO_BIN_EXE_traceo-loadgen");

#[test]
fn every_bad_argument_is_named_at_once_and_nothing_is_sent() {
    let out = Command::new(LOADGEN)
        .args(["--url", "http://127.0.0.1:9/api/v1/write"])
        .args(["--record-acks", "/nonexistent/acks.txt", "--requests", "0"])
        .args([
            "--duration=-1",
            "--series",
            "10",
            "--series-per-request",
            "20",
        ])
        .output()
        .expect("run traceo-loadgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for named in [
        "--duration -1 must be positive",
        "--requests must be at least 1",
        "fewer than --series-per-request 20",
    ] {
        assert!(err.contains(named), "{named:?} not in:\n{err}");
    }
    assert!(
        !std::path::Path::new("/nonexistent/acks.txt").exists(),
        "nothing was recorded"
    );
}

#[test]
fn recording_acks_needs_a_bounded_run() {
    let out = Command::new(LOADGEN)
        .args(["--record-acks", "acks.txt"])
        .output()
        .expect("run traceo-loadgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--record-acks needs --requests or --rate"),
        "{err}"
    );
}

#[test]
fn tenant_rate_refuses_the_flags_it_replaces_and_bad_entries_together() {
    let out = Command::new(LOADGEN)
        .args(["--url", "http://127.0.0.1:9/api/v1/write"])
        .args(["--tenant-rate", "team-a=20000", "--tenant-rate", "team-a=5"])
        .args([
            "--tenant-rate",
            "team-b=0",
            "--rate",
            "100",
            "--tenants",
            "2",
        ])
        .output()
        .expect("run traceo-loadgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for named in [
        "tenant \"team-a\" is named more than once",
        "--tenant-rate \"team-b=0\": rate \"0\" must be a positive number",
        "--tenant-rate cannot be combined with --rate, --tenants",
    ] {
        assert!(err.contains(named), "{named:?} not in:\n{err}");
    }
}
