//! The one value that describes a VM: `VmConfig`.
//!
//! CLI flags, config files (`--config FILE`, JSON) and, later, the REST API all
//! produce this value; `builder::build` turns it into a running VM. It is plain
//! serializable data so it can be written to disk and handed to another process
//! (the nested rig passes it into its L1 VM this way).

use std::path::PathBuf;

pub use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use serde::{Deserialize, Serialize};

/// Kernel command line that every guest gets before the user's additions.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "path")]
pub enum ConsoleConfig {
    /// The VMM's stdin/stdout; interactive (raw mode) when stdin is a TTY.
    #[default]
    Stdio,
    /// Guest output is discarded; no input.
    Off,
    /// Guest output is appended to a file; no input.
    File(PathBuf),
}

/// A virtio-blk disk backed by a raw image file (or a host block device).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    /// Shown to the guest by GET_ID (/sys/block/vdX/serial); at most 20 bytes.
    #[serde(default)]
    pub id: Option<String>,
    /// The API's name for the disk (Firecracker's `drive_id`, whole), which
    /// `PATCH /drives` and the metrics use; None for `vireo run` disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive_id: Option<String>,
    /// Bytes/s and requests/s limits (Firecracker's drive `rate_limiter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DiskConfig {
    /// A read-write disk on `path` with nothing else set.
    pub fn new(path: PathBuf) -> Self {
        DiskConfig {
            path,
            readonly: false,
            id: None,
            drive_id: None,
            rate_limiter: None,
        }
    }
}

/// A virtio-vsock device: the guest's CID and the host Unix socket
/// (Firecracker's convention: `CONNECT <port>` on it reaches a guest
/// listener; guest connections to host port P reach `<uds_path>_P`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    /// Set by the nested rig inside L1: host ports are reached through the
    /// rig's relay port, and `uds_path` is where the relay brings host
    /// programs (see `devices::virtio::vsock::relay`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_relay: bool,
}

/// A virtio-net NIC on a host tap device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The API's name for it (Firecracker's `iface_id`), used by the
    /// metrics (`net_<id>`); None for `vireo run` NICs (then `eth<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where the NIC's frames go.
    pub backend: NetBackend,
    /// `aa:bb:cc:dd:ee:ff`; None: a random locally administered address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Shown to the guest (VIRTIO_NET_F_MTU); None leaves it at 1500 on
    /// a tap, passt's 65520 on user networking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Queue pairs (a multi-queue tap when more than 1).
    #[serde(default = "default_queues")]
    pub queues: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// Set by the nested rig inside L1: make the tap a port of this bridge
    /// (which also holds L1's own NIC to the host's tap) and bring it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1_bridge: Option<String>,
}

/// A NIC's host side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NetBackend {
    /// A host tap, which must exist (the nested rig's inner ones, with
    /// `l1_bridge`, are made by the VM).
    Tap(String),
    /// Rootless user-mode networking through passt, with host ports
    /// forwarded to guest ports.
    User {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        forwards: Vec<Forward>,
    },
}

pub use devices::virtio::net::passt::Forward;

fn default_queues() -> u16 {
    1
}

impl NetConfig {
    /// A single-queue NIC on `tap` with nothing else set.
    pub fn new(tap: &str) -> Self {
        Self::with_backend(NetBackend::Tap(tap.to_string()))
    }

    /// A single-queue NIC on user networking forwarding `forwards`.
    pub fn user(forwards: Vec<Forward>) -> Self {
        Self::with_backend(NetBackend::User { forwards })
    }

    fn with_backend(backend: NetBackend) -> Self {
        NetConfig {
            id: None,
            backend,
            mac: None,
            mtu: None,
            queues: default_queues(),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            l1_bridge: None,
        }
    }

    /// The tap's name, or `user` for user networking (for messages).
    pub fn label(&self) -> &str {
        match &self.backend {
            NetBackend::Tap(name) => name,
            NetBackend::User { .. } => "user",
        }
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "mac {s:?}: expected six hex pairs like 02:00:00:00:00:01"
        ));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(format!(
                "mac {s:?}: expected six hex pairs like 02:00:00:00:00:01"
            ));
        }
        *b =
            u8::from_str_radix(p, 16).map_err(|_| format!("mac {s:?}: {p:?} is not a hex pair"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac {s:?}: a multicast address cannot be a NIC's (the first byte must be even)"
        ));
    }
    Ok(mac)
}

/// A virtio-rng entropy device (bytes from the host's getrandom).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// How virtio devices reach the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// virtio-pci on the PCI segment (MSI-X interrupts).
    #[default]
    Pci,
    /// virtio-mmio, described in the DSDT (one IOAPIC pin per device).
    Mmio,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pci" => Ok(Transport::Pci),
            "mmio" => Ok(Transport::Mmio),
            _ => Err(format!("unknown transport '{s}' (use pci or mmio)")),
        }
    }
}

