//! Firecracker's configuration (the `--config-file` JSON and what the API's
//! pre-boot requests build up, both an `api::models::FullVmConfiguration`)
//! turned into the one `VmConfig` the builder takes. `vireo run`'s flags
//! make a `VmConfig` directly; this is the only place the Firecracker shape
//! is converted, for the file and the API alike.
//!
//! What maps: `boot-source` (kernel, initrd, boot_args), `machine-config`
//! (vcpu_count, mem_size_mib), `drives` (path_on_host, is_read_only,
//! is_root_device, partuuid, drive_id as the disk's serial, rate_limiter),
//! `network-interfaces` (iface_id, host_dev_name, guest_mac, mtu, rx and
//! tx rate limiters), `entropy` (rate_limiter), `vsock` (guest_cid,
//! uds_path), `serial` (serial_out_path), `balloon` (amount_mib,
//! deflate_on_oom, stats_polling_interval_s, free_page_reporting). What a
//! VM in this version of Vireo cannot have yet is refused with the field
//! named, rather than silently dropped: balloon free page hinting, pmem,
//! memory hotplug, vhost-user
//! drives, dirty-page tracking, CPU templates and SMT. `huge_pages` "2M"
//! backs guest RAM with 2 MiB hugetlb pages.

use std::path::PathBuf;

use api::models::{CpuTemplate, FullVmConfiguration, HugePages};

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};

use crate::config::{
    ConsoleConfig, DiskConfig, NetConfig, RngConfig, Transport, VmConfig, VsockConfig,
};

/// GET_ID serials are at most 20 bytes (virtio-blk).
const SERIAL_MAX: usize = 20;

/// Why a Firecracker configuration cannot become a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error(
        "no boot source: PUT /boot-source (or \"boot-source\" in the config file) names the kernel"
    )]
    NoBootSource,
    #[error("{field}: {what} is not supported by this version of Vireo yet")]
    Unsupported { field: String, what: String },
    #[error("drives: more than one root device ({first} and {second})")]
    TwoRoots { first: String, second: String },
    #[error("machine-config.mem_size_mib: {0} MiB is too large")]
    Memory(usize),
}

fn unsupported(field: impl Into<String>, what: impl Into<String>) -> ResourceError {
    ResourceError::Unsupported {
        field: field.into(),
        what: what.into(),
    }
}

/// Refuse the parts of `fc` Vireo cannot build yet.
fn check_supported(fc: &FullVmConfiguration) -> Result<(), ResourceError> {
    let issue = |what: &str, n: u32| format!("{what} (issue {n})");
    if fc.balloon.as_ref().is_some_and(|b| b.free_page_hinting) {
        return Err(unsupported(
            "balloon.free_page_hinting",
            issue("free page hinting", 7),
        ));
    }
    if fc.memory_hotplug.is_some() {
        return Err(unsupported("memory-hotplug", issue("virtio-mem", 7)));
    }
    if !fc.pmem.is_empty() {
        return Err(unsupported("pmem", "virtio-pmem"));
    }
    if let Some(m) = &fc.machine_config {
        if m.track_dirty_pages {
            return Err(unsupported(
                "machine-config.track_dirty_pages",
                issue("dirty page tracking", 8),
            ));
        }
        if m.cpu_template != CpuTemplate::None {
            return Err(unsupported("machine-config.cpu_template", "CPU templates"));
        }
    }
    if fc.cpu_config.is_some() {
        return Err(unsupported("cpu-config", "custom CPU templates"));
    }
    for (i, d) in fc.drives.iter().enumerate() {
        if d.socket.is_some() {
            return Err(unsupported(
                format!("drives[{i}].socket"),
                "vhost-user block devices",
            ));
        }
    }
    Ok(())
}

