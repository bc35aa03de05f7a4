//! The command line: clap definitions, and turning `vireo run`'s flags into
//! the one `VmConfig` value the VMM builds from.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use devices::virtio::balloon::BalloonSettings;
#[cfg(test)]
use memory::backing::HugePageSize;
use memory::backing::MemoryBacking;
use vmm::config::{DiskConfig, NetConfig, RngConfig, Transport, VsockConfig};

use crate::rate::{self, RateKeys};
use vmm::{ConsoleConfig, VmConfig};

use crate::size;

#[derive(Parser)]
#[command(
    name = "vireo",
    version,
    about = "Vireo: a microVM monitor for Linux KVM",
    long_about = "Vireo boots Linux guests in lightweight KVM virtual machines.\n\n\
        Run `vireo run` to boot the default guest (a Debian kernel with a busybox shell,\n\
        prepared on first use and cached), or give your own kernel with --kernel.",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        vireo run                                  boot the default guest, interactive shell\n  \
        vireo run -- uname -a                      run one command in the default guest\n  \
        vireo run --cpus 2 --memory 1G             two vCPUs, 1 GiB of RAM\n  \
        vireo run --kernel bzImage --initrd initrd.cpio --cmdline 'rdinit=/bin/sh'\n  \
        vireo guest build                          prepare the default guest now\n  \
        vireo bench boot                           boot-time benchmark against QEMU\n  \
        vireo bench block                          disk I/O benchmark against QEMU (nested rig)\n  \
        vireo --api-sock /tmp/vireo.sock           Firecracker-compatible REST API (then PUT /boot-source, ...)\n  \
        vireo --no-api --config-file vm.json       boot a Firecracker JSON configuration\n  \
        vireo ctl --api-sock /tmp/vireo.sock info  drive a running Vireo without curl\n\n\
        Without a subcommand Vireo behaves as the `firecracker` binary does (same flags, same API),\n\
        so `ln -s $(command -v vireo) firecracker` makes it a drop-in for Firecracker's tools."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,
}

/// Firecracker's process flags, with the same meaning.
#[derive(Args, Debug)]
pub struct FirecrackerArgs {
    /// Serve the REST API on this Unix socket (it must not exist yet)
    #[arg(long, value_name = "PATH", help_heading = "Firecracker mode")]
    pub api_sock: Option<PathBuf>,
    /// The instance id the API reports
    #[arg(
        long,
        value_name = "ID",
        default_value = "anonymous-instance",
        help_heading = "Firecracker mode"
    )]
    pub id: String,
    /// Boot the VM this Firecracker JSON configuration describes, at once
    #[arg(long, value_name = "FILE", help_heading = "Firecracker mode")]
    pub config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file)
    #[arg(long, help_heading = "Firecracker mode")]
    pub no_api: bool,
    /// Put virtio devices on PCI (the default in Firecracker mode is
    /// virtio-mmio, as with Firecracker)
    #[arg(long, help_heading = "Firecracker mode")]
    pub enable_pci: bool,
    /// Accepted for compatibility; Vireo does not report the guest's boot
    /// time through a boot-timer device yet
    #[arg(long, help_heading = "Firecracker mode")]
    pub boot_timer: bool,
    /// Write the log to this file or FIFO
    #[arg(long, value_name = "PATH", help_heading = "Firecracker mode")]
    pub log_path: Option<PathBuf>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off
    #[arg(long, value_name = "LEVEL", help_heading = "Firecracker mode")]
    pub level: Option<String>,
    /// Show the level in each log line
    #[arg(long, help_heading = "Firecracker mode")]
    pub show_level: bool,
    /// Show the origin (file:line) in each log line
    #[arg(long, help_heading = "Firecracker mode")]
    pub show_log_origin: bool,
    /// Write metrics (JSON lines) to this file or FIFO
    #[arg(long, value_name = "PATH", help_heading = "Firecracker mode")]
    pub metrics_path: Option<PathBuf>,
    /// The largest API request body, in bytes
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 51200,
        help_heading = "Firecracker mode"
    )]
    pub http_api_max_payload_size: usize,
    /// A seccomp filter to install (not implemented yet: issue 9)
    #[arg(long, value_name = "FILE", help_heading = "Firecracker mode")]
    pub seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters (Vireo has none yet: issue 9)
    #[arg(long, help_heading = "Firecracker mode")]
    pub no_seccomp: bool,
    /// Vireo's own: run the VM inside the nested emulation rig: auto (when
    /// /dev/kvm cannot run stock kernels), always, or never
    #[arg(
        long,
        value_name = "WHEN",
        default_value = "auto",
        help_heading = "Firecracker mode"
    )]
    pub emulate: rig::EmulateMode,
    /// Internal (the nested rig): boot this Vireo VmConfig JSON at once
    #[arg(long, value_name = "FILE", hide = true)]
    pub vm_config: Option<PathBuf>,
    /// Internal (the nested rig): also serve API requests relayed over
    /// this tty, one JSON line each
    #[arg(long, value_name = "TTY", hide = true)]
    pub control_tty: Option<PathBuf>,
    /// Accepted for compatibility: Firecracker's process start time (us)
    #[arg(long, value_name = "US", hide = true)]
    pub start_time_us: Option<u64>,
    /// Accepted for compatibility: Firecracker's process CPU start time (us)
    #[arg(long, value_name = "US", hide = true)]
    pub start_time_cpu_us: Option<u64>,
    /// Accepted for compatibility: the jailer's CPU time (us)
    #[arg(long, value_name = "US", hide = true)]
    pub parent_cpu_time_us: Option<u64>,
}

