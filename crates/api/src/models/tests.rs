//! Model tests: defaults, required and unknown fields, range checks, and
//! the config-file format.

use super::*;
use crate::error::ApiError;

fn parse<T: serde::de::DeserializeOwned + Validate>(json: &str) -> Result<T, ApiError> {
    parse_json("test", json.as_bytes())
}

fn message<T: serde::de::DeserializeOwned + Validate + std::fmt::Debug>(json: &str) -> String {
    parse::<T>(json).unwrap_err().to_string()
}

#[test]
fn machine_config_defaults_and_required() {
    let m: MachineConfiguration = parse(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#).unwrap();
    assert!(!m.smt && !m.track_dirty_pages);
    assert_eq!(m.huge_pages, HugePages::None);
    assert_eq!(m.cpu_template, CpuTemplate::None);
    assert!(message::<MachineConfiguration>(r#"{"vcpu_count": 2}"#).contains("mem_size_mib"));
    let d = MachineConfiguration::default();
    assert_eq!((d.vcpu_count, d.mem_size_mib), (1, 128));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["huge_pages"], "None");
    assert_eq!(json["cpu_template"], "None");
}

#[test]
fn machine_config_ranges_name_the_field() {
    let m = message::<MachineConfiguration>(r#"{"vcpu_count": 0, "mem_size_mib": 1}"#);
    assert!(m.contains("vcpu_count"), "{m}");
    let m = message::<MachineConfiguration>(r#"{"vcpu_count": 33, "mem_size_mib": 1}"#);
    assert!(m.contains("vcpu_count"), "{m}");
    let m = message::<MachineConfiguration>(r#"{"vcpu_count": 300, "mem_size_mib": 1}"#);
    assert!(m.contains("vcpu_count"), "{m}");
    let m = message::<MachineConfiguration>(r#"{"vcpu_count": 3, "mem_size_mib": 8, "smt": true}"#);
    assert!(m.contains("vcpu_count") && m.contains("smt"), "{m}");
    let m = message::<MachineConfiguration>(
        r#"{"vcpu_count": 1, "mem_size_mib": 9, "huge_pages": "2M"}"#,
    );
    assert!(m.contains("mem_size_mib"), "{m}");
    let m = message::<MachineConfiguration>(r#"{"vcpu_count": "two", "mem_size_mib": 9}"#);
    assert!(
        m.contains("vcpu_count") && m.contains("invalid type"),
        "{m}"
    );
}

#[test]
fn machine_config_update_merges() {
    let u: MachineConfigUpdate = parse(r#"{"mem_size_mib": 512}"#).unwrap();
    let merged = u.apply(&MachineConfiguration::default()).unwrap();
    assert_eq!((merged.vcpu_count, merged.mem_size_mib), (1, 512));
    let u: MachineConfigUpdate = parse(r#"{"vcpu_count": 3, "smt": true}"#).unwrap();
    assert_eq!(
        u.apply(&MachineConfiguration::default()).unwrap_err().field,
        "vcpu_count"
    );
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let m = message::<BootSource>(r#"{"kernel_image_path": "k", "kernel": "x"}"#);
    assert!(m.contains("unknown field `kernel`"), "{m}");
    let m = message::<Drive>(
        r#"{"drive_id": "a", "is_root_device": false, "path_on_host": "p", "is_read_only": true,
            "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 2}}}"#,
    );
    assert!(
        m.contains("rate_limiter.bandwidth") && m.contains("burst"),
        "{m}"
    );
    assert!(message::<Vm>(r#"{"state": "Paused", "x": 1}"#).contains("unknown field"));
    assert!(message::<FullVmConfiguration>(r#"{"boot_source": {}}"#).contains("boot_source"));
}

#[test]
fn drive_defaults_and_kinds() {
    let d: Drive = parse(
        r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true,
            "is_read_only": false}"#,
    )
    .unwrap();
    assert_eq!(
        (d.cache_type, d.io_engine),
        (CacheType::Unsafe, IoEngine::Sync)
    );
    let m = message::<Drive>(r#"{"drive_id": "a", "is_root_device": false, "is_read_only": true}"#);
    assert!(m.contains("path_on_host"), "{m}");
    let d: Drive =
        parse(r#"{"drive_id": "a", "is_root_device": false, "path_on_host": "p"}"#).unwrap();
    assert!(!d.read_only());
    let v: Drive =
        parse(r#"{"drive_id": "v", "is_root_device": false, "socket": "/s.sock"}"#).unwrap();
    assert_eq!(v.socket.as_deref(), Some("/s.sock"));
    let m = message::<Drive>(
        r#"{"drive_id": "v", "is_root_device": false, "socket": "/s", "path_on_host": "p"}"#,
    );
    assert!(
        m.contains("path_on_host") && m.contains("vhost-user"),
        "{m}"
    );
    let m = message::<Drive>(r#"{"drive_id": "a-b", "is_root_device": false, "socket": "/s"}"#);
    assert!(m.contains("drive_id"), "{m}");
    let m = message::<Drive>(r#"{"is_root_device": false, "socket": "/s"}"#);
    assert!(m.contains("missing field `drive_id`"), "{m}");
    let m = message::<Drive>(
        r#"{"drive_id": "a", "is_root_device": false, "socket": "/s", "cache_type": "Fast"}"#,
    );
    assert!(m.contains("cache_type") && m.contains("Writeback"), "{m}");
}

#[test]
fn network_interface_checks() {
    let n: NetworkInterface =
        parse(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}"#)
            .unwrap();
    assert_eq!(n.mtu, None);
    let m = message::<NetworkInterface>(
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"}"#,
    );
    assert!(m.contains("guest_mac"), "{m}");
    let m = message::<NetworkInterface>(r#"{"iface_id": "eth0", "host_dev_name": "t", "mtu": 67}"#);
    assert!(m.contains("mtu"), "{m}");
    assert!(message::<NetworkInterface>(r#"{"iface_id": "eth0"}"#).contains("host_dev_name"));
}

#[test]
fn balloon_and_vsock() {
    let b: Balloon = parse(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
    assert_eq!(b.stats_polling_interval_s, 0);
    assert!(!b.free_page_hinting && !b.free_page_reporting);
    assert!(message::<Balloon>(r#"{"amount_mib": 64}"#).contains("deflate_on_oom"));
    assert!(message::<BalloonStatsUpdate>("{}").contains("stats_polling_interval_s"));
    let m = message::<Vsock>(r#"{"guest_cid": 2, "uds_path": "/v.sock"}"#);
    assert!(m.contains("guest_cid"), "{m}");
    let v: Vsock = parse(r#"{"guest_cid": 3, "uds_path": "/v", "vsock_id": "old"}"#).unwrap();
    assert_eq!(v.vsock_id.as_deref(), Some("old"));
    let stats = BalloonStats {
        target_pages: 1,
        swap_in: Some(5),
        ..BalloonStats::default()
    };
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["swap_in"], 5);
    assert!(json.get("swap_out").is_none());
}

#[test]
fn each_action_and_vm_state() {
    for (name, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let a: InstanceActionInfo = parse(&format!(r#"{{"action_type": "{name}"}}"#)).unwrap();
        assert_eq!(a.action_type, action);
    }
    assert!(message::<InstanceActionInfo>(r#"{"action_type": "Reboot"}"#).contains("action_type"));
    assert!(message::<InstanceActionInfo>("{}").contains("action_type"));
    let v: Vm = parse(r#"{"state": "Resumed"}"#).unwrap();
    assert_eq!(v.state, VmState::Resumed);
    assert!(message::<Vm>(r#"{"state": "Running"}"#).contains("state"));
}

#[test]
fn instance_info_states() {
    let info = InstanceInfo {
        app_name: "vireo".into(),
        id: "anonymous-instance".into(),
        state: InstanceState::NotStarted,
        vmm_version: "0.1.0".into(),
    };
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["state"], "Not started");
    let back: InstanceInfo = serde_json::from_value(json).unwrap();
    assert_eq!(back, info);
}

#[test]
fn logger_level_ignores_case() {
    let l: Logger = parse(r#"{"level": "debug"}"#).unwrap();
    assert_eq!(l.level, LogLevel::Debug);
    let l: Logger = parse(r#"{"log_path": "/l", "level": "WARNING"}"#).unwrap();
    assert_eq!(l.level, LogLevel::Warning);
    assert_eq!(parse::<Logger>("{}").unwrap().level, LogLevel::Info);
    assert!(message::<Logger>(r#"{"level": "loud"}"#).contains("level"));
    let m: Metrics = parse(r#"{"metrics_path": "/m", "properties": {"a": "b"}}"#).unwrap();
    assert_eq!(m.properties.get("a").map(String::as_str), Some("b"));
    assert!(!m.emit_id);
}

#[test]
fn snapshot_load_memory_source() {
    let p: SnapshotLoadParams =
        parse(r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}"#)
            .unwrap();
    let b = p.memory_backend().unwrap();
    assert_eq!(
        (b.backend_type, b.backend_path.as_str()),
        (MemoryBackendType::File, "/m")
    );
    assert!(p.dirty_page_tracking() && !p.resume_vm);
    let p: SnapshotLoadParams = parse(
        r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"},
            "resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
            "huge_pages": "2M"}"#,
    )
    .unwrap();
    assert_eq!(p.network_overrides[0].host_dev_name, "tap9");
    let m = message::<SnapshotLoadParams>(r#"{"snapshot_path": "/s"}"#);
    assert!(m.contains("mem_backend"), "{m}");
    let m = message::<SnapshotLoadParams>(
        r#"{"snapshot_path": "/s", "mem_file_path": "/m",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
    );
    assert!(m.contains("mem_file_path"), "{m}");
    let c: SnapshotCreateParams =
        parse(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#).unwrap();
    assert_eq!(c.snapshot_type, SnapshotType::Full);
}

#[test]
fn mmds_config_address() {
    let c: MmdsConfig = parse(r#"{"network_interfaces": ["eth0"]}"#).unwrap();
    assert_eq!(
        (c.version, c.address()),
        (MmdsVersion::V1, net::DEFAULT_MMDS_ADDRESS)
    );
    let m = message::<MmdsConfig>(r#"{"network_interfaces": [], "ipv4_address": "10.0.0.1"}"#);
    assert!(m.contains("ipv4_address"), "{m}");
    let m = message::<MmdsConfig>(r#"{"network_interfaces": [], "ipv4_address": "nope"}"#);
    assert!(m.contains("ipv4_address"), "{m}");
}

#[test]
fn cpu_config_and_hotplug() {
    let c: CpuConfig = parse(
        r#"{"kvm_capabilities": ["121", "!55"], "cpuid_modifiers": [{"leaf": "0x1",
            "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx",
            "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.cpuid_modifiers[0].modifiers[0].register,
        CpuidRegister::Ecx
    );
    let m = message::<CpuConfig>(r#"{"kvm_capabilities": ["x1"]}"#);
    assert!(m.contains("kvm_capabilities[0]"), "{m}");
    let h: MemoryHotplugConfig = parse(r#"{"total_size_mib": 1024}"#).unwrap();
    assert_eq!((h.slot_size_mib, h.block_size_mib), (128, 2));
    assert!(message::<MemoryHotplugConfig>(r#"{"slot_size_mib": 64}"#).contains("slot_size_mib"));
}

#[test]
fn full_config_file() {
    let json = r#"{
        "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                    "is_read_only": false}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "vsock": {"guest_cid": 3, "uds_path": "/v"},
        "balloon": {"amount_mib": 0, "deflate_on_oom": false},
        "logger": {"level": "Info"},
        "metrics": {"metrics_path": "/m"},
        "entropy": {},
        "mmds-config": {"network_interfaces": ["eth0"]},
        "cpu-config": null
    }"#;
    let c = FullVmConfiguration::from_json(json.as_bytes()).unwrap();
    assert_eq!(c.boot_source.as_ref().unwrap().kernel_image_path, "/k");
    assert_eq!(c.machine_config.as_ref().unwrap().vcpu_count, 2);
    assert_eq!(c.drives.len(), 1);
    let out = serde_json::to_value(&c).unwrap();
    assert!(out["cpu-config"].is_null() && out["pmem"] == serde_json::json!([]));
    let back: FullVmConfiguration = serde_json::from_value(out).unwrap();
    assert_eq!(back, c);

    let bad = r#"{"drives": [
        {"drive_id": "a", "path_on_host": "/r", "is_root_device": false, "is_read_only": false},
        {"drive_id": "a", "path_on_host": "/s", "is_root_device": false, "is_read_only": false}]}"#;
    let m = FullVmConfiguration::from_json(bad.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("drives[1].drive_id") && m.contains("duplicate"),
        "{m}"
    );
    let bad = r#"{"machine-config": {"vcpu_count": 0, "mem_size_mib": 1}}"#;
    let m = FullVmConfiguration::from_json(bad.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(m.contains("machine-config.vcpu_count"), "{m}");
    let m = FullVmConfiguration::from_json(b"{} x")
        .unwrap_err()
        .to_string();
    assert!(m.contains("trailing"), "{m}");
    let m = FullVmConfiguration::from_config_file(b"{}")
        .unwrap_err()
        .to_string();
    assert!(m.contains("boot-source"), "{m}");
}

#[test]
fn cpu_config_in_a_config_file_is_a_path_or_inline() {
    let c = FullVmConfiguration::from_json(br#"{"cpu-config": "/t.json"}"#).unwrap();
    assert_eq!(c.cpu_config, Some(CpuConfigSource::File("/t.json".into())));
    let c =
        FullVmConfiguration::from_json(br#"{"cpu-config": {"kvm_capabilities": ["1"]}}"#).unwrap();
    assert!(matches!(c.cpu_config, Some(CpuConfigSource::Inline(_))));
    let out = serde_json::to_value(&c).unwrap();
    assert_eq!(out["cpu-config"]["kvm_capabilities"][0], "1");
    let m = FullVmConfiguration::from_json(br#"{"cpu-config": {"nope": 1}}"#)
        .unwrap_err()
        .to_string();
    assert!(m.contains("cpu-config") && m.contains("nope"), "{m}");
    let m = FullVmConfiguration::from_json(br#"{"cpu-config": {"kvm_capabilities": ["z"]}}"#)
        .unwrap_err()
        .to_string();
    assert!(m.contains("cpu-config.kvm_capabilities[0]"), "{m}");
    let m = FullVmConfiguration::from_json(br#"{"cpu-config": ""}"#)
        .unwrap_err()
        .to_string();
    assert!(m.contains("cpu-config"), "{m}");
}
