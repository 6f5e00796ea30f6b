//! Runs the example program `examples/seed_usage.rs` (the seed document's usage example as
//! written) on every test filesystem. `cargo test` builds examples before running tests.

mod common;

use common::filesystems;
use std::path::PathBuf;
use std::process::Command;

fn example_binary() -> PathBuf {
    // target/<profile>/deps/seed_usage-<hash> -> target/<profile>/examples/seed_usage
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = profile_dir.join("examples").join("seed_usage");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/seed_usage.rs");
    let fresh = |b: &PathBuf| {
        let (Ok(bm), Ok(sm)) = (std::fs::metadata(b), std::fs::metadata(&src)) else { return false };
        bm.modified().unwrap() >= sm.modified().unwrap()
    };
    assert!(
        fresh(&bin),
        "{} is missing or older than its source: run the whole `cargo test -p s3dlio` (it builds the examples) \
         or `cargo build -p s3dlio --example seed_usage` first",
        bin.display()
    );
    bin
}

#[test]
fn seed_usage_example_runs_on_every_filesystem() {
    let bin = example_binary();
    for fs in filesystems("seed_usage") {
        let out = Command::new(&bin).arg(&fs.dir).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {}\n{stdout}\n{stderr}", fs.name(), out.status);
        assert!(stdout.contains(": ok ("), "{}: {stdout}", fs.name());
        if fs.direct_expected {
            assert!(stdout.contains("direct: true (3 of 3 operations direct)"), "{}: {stdout}", fs.name());
        } else {
            assert!(stdout.contains("direct: false (0 of 3"), "{}: {stdout}", fs.name());
            assert!(stdout.contains("fallback: 3 operation(s): filesystem does not support O_DIRECT"), "{stdout}");
            assert!(stderr.contains("direct I/O requested but not used"), "the fallback must be said: {stderr}");
        }
        // It cleaned up after itself.
        assert!(!fs.dir.join("seed-usage").exists());
    }
}