impl FirecrackerArgs {
    /// Whether any Firecracker-mode flag was given.
    pub fn requested(&self) -> bool {
        self.api_sock.is_some() || self.config_file.is_some() || self.no_api
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Boot a VM and attach to its serial console
    Run(Box<RunArgs>),
    /// Manage the default guest (kernel and initramfs)
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Benchmarks that compare Vireo with QEMU
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Report whether this host's /dev/kvm can run guests directly
    Host,
    /// Drive a running Vireo (or Firecracker) through its API socket
    Ctl(CtlArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    vireo ctl --api-sock /tmp/vireo.sock info\n  \
    vireo ctl --api-sock /tmp/vireo.sock pause\n  \
    vireo ctl --api-sock /tmp/vireo.sock resume\n  \
    vireo ctl --api-sock /tmp/vireo.sock config\n  \
    vireo ctl --api-sock /tmp/vireo.sock ctrl-alt-del\n  \
    vireo ctl --api-sock /tmp/vireo.sock shutdown\n  \
    vireo ctl --api-sock /tmp/vireo.sock balloon 256\n  \
    vireo ctl --api-sock /tmp/vireo.sock raw GET /machine-config")]
pub struct CtlArgs {
    /// The API socket of the VMM
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlAction {
    /// The instance: id, state (Not started, Running, Paused), version
    Info,
    /// The whole VM configuration (GET /vm/config)
    Config,
    /// Pause the VM (vCPUs and devices stop; the guest's clock stops)
    Pause,
    /// Resume a paused VM
    Resume,
    /// Start a configured VM (InstanceStart)
    Start,
    /// Send Ctrl-Alt-Del to the guest (a stock guest reboots, and Vireo exits)
    CtrlAltDel,
    /// Ctrl-Alt-Del, then wait until the VMM has exited
    Shutdown {
        /// Seconds to wait for the VMM to exit
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Set the balloon's target size (PATCH /balloon)
    Balloon {
        /// Target in MiB
        mib: u64,
    },
    /// The balloon's statistics (GET /balloon/statistics)
    Stats,
    /// Where the VM's memory is on the host: guest RAM resident and
    /// swapped, the VMM's own overhead, the balloon (GET /vm/memory)
    Memory,
    /// Write the metrics now (FlushMetrics)
    FlushMetrics,
    /// Any request: METHOD PATH [JSON BODY]
    Raw {
        method: String,
        path: String,
        body: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum GuestCommand {
    /// Download the packages and build the default guest (also done on first `vireo run`)
    Build,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot time and memory: Vireo vs QEMU microvm, natively on a tiny guest
    /// (and with --rig, the Debian guest in the nested emulation rig)
    Boot {
        /// Runs per VMM (alternating)
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Also run the rig part (slow: boots the emulated L1 machine)
        #[arg(long)]
        rig: bool,
    },
    /// Disk I/O: guest dd with O_DIRECT on Vireo's virtio-blk vs QEMU's,
    /// in the nested emulation rig (several minutes)
    Block {
        /// Measured boots per VMM (alternating)
        #[arg(long, default_value_t = bench::BLOCK_DEFAULT_RUNS)]
        runs: usize,
        /// Repetitions of every test per boot (each one a sample)
        #[arg(long, default_value_t = bench::BLOCK_DEFAULT_REPS)]
        reps: usize,
        /// Random 4 KiB operations per random test (0 skips them)
        #[arg(long, default_value_t = bench::BLOCK_DEFAULT_RANDOM_OPS)]
        random_ops: usize,
        /// QEMU's I/O backend for the image: threads (its default) or io_uring
        #[arg(long, default_value = "threads")]
        qemu_aio: bench::QemuAio,
        /// QEMU's machine: microvm (with PCIe, qboot) or q35 (SeaBIOS)
        #[arg(long, default_value = "microvm")]
        qemu_machine: bench::QemuMachine,
        /// The guest kernel both VMMs boot: cloud (Debian's cloud-amd64, the
        /// default guest's) or standard (Debian's amd64)
        #[arg(long, default_value = "cloud")]
        guest_kernel: guest::GuestKernel,
        /// Skip the warm-up boots
        #[arg(long)]
        no_warmup: bool,
    },
    /// Network: TCP throughput both ways, TCP request/response latency and
    /// vsock throughput on Vireo's virtio-net and virtio-vsock vs QEMU's
    /// virtio-net-pci (userspace and vhost-net) and vhost-vsock, in the
    /// nested emulation rig (several minutes)
    Net {
        /// Measured boots per VMM (rotating order)
        #[arg(long, default_value_t = bench::NET_DEFAULT_RUNS)]
        runs: usize,
        /// Repetitions of every test per boot (each one a sample)
        #[arg(long, default_value_t = bench::NET_DEFAULT_REPS)]
        reps: usize,
        /// MiB per throughput test
        #[arg(long, default_value_t = bench::NET_DEFAULT_MIB)]
        mib: u64,
        /// Round trips in the latency test
        #[arg(long, default_value_t = bench::NET_DEFAULT_RR)]
        round_trips: u64,
        /// vireo-agent, which runs the probes and servers [default: beside
        /// this vireo binary]
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// QEMU's machine: microvm (with PCIe, qboot) or q35 (SeaBIOS)
        #[arg(long, default_value = "microvm")]
        qemu_machine: bench::QemuMachine,
        /// The guest kernel every VMM boots: cloud or standard
        #[arg(long, default_value = "cloud")]
        guest_kernel: guest::GuestKernel,
        /// Skip the warm-up boots
        #[arg(long)]
        no_warmup: bool,
    },
}

#[derive(Args)]
#[command(
    after_help = "Console: on a terminal the console is interactive; press Ctrl-A x to quit \
    (Ctrl-A Ctrl-A sends Ctrl-A).\n\
    Exit status: 0 when the guest powers off or resets; the command's status with `-- CMD`;\n\
    1 when the guest panics or crashes, or on an error; 128+N on signal N."
)]
pub struct RunArgs {
    /// Kernel: a bzImage or an ELF vmlinux (PVH entry used when present).
    /// Without it, the default guest is used.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio archive, optionally compressed)
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, added after the defaults
    /// ("console=ttyS0 reboot=k panic=1")
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1 to 254)
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<u8>,
    /// Guest memory: 512M, 2G, ... (a bare number is MiB) [default: 512M],
    /// or size=SIZE[,hugepages=2M|1G][,mergeable=on][,prefault=on][,shared=on][,thp=off]:
    /// hugetlb pages the host reserved beforehand (else transparent huge
    /// pages are advised, unless thp=off), KSM page sharing, populated at
    /// start, a shared memfd
    #[arg(long, value_name = "SIZE|OPTIONS", value_parser = parse_memory)]
    pub memory: Option<MemoryArg>,
    /// Serial console: stdio, off, or file=PATH
    #[arg(long, value_name = "MODE", value_parser = parse_console)]
    pub console: Option<ConsoleConfig>,
    /// A virtio-blk disk backed by a raw image:
    /// path=FILE[,readonly=on][,id=NAME][,rate=BYTES_PER_SEC][,ops=OPS_PER_SEC].
    /// Repeat for more disks; the guest sees them as vda, vdb, ...
    /// rate= (10M, 512K, ...) and ops= cap the disk's throughput and requests.
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// Entropy device (virtio-rng, /dev/hwrng in the guest): on, off, or
    /// rate=BYTES_PER_SEC[,ops=OPS_PER_SEC] for a limited one
    /// [default: on with the default guest, else off]
    #[arg(long, value_name = "on|off|LIMITS", value_parser = parse_rng)]
    pub rng: Option<RngChoice>,
    /// A virtio-vsock device: cid=N (3 or more),uds=PATH. Host programs
    /// connect to PATH and write "CONNECT <port>\n" to reach a guest
    /// listener (answered "OK <hostport>\n"); guest connections to host port
    /// P arrive at the Unix socket PATH_P (Firecracker's convention)
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// A memory balloon (virtio-balloon), settable while the VM runs with
    /// `vireo ctl SOCK balloon MIB`:
    /// [size=MIB][,deflate_on_oom=on][,stats_interval=SECS][,free_page_reporting=on].
    /// size is the target at boot (default 0); deflate_on_oom lets the
    /// guest take pages back when it runs out of memory; stats_interval
    /// asks for the guest's memory statistics every SECS seconds;
    /// free_page_reporting gives back to the host the pages the guest
    /// reports free
    #[arg(
        long,
        value_name = "OPTIONS",
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = parse_balloon
    )]
    pub balloon: Option<BalloonSettings>,
    /// A virtio-net NIC, on a host tap device:
    /// tap=NAME[,mac=MAC][,mtu=N][,queues=N][,rate=BYTES_PER_SEC][,ops=OPS_PER_SEC],
    /// or on rootless user networking: user[,forward=HOST:GUEST]... (passt
    /// gives the guest DHCP, a gateway and DNS; forward= publishes a host TCP
    /// port, udp:HOST:GUEST a UDP one). Repeat for more NICs (eth0, eth1,
    /// ... in the guest). The tap must exist (ip tuntap add NAME mode tap;
    /// give it addresses or a bridge yourself) and is used as it is.
    /// queues=N uses N queue pairs on a multi-queue tap (ip tuntap add NAME
    /// mode tap multi_queue); rate= and ops= cap each direction
    #[arg(long = "net", value_name = "SPEC", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// virtio transport: pci (the default) or mmio (also chosen when the
    /// command line has pci=off)
    #[arg(long, value_name = "pci|mmio")]
    pub transport: Option<Transport>,
    /// Run inside the nested emulation rig: auto (when /dev/kvm cannot run
    /// stock kernels), always, or never
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub emulate: rig::EmulateMode,
    /// Read the VM configuration from a JSON file; flags given too override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Command to run in the default guest; vireo exits with its status
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let bad = || format!("invalid vCPU count '{s}': give a number from 1 to 254");
    let n: u32 = s.trim().parse().map_err(|_| bad())?;
    match u8::try_from(n) {
        Ok(n) if (1..=254).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

fn parse_console(s: &str) -> Result<ConsoleConfig, String> {
    match s {
        "stdio" => Ok(ConsoleConfig::Stdio),
        "off" => Ok(ConsoleConfig::Off),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(ConsoleConfig::File(PathBuf::from(p))),
            _ => Err(format!(
                "invalid console '{s}': use stdio, off or file=PATH"
            )),
        },
    }
}

/// Parse `path=FILE[,readonly=on|off][,id=NAME]`.
fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig::new(PathBuf::new());
    let mut rate = RateKeys::default();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid disk '{s}': '{part}' is not key=value"))?;
        if let Some(taken) = rate.take("disk", key, value) {
            taken.map_err(|e| format!("{e} (in '{s}')"))?;
            continue;
        }
        match key {
            "path" if !value.is_empty() => disk.path = PathBuf::from(value),
            "readonly" | "ro" => {
                disk.readonly = match value {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(format!("invalid disk '{s}': readonly is on or off")),
                }
            }
            "id" if value.len() <= 20 => disk.id = Some(value.to_string()),
            "id" => return Err(format!("invalid disk '{s}': id is at most 20 bytes")),
            _ => {
                return Err(format!(
                    "invalid disk '{s}': unknown or empty key '{key}' (use path=FILE[,readonly=on][,id=NAME][,{}])",
                    rate::KEYS
                ))
            }
        }
    }
    disk.rate_limiter = rate.config();
    if disk.path.as_os_str().is_empty() {
        return Err(format!("invalid disk '{s}': path=FILE is required"));
    }
    Ok(disk)
}

/// Parse `on`, `off` or rate keys (a limited device).
/// `--rng`: the device to add, or None for off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RngChoice(pub Option<RngConfig>);

fn parse_rng(s: &str) -> Result<RngChoice, String> {
    match s {
        "on" => return Ok(RngChoice(Some(RngConfig::default()))),
        "off" => return Ok(RngChoice(None)),
        _ => {}
    }
    let mut rate = RateKeys::default();
    for part in s.split(',') {
        let taken = part
            .split_once('=')
            .and_then(|(key, value)| rate.take("rng", key, value));
        match taken {
            Some(r) => r?,
            None => return Err(format!("invalid rng '{s}': use on, off or {}", rate::KEYS)),
        }
    }
    Ok(RngChoice(Some(RngConfig {
        rate_limiter: rate.config(),
    })))
}

/// Parse `tap=NAME` or `user[,forward=..]...`, then
/// `[,mac=..][,mtu=..][,queues=..][,id=..]` and rate keys.
fn parse_net(s: &str) -> Result<NetConfig, String> {
    use devices::virtio::net::{passt::Forward, tap, MAX_QUEUE_PAIRS, MIN_MTU};
    use vmm::config::NetBackend;
    const USE: &str =
        "tap=NAME or user[,forward=HOST:GUEST] then [,mac=MAC][,mtu=N][,queues=N][,id=NAME]";
    let (mut net, rest) = match s.split_once(',') {
        Some(("user", rest)) => (NetConfig::user(Vec::new()), rest),
        None if s == "user" => (NetConfig::user(Vec::new()), ""),
        _ => (NetConfig::new(""), s),
    };
    let user = matches!(net.backend, NetBackend::User { .. });
    let mut rate = RateKeys::default();
    for part in rest.split(',').filter(|p| !(p.is_empty() && user)) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid net '{s}': '{part}' is not key=value (use {USE})"))?;
        if let Some(taken) = rate.take("net", key, value) {
            taken.map_err(|e| format!("{e} (in '{s}')"))?;
            continue;
        }
        match key {
            "tap" if user => {
                return Err(format!("invalid net '{s}': user networking has no tap"))
            }
            "tap" if tap::valid_name(value) => net.backend = NetBackend::Tap(value.to_string()),
            "tap" => {
                return Err(format!(
                    "invalid net '{s}': tap name '{value}' must be 1 to 15 letters, digits, '-', '_' or '.'"
                ))
            }
            "mac" => {
                vmm::config::parse_mac(value).map_err(|e| format!("invalid net '{s}': {e}"))?;
                net.mac = Some(value.to_string());
            }
            "mtu" => match value.parse::<u16>() {
                Ok(m) if m >= MIN_MTU => net.mtu = Some(m),
                _ => {
                    return Err(format!(
                        "invalid net '{s}': mtu is {MIN_MTU} to 65535 bytes"
                    ))
                }
            },
            "queues" => match value.parse::<u16>() {
                Ok(q) if (1..=MAX_QUEUE_PAIRS).contains(&q) => net.queues = q,
                _ => {
                    return Err(format!(
                        "invalid net '{s}': queues is 1 to {MAX_QUEUE_PAIRS} queue pairs"
                    ))
                }
            },
            "forward" if user => {
                let f = Forward::parse(value).map_err(|e| format!("invalid net '{s}': {e}"))?;
                if let NetBackend::User { forwards } = &mut net.backend {
                    forwards.push(f);
                }
            }
            "forward" => {
                return Err(format!(
                    "invalid net '{s}': forward= is for user networking (--net user,forward=...)"
                ))
            }
            "id" if !value.is_empty() => net.id = Some(value.to_string()),
            _ => {
                return Err(format!(
                    "invalid net '{s}': unknown or empty key '{key}' (use {USE}[,{}])",
                    rate::KEYS
                ))
            }
        }
    }
    if net.backend == NetBackend::Tap(String::new()) {
        return Err(format!("invalid net '{s}': tap=NAME or user is required"));
    }
    if user && net.queues != 1 {
        return Err(format!(
            "invalid net '{s}': user networking has one queue pair"
        ));
    }
    net.rx_rate_limiter = rate.config();
    net.tx_rate_limiter = rate.config();
    Ok(net)
}