/// The `root=` argument for the root drive (Firecracker's convention: the
/// root device is the first disk, /dev/vda, or its partition by PARTUUID).
fn root_arg(partuuid: Option<&str>, readonly: bool) -> String {
    let dev = match partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        None => "root=/dev/vda".to_string(),
    };
    format!("{dev} {}", if readonly { "ro" } else { "rw" })
}

/// The VM `fc` describes. The root drive, if any, becomes the first disk
/// (vda) and adds `root=` to the command line, as with Firecracker; other
/// drives follow in the order they were configured. Devices go on
/// virtio-mmio unless `pci` (Firecracker's `--enable-pci`).
pub fn to_vm_config(fc: &FullVmConfiguration, pci: bool) -> Result<VmConfig, ResourceError> {
    check_supported(fc)?;
    let boot = fc.boot_source.as_ref().ok_or(ResourceError::NoBootSource)?;
    let mut config = VmConfig::new(PathBuf::from(&boot.kernel_image_path));
    config.transport = if pci { Transport::Pci } else { Transport::Mmio };
    config.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
    let mut cmdline = boot.boot_args.clone().unwrap_or_default();

    let machine = fc.machine_config.clone().unwrap_or_default();
    config.vcpus = machine.vcpu_count;
    config.memory_mib = u64::try_from(machine.mem_size_mib)
        .map_err(|_| ResourceError::Memory(machine.mem_size_mib))?;
    // Firecracker's meanings: None is plain pages, Transparent advises THP.
    match machine.huge_pages {
        HugePages::Hugetlbfs2M => {
            config.memory_backing.hugepages = Some(memory::backing::HugePageSize::Size2M)
        }
        HugePages::None => config.memory_backing.no_thp = true,
        HugePages::Transparent => {}
    }

    let mut root: Option<&api::models::Drive> = None;
    for d in &fc.drives {
        if d.is_root_device {
            if let Some(first) = root {
                return Err(ResourceError::TwoRoots {
                    first: first.drive_id.clone(),
                    second: d.drive_id.clone(),
                });
            }
            root = Some(d);
        }
    }
    let ordered = root
        .into_iter()
        .chain(fc.drives.iter().filter(|d| !d.is_root_device));
    for d in ordered {
        let readonly = d.is_read_only.unwrap_or(false);
        config.disks.push(DiskConfig {
            path: PathBuf::from(d.path_on_host.as_deref().unwrap_or_default()),
            readonly,
            id: Some(serial_of(&d.drive_id)),
            drive_id: Some(d.drive_id.clone()),
            rate_limiter: d.rate_limiter.as_ref().map(rate_limiter),
        });
    }
    if let Some(r) = root {
        let arg = root_arg(r.partuuid.as_deref(), r.is_read_only.unwrap_or(false));
        cmdline = format!("{cmdline} {arg}").trim().to_string();
    }
    config.cmdline = cmdline;
    config.nets = fc
        .network_interfaces
        .iter()
        .map(|n| NetConfig {
            id: Some(n.iface_id.clone()),
            mac: n.guest_mac.clone(),
            mtu: n.mtu,
            rx_rate_limiter: n.rx_rate_limiter.as_ref().map(rate_limiter),
            tx_rate_limiter: n.tx_rate_limiter.as_ref().map(rate_limiter),
            ..NetConfig::new(&n.host_dev_name)
        })
        .collect();
    config.vsock = fc.vsock.as_ref().map(|v| VsockConfig {
        guest_cid: u64::from(v.guest_cid),
        uds_path: PathBuf::from(&v.uds_path),
        host_relay: false,
    });
    config.balloon = fc.balloon.as_ref().map(balloon_settings);
    config.rng = fc.entropy.as_ref().map(|e| RngConfig {
        rate_limiter: e.rate_limiter.as_ref().map(rate_limiter),
    });
    if let Some(path) = fc.serial.as_ref().and_then(|s| s.serial_out_path.as_ref()) {
        config.console = ConsoleConfig::File(PathBuf::from(path));
    }
    Ok(config)
}

