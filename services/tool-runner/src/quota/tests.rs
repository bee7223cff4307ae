use std::time::{Duration, SystemTime};

use super::*;

fn quotas(dir: &Path) -> Arc<Quotas> {
    Quotas::new(
        QuotaConfig {
            run_bytes: 1000,
            run_files: 10,
            tenant_bytes: 2500,
            tenant_files: 100,
            ..QuotaConfig::default()
        },
        dir.to_path_buf(),
    )
}

/// Writes `bytes` into a new file of the run, the way the file tool does:
/// reserve, write, settle.
fn write(
    quotas: &Arc<Quotas>,
    tenant: &str,
    run: &str,
    name: &str,
    bytes: usize,
) -> Result<(), QuotaHit> {
    let ticket = quotas.reserve(
        tenant,
        run,
        Some(Usage {
            bytes: bytes as u64,
            files: 1,
        }),
    )?;
    let dir = quotas.root.join(tenant).join(run);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), vec![b'x'; bytes]).unwrap();
    ticket.settle();
    Ok(())
}

#[test]
fn a_run_is_refused_at_its_byte_quota() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = quotas(dir.path());
    for index in 0..9 {
        write(&quotas, "acme", "r1", &format!("f{index}"), 100).unwrap();
    }
    assert_eq!(
        quotas.usage("acme", "r1").0,
        Usage {
            bytes: 900,
            files: 9
        }
    );
    let hit = write(&quotas, "acme", "r1", "big", 101).unwrap_err();
    assert_eq!((hit.quota, hit.used, hit.need), ("run_bytes", 900, 101));
    assert!(
        hit.message().contains("tool_runner.quota.run_bytes"),
        "{}",
        hit.message()
    );
    write(&quotas, "acme", "r1", "last", 100).unwrap();
    // Full: even one more entry is refused.
    let hit = write(&quotas, "acme", "r1", "one", 0).unwrap_err();
    assert_eq!(hit.quota, "run_files");
}

#[test]
fn new_runs_do_not_escape_the_tenant_quota() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = quotas(dir.path());
    let mut refused = None;
    for run in 0..10 {
        if let Err(hit) = write(&quotas, "acme", &format!("run-{run}"), "f", 900) {
            refused = Some((run, hit));
            break;
        }
    }
    let (run, hit) = refused.expect("the tenant quota holds");
    assert_eq!(run, 2);
    assert_eq!((hit.quota, hit.scope), ("tenant_bytes", "tenant"));
    // Another tenant is not affected.
    write(&quotas, "other", "run-0", "f", 900).unwrap();
}

#[test]
fn usage_survives_a_restart_and_sees_what_others_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("acme/r1/sub");
    fs::create_dir_all(&run).unwrap();
    fs::write(run.join("a"), vec![0_u8; 950]).unwrap();
    let quotas = quotas(dir.path());
    let hit = quotas
        .reserve(
            "acme",
            "r1",
            Some(Usage {
                bytes: 100,
                files: 1,
            }),
        )
        .unwrap_err();
    assert_eq!(hit.used, 950);
    // A command-like call (no size known) may still start, with 50 bytes left.
    let ticket = quotas
        .reserve("acme", "r1", Some(Usage { bytes: 1, files: 1 }))
        .unwrap();
    assert_eq!(ticket.bytes_left, 50);
    // A cancelled call leaves the run to be rescanned.
    fs::write(run.join("b"), vec![0_u8; 60]).unwrap();
    drop(ticket);
    let hit = quotas
        .reserve("acme", "r1", Some(Usage { bytes: 1, files: 1 }))
        .unwrap_err();
    assert_eq!((hit.quota, hit.used), ("run_bytes", 1010));
    // Reading is never refused.
    quotas.reserve("acme", "r1", None).unwrap().settle();
}

#[test]
fn reservations_of_concurrent_writes_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = quotas(dir.path());
    let first = quotas
        .reserve(
            "acme",
            "r1",
            Some(Usage {
                bytes: 600,
                files: 1,
            }),
        )
        .unwrap();
    let hit = quotas
        .reserve(
            "acme",
            "r1",
            Some(Usage {
                bytes: 600,
                files: 1,
            }),
        )
        .unwrap_err();
    assert_eq!((hit.quota, hit.used), ("run_bytes", 600));
    drop(first);
    quotas
        .reserve(
            "acme",
            "r1",
            Some(Usage {
                bytes: 600,
                files: 1,
            }),
        )
        .unwrap();
}

#[test]
fn the_sweeper_removes_expired_idle_workspaces_only() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = quotas(dir.path());
    write(&quotas, "acme", "old", "f", 500).unwrap();
    write(&quotas, "acme", "busy", "f", 10).unwrap();
    write(&quotas, "acme", "fresh", "f", 10).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
    for run in ["old", "busy"] {
        fs::File::open(dir.path().join("acme").join(run))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    // A dangling trash directory of an interrupted sweep goes too.
    fs::create_dir_all(dir.path().join(".trash-1/x")).unwrap();
    let busy = quotas.reserve("acme", "busy", None).unwrap();
    assert_eq!(quotas.sweep(SystemTime::now()), 1);
    assert!(!dir.path().join("acme/old").exists());
    assert!(!dir.path().join(".trash-1").exists());
    assert!(dir.path().join("acme/busy/f").exists());
    assert!(dir.path().join("acme/fresh/f").exists());
    // Its bytes no longer count against the tenant.
    assert_eq!(quotas.usage("acme", "old").1.bytes, 20);
    drop(busy);
    // The busy one was touched by nothing since: it goes once idle.
    assert_eq!(quotas.sweep(SystemTime::now()), 1);
}

#[test]
fn scans_are_bounded_and_do_not_follow_links() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("big"), vec![0_u8; 5000]).unwrap();
    let run = dir.path().join("run");
    fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::symlink(&outside, run.join("link")).unwrap();
    assert_eq!(scan(&run, 100), Usage { bytes: 0, files: 1 });
    for index in 0..20 {
        fs::write(run.join(format!("f{index}")), "x").unwrap();
    }
    assert_eq!(scan(&run, 5).files, 5);
}

#[test]
fn bad_settings_name_the_setting() {
    QuotaConfig::default().validate().unwrap();
    let config = QuotaConfig {
        run_files: 0,
        ..QuotaConfig::default()
    };
    assert_eq!(config.validate().unwrap_err().setting, "quota.run_files");
    let config = QuotaConfig {
        retention: Duration::ZERO,
        ..QuotaConfig::default()
    };
    assert_eq!(config.validate().unwrap_err().setting, "quota.retention");
}