/// Parse `cid=N,uds=PATH` (also `guest_cid=` and `uds_path=`).
fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid" | "guest_cid", v)) => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("invalid vsock '{s}': cid is a number"))?;
                if n < 3 || n > u64::from(u32::MAX) {
                    return Err(format!(
                        "invalid vsock '{s}': cid {n} is reserved or too big (use 3 to 4294967295)"
                    ));
                }
                cid = Some(n);
            }
            Some(("uds" | "uds_path", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
            _ => {
                return Err(format!(
                    "invalid vsock '{s}': unknown or empty key in '{part}' (use cid=N,uds=PATH)"
                ))
            }
        }
    }
    match (cid, uds) {
        (Some(guest_cid), Some(uds_path)) => Ok(VsockConfig {
            guest_cid,
            uds_path,
            host_relay: false,
        }),
        _ => Err(format!(
            "invalid vsock '{s}': both cid=N and uds=PATH are needed"
        )),
    }
}

/// `--memory`: a size, options, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryArg {
    pub mib: Option<u64>,
    pub backing: MemoryBacking,
}

fn parse_memory(s: &str) -> Result<MemoryArg, String> {
    if !s.contains('=') {
        return Ok(MemoryArg {
            mib: Some(size::parse_mib(s)?),
            backing: MemoryBacking::default(),
        });
    }
    let mut m = MemoryArg {
        mib: None,
        backing: MemoryBacking::default(),
    };
    let on = |k: &str, v: &str| match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("invalid memory '{s}': {k} is on or off")),
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("size", v)) => m.mib = Some(size::parse_mib(v)?),
            Some(("hugepages", v)) => {
                m.backing.hugepages = Some(
                    v.parse()
                        .map_err(|e| format!("invalid memory '{s}': {e}"))?,
                )
            }
            Some(("mergeable", v)) => m.backing.mergeable = on("mergeable", v)?,
            Some(("prefault", v)) => m.backing.prefault = on("prefault", v)?,
            Some(("shared", v)) => m.backing.shared = on("shared", v)?,
            Some(("thp", v)) => m.backing.no_thp = !on("thp", v)?,
            _ => {
                return Err(format!(
                "invalid memory '{s}': unknown option '{part}' (use size=SIZE, hugepages=2M|1G, \
                     mergeable=on, prefault=on, shared=on, thp=off)"
            ))
            }
        }
    }
    Ok(m)
}