/// Firecracker's balloon JSON as the device's settings.
pub fn balloon_settings(b: &api::models::Balloon) -> devices::virtio::balloon::BalloonSettings {
    devices::virtio::balloon::BalloonSettings {
        amount_mib: b.amount_mib,
        deflate_on_oom: b.deflate_on_oom,
        stats_interval_s: b.stats_polling_interval_s,
        free_page_reporting: b.free_page_reporting,
    }
}

/// Firecracker's rate limiter JSON as the devices' limiter settings.
pub fn rate_limiter(r: &api::models::RateLimiter) -> RateLimiterConfig {
    let bucket = |b: &api::models::TokenBucket| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time: b.refill_time,
    };
    RateLimiterConfig {
        bandwidth: r.bandwidth.as_ref().map(bucket),
        ops: r.ops.as_ref().map(bucket),
    }
}

/// The drive id as the disk's serial: its first 20 bytes, cut at a
/// character boundary.
fn serial_of(id: &str) -> String {
    let mut end = id.len().min(SERIAL_MAX);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> FullVmConfiguration {
        FullVmConfiguration::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn firecracker_getting_started_config_becomes_a_vm_config() {
        let fc = parse(
            r#"{
              "boot-source": {"kernel_image_path": "/k/vmlinux",
                              "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"},
              "drives": [
                {"drive_id": "scratch", "path_on_host": "/d/scratch.img",
                 "is_root_device": false, "is_read_only": true},
                {"drive_id": "rootfs", "path_on_host": "/d/rootfs.ext4",
                 "is_root_device": true, "is_read_only": false}
              ],
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024},
              "serial": {"serial_out_path": "/tmp/console.log"}
            }"#,
        );
        let c = to_vm_config(&fc, false).unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!((c.vcpus, c.memory_mib), (2, 1024));
        // The root drive is vda, whatever order the drives came in.
        assert_eq!(c.disks[0].path, PathBuf::from("/d/rootfs.ext4"));
        assert_eq!(c.disks[0].id.as_deref(), Some("rootfs"));
        assert!(!c.disks[0].readonly);
        assert_eq!(c.disks[1].path, PathBuf::from("/d/scratch.img"));
        assert!(c.disks[1].readonly);
        assert_eq!(
            c.cmdline,
            "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw"
        );
        assert_eq!(c.console, ConsoleConfig::File("/tmp/console.log".into()));
        // Firecracker's default transport, and its --enable-pci.
        assert_eq!(c.transport, Transport::Mmio);
        assert_eq!(to_vm_config(&fc, true).unwrap().transport, Transport::Pci);
    }

    #[test]
    fn defaults_match_firecracker_and_partuuid_roots_work() {
        let fc = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "drives": [{"drive_id": "r", "path_on_host": "/r", "is_root_device": true,
                            "is_read_only": true, "partuuid": "0eaa91a0-01"}]}"#,
        );
        let c = to_vm_config(&fc, false).unwrap();
        // Firecracker's machine-config defaults: 1 vCPU, 128 MiB.
        assert_eq!((c.vcpus, c.memory_mib), (1, 128));
        assert_eq!(c.cmdline, "root=PARTUUID=0eaa91a0-01 ro");
        assert_eq!(c.console, ConsoleConfig::Stdio);
    }

    #[test]
    fn what_vireo_cannot_build_yet_is_refused_by_field() {
        assert_eq!(
            to_vm_config(&parse("{}"), false).unwrap_err(),
            ResourceError::NoBootSource
        );
        for (json, field) in [
            (
                r#""balloon": {"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true}"#,
                "balloon.free_page_hinting",
            ),
            (
                r#""machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}"#,
                "machine-config.track_dirty_pages",
            ),
        ] {
            let fc = parse(&format!(
                r#"{{"boot-source": {{"kernel_image_path": "/k"}}, {json}}}"#
            ));
            let err = to_vm_config(&fc, false).unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
    }

    #[test]
    fn huge_pages_map_across() {
        let fc = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}}"#,
        );
        let c = to_vm_config(&fc, false).unwrap();
        assert_eq!(
            c.memory_backing.hugepages,
            Some(memory::backing::HugePageSize::Size2M)
        );
    }

    #[test]
    fn the_balloon_maps_across() {
        let fc = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "balloon": {"amount_mib": 64, "deflate_on_oom": true,
                            "stats_polling_interval_s": 2, "free_page_reporting": true}}"#,
        );
        let c = to_vm_config(&fc, false).unwrap();
        // Firecracker's default huge_pages "None": plain pages, no THP.
        assert!(c.memory_backing.no_thp);
        let b = c.balloon.unwrap();
        assert_eq!(
            b,
            devices::virtio::balloon::BalloonSettings {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_interval_s: 2,
                free_page_reporting: true,
            }
        );
    }

    #[test]
    fn network_interfaces_become_nics_in_order() {
        let fc = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "network-interfaces": [
                  {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                   "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}},
                  {"iface_id": "net1", "host_dev_name": "tap1", "mtu": 9000}]}"#,
        );
        let c = to_vm_config(&fc, false).unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(c.nets[0].id.as_deref(), Some("eth0"));
        assert_eq!(c.nets[0].label(), "tap0");
        assert_eq!(c.nets[0].mac.as_deref(), Some("06:00:ac:10:00:02"));
        assert!(c.nets[0].tx_rate_limiter.unwrap().bandwidth.is_some());
        assert_eq!(c.nets[0].rx_rate_limiter, None);
        assert_eq!((c.nets[1].label(), c.nets[1].mtu), ("tap1", Some(9000)));
        assert_eq!(c.nets[1].queues, 1);
    }

    #[test]
    fn rate_limiters_entropy_and_vsock_map_across() {
        let fc = parse(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "drives": [{"drive_id": "d", "path_on_host": "/d", "is_root_device": false,
                            "rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 50,
                                                            "refill_time": 100}}}],
                "entropy": {"rate_limiter": {"ops": {"size": 5, "refill_time": 1000}}},
                "vsock": {"guest_cid": 7, "uds_path": "/tmp/v.sock"}}"#,
        );
        let c = to_vm_config(&fc, false).unwrap();
        let limit = c.disks[0].rate_limiter.unwrap();
        assert_eq!(
            limit.bandwidth,
            Some(BucketConfig {
                size: 1000,
                one_time_burst: 50,
                refill_time: 100
            })
        );
        assert_eq!(limit.ops, None);
        let rng = c.rng.unwrap().rate_limiter.unwrap();
        assert_eq!(rng.ops.unwrap().size, 5);
        let v = c.vsock.unwrap();
        assert_eq!((v.guest_cid, v.uds_path), (7, PathBuf::from("/tmp/v.sock")));
        let none = to_vm_config(
            &parse(r#"{"boot-source": {"kernel_image_path": "/k"}}"#),
            false,
        )
        .unwrap();
        assert_eq!((none.rng, none.vsock), (None, None));
    }

    #[test]
    fn two_root_drives_are_refused() {
        // The API's validation refuses this already; the conversion does
        // not rely on it.
        let fc: FullVmConfiguration = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "drives": [
                  {"drive_id": "a", "path_on_host": "/a", "is_root_device": true, "is_read_only": false},
                  {"drive_id": "b", "path_on_host": "/b", "is_root_device": true, "is_read_only": false}]}"#,
        )
        .unwrap();
        assert!(matches!(
            to_vm_config(&fc, false),
            Err(ResourceError::TwoRoots { .. })
        ));
    }

    #[test]
    fn long_drive_ids_are_cut_to_a_serial() {
        assert_eq!(
            serial_of("abcdefghijklmnopqrstuvwxyz"),
            "abcdefghijklmnopqrst"
        );
        assert_eq!(serial_of("ééééééééééé"), "éééééééééé");
    }
}