/// Everything needed to build one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Added after `DEFAULT_CMDLINE`.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// How guest RAM is backed (huge pages, KSM, prefault, shared).
    #[serde(default, skip_serializing_if = "is_default_backing")]
    pub memory_backing: memory::backing::MemoryBacking,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// The virtio transport; `pci=off` on the command line means Mmio
    /// whatever this says (`VmConfig::virtio_transport`).
    #[serde(default)]
    pub transport: Transport,
    /// An entropy device, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// A vsock device, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-net NICs, in the order the guest sees them (eth0, eth1, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetConfig>,
    /// A memory balloon, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<devices::virtio::balloon::BalloonSettings>,
}

fn is_default_backing(b: &memory::backing::MemoryBacking) -> bool {
    *b == memory::backing::MemoryBacking::default()
}

pub fn default_vcpus() -> u8 {
    1
}

pub fn default_memory_mib() -> u64 {
    512
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            memory_backing: Default::default(),
            console: ConsoleConfig::default(),
            disks: Vec::new(),
            transport: Transport::default(),
            rng: None,
            vsock: None,
            nets: Vec::new(),
            balloon: None,
        }
    }

    /// The transport the devices go on: virtio-mmio when asked for, or
    /// when the guest's command line turns PCI off (as Firecracker's
    /// guides do), else virtio-pci.
    pub fn virtio_transport(&self) -> Transport {
        if self.cmdline.split_whitespace().any(|a| a == "pci=off") {
            Transport::Mmio
        } else {
            self.transport
        }
    }

    /// The full kernel command line: defaults, then what the platform
    /// needs (`platform`, from the builder), then the user's additions, so
    /// the user has the last word.
    pub fn full_cmdline(&self, platform: &str) -> String {
        [DEFAULT_CMDLINE, platform.trim(), self.cmdline.trim()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut c = VmConfig::new("/k".into());
        c.initrd = Some("/i".into());
        c.cmdline = "quiet".into();
        c.vcpus = 2;
        c.memory_mib = 4096;
        c.console = ConsoleConfig::File("/tmp/c".into());
        let mut d = DiskConfig::new("/d".into());
        d.rate_limiter = Some(RateLimiterConfig::per_second(1 << 20, 0));
        c.disks.push(d);
        c.rng = Some(RngConfig {
            rate_limiter: Some(RateLimiterConfig::per_second(0, 10)),
        });
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
            host_relay: true,
        });
        let mut n = NetConfig::new("tap0");
        n.mac = Some("02:00:00:00:00:01".into());
        n.queues = 2;
        n.tx_rate_limiter = Some(RateLimiterConfig::per_second(1 << 20, 0));
        c.nets.push(n);
        c.nets.push(NetConfig::user(
            vec![Forward::parse("udp:53:5353").unwrap()],
        ));
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&s).unwrap(), c);
    }

    #[test]
    fn cmdline_appends_user_part() {
        let mut c = VmConfig::new("/k".into());
        assert_eq!(c.full_cmdline(""), DEFAULT_CMDLINE);
        c.cmdline = " quiet ".into();
        assert_eq!(c.full_cmdline(""), format!("{DEFAULT_CMDLINE} quiet"));
        assert_eq!(
            c.full_cmdline("pci=off"),
            format!("{DEFAULT_CMDLINE} pci=off quiet")
        );
    }

    #[test]
    fn transport_defaults_to_pci_and_pci_off_means_mmio() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k"}"#).unwrap();
        assert_eq!(c.transport, Transport::Pci);
        assert_eq!(c.virtio_transport(), Transport::Pci);
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"/k","transport":"mmio"}"#).unwrap();
        assert_eq!(c.virtio_transport(), Transport::Mmio);
        let mut c = VmConfig::new("/k".into());
        c.cmdline = "quiet pci=off".into();
        assert_eq!(c.virtio_transport(), Transport::Mmio);
        c.cmdline = "pci=offx".into();
        assert_eq!(c.virtio_transport(), Transport::Pci);
        assert_eq!("mmio".parse::<Transport>(), Ok(Transport::Mmio));
        assert!("usb".parse::<Transport>().is_err());
    }

    #[test]
    fn macs_parse_and_multicast_is_refused() {
        assert_eq!(parse_mac("02:ab:00:00:00:ff"), Ok([2, 0xab, 0, 0, 0, 0xff]));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0g",
            "002:00:00:00:00:01",
            "01:00:00:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let n: NetConfig = serde_json::from_str(r#"{"backend":{"tap":"t"}}"#).unwrap();
        assert_eq!(n, NetConfig::new("t"));
        let u: NetConfig =
            serde_json::from_str(r#"{"backend":{"user":{"forwards":[{"host":8080,"guest":80}]}}}"#)
                .unwrap();
        assert_eq!(u.label(), "user");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","cpus":2}"#).is_err());
    }
}
