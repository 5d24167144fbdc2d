use super::*;

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

#[test]
fn device_rules_are_left_out() {
    // containerd's default spec: deny every device, and nothing else.
    let r = resources(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#);
    let out = applicable(&r, "").unwrap();
    assert_eq!(out.devices(), &None);
    assert_eq!(out, LinuxResources::default());
}

#[test]
fn empty_groups_need_no_controller() {
    let r = resources(r#"{"memory":{},"cpu":{"shares":0},"blockIO":{},"hugepageLimits":[]}"#);
    assert_eq!(applicable(&r, "").unwrap(), LinuxResources::default());
}

#[test]
fn limits_pass_through_when_their_controller_is_there() {
    let json = r#"{"memory":{"limit":67108864},"cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0"},"pids":{"limit":10}}"#;
    let r = resources(json);
    assert_eq!(applicable(&r, ALL).unwrap(), r);
}

#[test]
fn a_missing_controller_is_named() {
    let cases = [
        (
            r#"{"memory":{"limit":1048576}}"#,
            "cpu pids",
            "linux.resources.memory needs the cgroup v2 memory controller",
        ),
        (
            r#"{"cpu":{"quota":1000}}"#,
            "memory",
            "cgroup v2 cpu controller",
        ),
        (
            r#"{"cpu":{"cpus":"0-1"}}"#,
            "cpu",
            "cgroup v2 cpuset controller",
        ),
        (
            r#"{"pids":{"limit":5}}"#,
            "cpu",
            "linux.resources.pids needs the cgroup v2 pids controller",
        ),
        (
            r#"{"blockIO":{"weight":100}}"#,
            "cpu",
            "linux.resources.blockIO needs the cgroup v2 io controller",
        ),
        (
            r#"{"network":{"classID":7}}"#,
            ALL,
            "linux.resources.network",
        ),
        (
            r#"{"cpu":{"realtimeRuntime":1000}}"#,
            ALL,
            "realtimeRuntime",
        ),
    ];
    for (json, controllers, expected) in cases {
        let err = applicable(&resources(json), controllers).unwrap_err();
        assert!(err.contains(expected), "{json}: {err}");
        assert!(!err.contains("subsystems is empty"), "{err}");
    }
}

#[test]
fn reads_usage_from_a_unified_directory() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "cpu.stat",
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\n\
         nr_throttled 3\nthrottled_usec 1200\nnr_bursts 0\nburst_usec 0\n",
    );
    write("memory.current", "10485760\n");
    write("memory.max", "67108864\n");
    write("memory.swap.current", "0\n");
    write("memory.swap.max", "max\n");
    write(
        "memory.stat",
        "anon 4194304\nfile 2097152\nfile_mapped 4096\ninactive_file 1048576\n\
         active_anon 4190208\npgfault 1234\npgmajfault 5\n",
    );
    write("memory.events", "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n");
    write("pids.current", "3\n");
    write("pids.max", "max\n");

    let m = metrics(dir.path());
    let usage = m.cpu.usage.as_ref().unwrap();
    assert_eq!(
        (usage.total, usage.user, usage.kernel),
        (2_500_000_000, 2_000_000_000, 500_000_000)
    );
    let t = m.cpu.throttling.as_ref().unwrap();
    assert_eq!(
        (t.periods, t.throttled_periods, t.throttled_time),
        (40, 3, 1_200_000)
    );
    let mem = m.memory.as_ref().unwrap();
    let u = mem.usage.as_ref().unwrap();
    assert_eq!((u.usage, u.limit, u.failcnt), (10_485_760, 67_108_864, 7));
    assert_eq!(mem.swap.usage, 10_485_760);
    assert_eq!(mem.swap.limit, u64::MAX);
    assert_eq!(
        (mem.rss, mem.total_rss, mem.cache),
        (4_194_304, 4_194_304, 2_097_152)
    );
    assert_eq!(
        (mem.total_inactive_file, mem.mapped_file),
        (1_048_576, 4096)
    );
    assert_eq!((mem.pg_fault, mem.pg_maj_fault), (1234, 5));
    assert_eq!(mem.hierarchical_memory_limit, 67_108_864);
    assert_eq!((m.pids.current, m.pids.limit), (3, 0));
}

#[test]
fn an_unlimited_or_missing_cgroup_reads_as_zero_and_max() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
    let m = metrics(dir.path());
    assert_eq!(m.cpu.usage.total, 0);
    assert_eq!(m.memory.usage.limit, u64::MAX);
    assert_eq!(m.memory.usage.usage, 0);
}