fn parse_balloon(s: &str) -> Result<BalloonSettings, String> {
    let mut b = BalloonSettings::default();
    let on_off = |k: &str, v: &str| match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("invalid balloon '{s}': {k} is on or off")),
    };
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("size" | "amount_mib", v)) => {
                let mib = size::parse_mib(v).map_err(|e| format!("invalid balloon '{s}': {e}"))?;
                b.amount_mib = u32::try_from(mib)
                    .map_err(|_| format!("invalid balloon '{s}': size {mib} MiB is too big"))?;
            }
            Some(("deflate_on_oom", v)) => b.deflate_on_oom = on_off("deflate_on_oom", v)?,
            Some(("free_page_reporting", v)) => {
                b.free_page_reporting = on_off("free_page_reporting", v)?
            }
            Some(("stats_interval" | "stats_polling_interval_s", v)) => {
                b.stats_interval_s = v.parse().map_err(|_| {
                    format!("invalid balloon '{s}': stats_interval is seconds (0 to 65535)")
                })?
            }
            Some(("free_page_hinting", _)) => {
                return Err(format!(
                    "invalid balloon '{s}': free page hinting is not built yet (issue 7); \
                     free_page_reporting=on gives free memory back"
                ))
            }
            _ => {
                return Err(format!(
                    "invalid balloon '{s}': unknown option '{part}' (use size=MIB, \
                     deflate_on_oom=on, stats_interval=SECS, free_page_reporting=on)"
                ))
            }
        }
    }
    Ok(b)
}

