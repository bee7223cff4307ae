use super::*;

fn tool(mode: SandboxMode, network: bool) -> ToolSandbox {
    ToolSandbox::resolve(
        &SandboxConfig::default(),
        Some(mode),
        network,
        &LimitOverrides {
            processes: Some(8),
            ..LimitOverrides::default()
        },
        &[PathBuf::from("/opt/data")],
        &[
            "python3".to_owned(),
            "/opt/tools/wc.py".to_owned(),
            "-v".to_owned(),
        ],
    )
}

fn host(helper: Option<&str>, achieved: Achieved) -> SandboxHost {
    SandboxHost {
        helper: helper.map(PathBuf::from),
        user: Some((65534, 65534)),
        read_only: vec![PathBuf::from("/usr")],
        achieved,
    }
}

fn everything() -> Achieved {
    Achieved {
        limits: true,
        network_namespace: true,
        landlock_abi: 7,
        landlock_full: true,
        landlock_any: true,
        landlock_error: String::new(),
    }
}

#[test]
fn a_tool_reads_its_program_scripts_and_own_paths() {
    let auto = tool(SandboxMode::Auto, false);
    assert_eq!(
        auto.read_paths,
        [
            PathBuf::from("/opt/data"),
            PathBuf::from("/opt/tools/wc.py")
        ]
    );
    assert_eq!(auto.limits.processes, 8);
    let spec = host(Some("/helper"), everything()).spec(&auto, Path::new("/ws/t/r"), Some(10));
    assert!(spec.isolate_network);
    assert!(!spec.strict);
    assert_eq!(spec.limits.file_size_bytes, 10);
    assert_eq!(
        spec.read_write,
        [PathBuf::from("/ws/t/r"), PathBuf::from("/dev/null")]
    );
    assert_eq!(spec.read_only.first(), Some(&PathBuf::from("/usr")));
    assert_eq!(spec.user, Some((65534, 65534)));
    // A network tool keeps it; a required one is strict; a cap never
    // raises the limit and never reaches 0.
    let spec = host(Some("/helper"), everything()).spec(
        &tool(SandboxMode::Required, true),
        Path::new("/ws"),
        Some(0),
    );
    assert!(!spec.isolate_network && spec.strict);
    assert_eq!(spec.limits.file_size_bytes, 1);
}

#[test]
fn programs_start_through_the_helper_unless_off_or_missing() {
    let argv = ["sh".to_owned(), "-c".to_owned(), "true".to_owned()];
    let workspace = Path::new("/ws");
    let with_helper = host(Some("/helper"), everything());
    let (program, args) = with_helper
        .command_line(&tool(SandboxMode::Auto, false), &argv, workspace, None)
        .unwrap();
    assert_eq!(program, "/helper");
    assert_eq!(args.first().unwrap(), EXEC_FLAG);
    assert_eq!(&args[2..], ["--", "sh", "-c", "true"]);
    let spec: Spec = serde_json::from_str(args[1].to_str().unwrap()).unwrap();
    assert!(spec.isolate_network);
    let (program, args) = with_helper
        .command_line(&tool(SandboxMode::Off, false), &argv, workspace, None)
        .unwrap();
    assert_eq!((program.to_str().unwrap(), args.len()), ("sh", 2));
    let without = host(None, Achieved::default());
    let (program, _) = without
        .command_line(&tool(SandboxMode::Auto, false), &argv, workspace, None)
        .unwrap();
    assert_eq!(program, "sh");
    assert_eq!(without.user(), None);
    assert!(
        with_helper
            .command_line(&tool(SandboxMode::Auto, false), &[], workspace, None)
            .is_none()
    );
}

#[test]
fn shortfalls_and_summary_say_what_is_missing() {
    let full = host(Some("/helper"), everything());
    assert!(
        full.shortfall(&tool(SandboxMode::Required, false))
            .is_empty()
    );
    assert_eq!(
        full.summary(),
        Summary {
            filesystem: "landlock",
            network: "namespace",
            user: "unprivileged",
            limits: true,
            landlock_abi: 7,
        }
    );
    let no_namespace = host(
        Some("/helper"),
        Achieved {
            network_namespace: false,
            ..everything()
        },
    );
    let missing = no_namespace.shortfall(&tool(SandboxMode::Required, false));
    assert!(missing.join(" ").contains("UDP"), "{missing:?}");
    // A tool with network needs no namespace.
    assert!(
        no_namespace
            .shortfall(&tool(SandboxMode::Required, true))
            .is_empty()
    );
    assert_eq!(no_namespace.summary().network, "landlock_tcp");
    let none = host(None, Achieved::default());
    assert!(none.shortfall(&tool(SandboxMode::Auto, true))[0].contains("helper"));
    assert_eq!(none.summary().filesystem, "none");
    assert_eq!(none.summary().user, "service");
    let old_kernel = host(
        Some("/helper"),
        Achieved {
            landlock_full: false,
            landlock_abi: 3,
            ..everything()
        },
    );
    assert!(old_kernel.shortfall(&tool(SandboxMode::Auto, true))[0].contains("ABI 3"));
    assert_eq!(old_kernel.summary().filesystem, "landlock_partial");
}