/// What `vireo run` was asked for: a VM configuration, possibly without a
/// kernel yet (then the default guest provides it).
pub struct RunRequest {
    pub config: VmConfig,
    pub use_default_guest: bool,
}

impl RunArgs {
    /// Merge the config file (if any) and the flags into one `VmConfig`.
    pub fn to_request(&self) -> Result<RunRequest, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?;
                serde_json::from_str::<VmConfig>(&text)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => VmConfig::new(PathBuf::new()),
        };
        if let Some(k) = &self.kernel {
            config.kernel = k.clone();
        }
        let use_default_guest = config.kernel.as_os_str().is_empty();
        if let Some(i) = &self.initrd {
            config.initrd = Some(i.clone());
        }
        if let Some(c) = &self.cmdline {
            config.cmdline = c.clone();
        }
        if let Some(n) = self.cpus {
            config.vcpus = n;
        }
        if let Some(m) = self.memory {
            if let Some(mib) = m.mib {
                config.memory_mib = mib;
            }
            config.memory_backing = m.backing;
            // The huge page pool is checked where the VM runs (in L1 on
            // the nested path, where the rig reserves it).
            config
                .memory_backing
                .check_shape(config.memory_mib)
                .map_err(|e| e.to_string())?;
        }
        if let Some(c) = &self.console {
            config.console = c.clone();
        }
        config.disks.extend(self.disks.iter().cloned());
        config.nets.extend(self.nets.iter().cloned());
        if let Some(t) = self.transport {
            config.transport = t;
        }
        if let Some(v) = &self.vsock {
            config.vsock = Some(v.clone());
        }
        if let Some(b) = &self.balloon {
            config.balloon = Some(*b);
        }
        if let Some(b) = &config.balloon {
            if u64::from(b.amount_mib) > config.memory_mib {
                return Err(format!(
                    "a balloon of {} MiB is larger than the VM's {} MiB of memory",
                    b.amount_mib, config.memory_mib
                ));
            }
        }
        match &self.rng {
            Some(RngChoice(rng)) => config.rng = rng.clone(),
            // The default guest gets entropy at boot unless told otherwise.
            None if use_default_guest && self.config.is_none() => {
                config.rng = Some(RngConfig::default())
            }
            None => {}
        }
        Ok(RunRequest {
            config,
            use_default_guest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(argv: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut full = vec!["vireo", "run"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full)?.command {
            Some(Command::Run(r)) => Ok(*r),
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_become_one_config() {
        let r = run_args(&[
            "--kernel",
            "/k",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--console",
            "file=/tmp/c",
            "--cmdline",
            "quiet",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let req = r.to_request().unwrap();
        assert!(!req.use_default_guest);
        assert_eq!(req.config.vcpus, 2);
        assert_eq!(req.config.memory_mib, 1024);
        assert_eq!(req.config.console, ConsoleConfig::File("/tmp/c".into()));
        assert_eq!(r.command, vec!["sh", "-c", "exit 3"]);
    }

    #[test]
    fn bad_values_are_rejected_with_the_value_named() {
        for (flag, val) in [
            ("--cpus", "0"),
            ("--cpus", "1000"),
            ("--memory", "12Q"),
            ("--console", "tty"),
        ] {
            let err = run_args(&[flag, val]).err().unwrap().to_string();
            assert!(err.contains(val), "{err}");
        }
    }

    #[test]
    fn transport_flag() {
        let r = run_args(&["--transport", "mmio"]).unwrap();
        assert_eq!(r.to_request().unwrap().config.transport, Transport::Mmio);
        let r = run_args(&[]).unwrap();
        assert_eq!(r.to_request().unwrap().config.transport, Transport::Pci);
        assert!(run_args(&["--transport", "isa"]).is_err());
    }

    #[test]
    fn disks_parse_and_repeat() {
        let r = run_args(&[
            "--disk",
            "path=/a.img",
            "--disk",
            "path=/b.img,readonly=on,id=data",
        ])
        .unwrap();
        let d = r.to_request().unwrap().config.disks;
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, PathBuf::from("/a.img"));
        assert!(!d[0].readonly);
        assert!(d[1].readonly);
        assert_eq!(d[1].id.as_deref(), Some("data"));
        for bad in [
            "/a.img",
            "path=",
            "readonly=on",
            "path=/a,readonly=maybe",
            "path=/a,size=3",
        ] {
            assert!(run_args(&["--disk", bad]).is_err(), "{bad}");
        }
        assert!(run_args(&["--disk", "path=/a,id=123456789012345678901"]).is_err());
    }

    #[test]
    fn disks_take_rate_limits() {
        let r = run_args(&["--disk", "path=/a.img,rate=8M,ops=50"]).unwrap();
        let d = &r.to_request().unwrap().config.disks[0];
        let limit = d.rate_limiter.unwrap();
        assert_eq!(limit.bandwidth.unwrap().size, 8 << 20);
        assert_eq!(limit.ops.unwrap().size, 50);
        let r = run_args(&["--disk", "path=/a.img"]).unwrap();
        assert_eq!(r.to_request().unwrap().config.disks[0].rate_limiter, None);
        for bad in ["path=/a,rate=0", "path=/a,rate=lots", "path=/a,ops=-1"] {
            let e = run_args(&["--disk", bad]).err().unwrap().to_string();
            assert!(e.contains("invalid disk"), "{bad}: {e}");
        }
    }

    #[test]
    fn rng_is_on_for_the_default_guest_and_takes_limits() {
        let req = run_args(&[]).unwrap().to_request().unwrap();
        assert_eq!(req.config.rng, Some(RngConfig::default()));
        let req = run_args(&["--rng", "off"]).unwrap().to_request().unwrap();
        assert_eq!(req.config.rng, None);
        let req = run_args(&["--kernel", "/k"]).unwrap().to_request().unwrap();
        assert_eq!(req.config.rng, None);
        let req = run_args(&["--kernel", "/k", "--rng", "on"])
            .unwrap()
            .to_request()
            .unwrap();
        assert_eq!(req.config.rng, Some(RngConfig::default()));
        let req = run_args(&["--rng", "rate=1K"])
            .unwrap()
            .to_request()
            .unwrap();
        let limit = req.config.rng.unwrap().rate_limiter.unwrap();
        assert_eq!(limit.bandwidth.unwrap().size, 1024);
        assert_eq!(limit.ops, None);
        for bad in ["maybe", "rate=0", "speed=3", "rate=1K,x"] {
            let e = run_args(&["--rng", bad]).err().unwrap().to_string();
            assert!(e.contains("rng"), "{bad}: {e}");
        }
    }

    #[test]
    fn net_flags_make_nics_in_order() {
        let req = run_args(&[
            "--net",
            "tap=tap0",
            "--net",
            "tap=vm-1,mac=02:00:00:00:00:07,mtu=9000,queues=2,rate=10M,id=uplink",
        ])
        .unwrap()
        .to_request()
        .unwrap();
        let n = &req.config.nets;
        assert_eq!(n.len(), 2);
        assert_eq!(n[0], NetConfig::new("tap0"));
        assert_eq!(n[1].mac.as_deref(), Some("02:00:00:00:00:07"));
        assert_eq!((n[1].mtu, n[1].queues), (Some(9000), 2));
        assert_eq!(n[1].id.as_deref(), Some("uplink"));
        assert_eq!(n[1].rx_rate_limiter, n[1].tx_rate_limiter);
        assert!(n[1].tx_rate_limiter.unwrap().bandwidth.is_some());
        let req = run_args(&[
            "--net",
            "user",
            "--net",
            "user,forward=8080:80,forward=udp:53:53,mtu=1500",
        ])
        .unwrap()
        .to_request()
        .unwrap();
        assert_eq!(req.config.nets[0], NetConfig::user(Vec::new()));
        let u = &req.config.nets[1];
        assert_eq!(u.mtu, Some(1500));
        assert_eq!(
            u.backend,
            vmm::config::NetBackend::User {
                forwards: vec![
                    vmm::config::Forward::parse("8080:80").unwrap(),
                    vmm::config::Forward::parse("udp:53:53").unwrap()
                ]
            }
        );
        for (bad, needle) in [
            ("mac=02:00:00:00:00:01", "tap=NAME or user is required"),
            ("user,tap=t", "no tap"),
            ("user,queues=2", "one queue pair"),
            ("user,forward=0:80", "not a port"),
            ("tap=t,forward=80", "for user networking"),
            ("tap=", "tap name"),
            ("tap=a-very-long-tap-name", "tap name"),
            ("tap=t,mac=01:00:00:00:00:01", "multicast"),
            ("tap=t,mac=zz", "hex pairs"),
            ("tap=t,mtu=10", "mtu"),
            ("tap=t,queues=0", "queues"),
            ("tap=t,queues=99", "queues"),
            ("tap=t,colour=red", "unknown"),
            ("tap=t,rate=0", "0 would block"),
            ("tap", "key=value"),
        ] {
            let e = run_args(&["--net", bad]).err().unwrap().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_flag_takes_a_size_or_options() {
        let r = run_args(&["--memory", "1G"]).unwrap().to_request().unwrap();
        assert_eq!(r.config.memory_mib, 1024);
        assert_eq!(r.config.memory_backing, MemoryBacking::default());
        let r = run_args(&["--memory", "size=256M,mergeable=on,prefault=on,thp=off"])
            .unwrap()
            .to_request()
            .unwrap();
        assert_eq!(r.config.memory_mib, 256);
        let b = r.config.memory_backing;
        assert!(b.mergeable && b.prefault && b.no_thp);
        let a = run_args(&["--memory", "hugepages=2M,shared=on"]).unwrap();
        assert_eq!(
            a.memory.unwrap().backing.hugepages,
            Some(HugePageSize::Size2M)
        );
        for (bad, needle) in [
            ("size=1G,hugepages=4M", "2M or 1G"),
            ("size=1G,colour=red", "unknown option"),
            ("size=1G,mergeable=yes", "on or off"),
            ("size=12Q", "invalid memory size"),
        ] {
            let e = run_args(&["--memory", bad]).err().unwrap().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        // Checked before anything boots: whole huge pages, KSM on private
        // memory only.
        let odd = run_args(&["--memory", "size=3,hugepages=2M"]).unwrap();
        assert!(odd.to_request().err().unwrap().contains("whole number"));
        let both = run_args(&["--memory", "size=64,mergeable=on,shared=on"]).unwrap();
        assert!(both.to_request().err().unwrap().contains("private"));
    }

    #[test]
    fn balloon_flag() {
        let r = run_args(&["--balloon"]).unwrap();
        assert_eq!(
            r.to_request().unwrap().config.balloon,
            Some(BalloonSettings::default())
        );
        let r = run_args(&[
            "--memory",
            "256",
            "--balloon",
            "size=64M,deflate_on_oom=on,stats_interval=2,free_page_reporting=on",
        ])
        .unwrap();
        let b = r.to_request().unwrap().config.balloon.unwrap();
        assert_eq!(
            b,
            BalloonSettings {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_interval_s: 2,
                free_page_reporting: true,
            }
        );
        assert_eq!(
            run_args(&["--vsock", "cid=3,uds=/v"]).unwrap().balloon,
            None
        );
        for (bad, needle) in [
            ("size=x", "invalid balloon"),
            ("deflate_on_oom=maybe", "on or off"),
            ("stats_interval=-1", "seconds"),
            ("colour=red", "unknown option"),
            ("free_page_hinting=on", "not built yet"),
        ] {
            let e = run_args(&["--balloon", bad]).err().unwrap().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let big = run_args(&["--memory", "128", "--balloon", "size=256"]).unwrap();
        let e = big.to_request().err().unwrap();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn vsock_flag() {
        let r = run_args(&["--vsock", "cid=7,uds=/tmp/v.sock"]).unwrap();
        let v = r.to_request().unwrap().config.vsock.unwrap();
        assert_eq!((v.guest_cid, v.uds_path), (7, PathBuf::from("/tmp/v.sock")));
        let r = run_args(&["--vsock", "uds_path=/v,guest_cid=3"]).unwrap();
        assert_eq!(r.to_request().unwrap().config.vsock.unwrap().guest_cid, 3);
        for (bad, needle) in [
            ("cid=2,uds=/v", "reserved"),
            ("cid=x,uds=/v", "number"),
            ("cid=5", "both"),
            ("cid=5,uds=", "empty"),
            ("cid=5,uds=/v,port=3", "unknown"),
        ] {
            let e = run_args(&["--vsock", bad]).err().unwrap().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn firecracker_flags_parse_without_a_subcommand() {
        let cli = Cli::try_parse_from([
            "vireo",
            "--api-sock",
            "/tmp/fc.sock",
            "--id",
            "vm7",
            "--level",
            "Debug",
            "--no-seccomp",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert!(cli.firecracker.requested());
        assert_eq!(
            cli.firecracker.api_sock,
            Some(PathBuf::from("/tmp/fc.sock"))
        );
        assert_eq!(cli.firecracker.id, "vm7");
        // A subcommand and Firecracker flags do not mix.
        assert!(Cli::try_parse_from(["vireo", "--api-sock", "/s", "run"]).is_err());
        let ctl = Cli::try_parse_from(["vireo", "ctl", "--api-sock", "/s", "pause"]).unwrap();
        match ctl.command {
            Some(Command::Ctl(c)) => {
                assert_eq!(c.action, CtlAction::Pause);
                let (m, p, b) = crate::ctl::request_of(&c.action);
                assert_eq!((m.as_str(), p.as_str()), ("PATCH", "/vm"));
                assert_eq!(b.as_deref(), Some(r#"{"state": "Paused"}"#));
            }
            _ => panic!("not ctl"),
        }
    }

    #[test]
    fn no_kernel_means_default_guest() {
        assert!(
            run_args(&[])
                .unwrap()
                .to_request()
                .unwrap()
                .use_default_guest
        );
    }
}
