//! Turn a `VmConfig` into a VM ready to start: validate the request, create
//! the KVM VM and its memory, attach the platform devices, load the kernel,
//! initrd and command line, describe the machine (ACPI, e820) and set up the
//! vCPUs. Nothing runs until `Vm::run`.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arch::regs::{self, EntryMode};
use devices::legacy::{AcpiPower, ExitPort, PvPanic, Serial, I8042};
use devices::{Bus, SharedDevice, VmEventSink};
use hypervisor::{Hypervisor, Vcpu};
use memory::layout;
use memory::GuestMemory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConsoleConfig, DiskConfig, VmConfig};
use crate::exit::ExitNotifier;
use crate::vcpu::Buses;
use crate::{console, Error};

/// Kernel arguments the platform itself needs: none today (ACPI describes
/// everything, including the PCI host bridge).
const PLATFORM_CMDLINE: &str = "";

/// Linux on x86 keeps at most 2048 bytes of command line (COMMAND_LINE_SIZE,
/// with the terminating NUL) and silently cuts the rest.
const MAX_CMDLINE_LEN: usize = 2047;

/// xAPIC ids are 8 bits and 0xff is broadcast.
pub const MAX_VCPUS: usize = 254;

/// A VM that is built and ready to run.
pub struct Vm {
    pub(crate) config: VmConfig,
    // Field order is drop order: vCPUs, devices (which hold the VM for MSI
    // routing and ioeventfds) and the VM go before guest memory.
    /// vCPUs not started yet (`lifecycle::start` moves them to threads).
    pub(crate) vcpus: Vec<Vcpu>,
    /// Running vCPU threads, joined when the VM ends.
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
    pub(crate) control: Arc<crate::vcpu::VcpuControl>,
    pub(crate) buses: Arc<Buses>,
    /// The virtio transports, for pause and resume.
    pub(crate) virtio: Vec<crate::transport::SharedTransport>,
    /// The guest's kvm-clock when it was paused.
    pub(crate) paused_clock: Option<hypervisor::kvm_clock_data>,
    pub(crate) _pci: crate::pci::PciSegment,
    pub(crate) vm: Arc<hypervisor::Vm>,
    pub(crate) _memory: GuestMemory,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) serial_input_ready: EventFd,
    pub(crate) exit: Arc<ExitNotifier>,
    /// The balloon's handle (target, size, statistics), if there is one.
    pub(crate) balloon: Option<devices::virtio::balloon::BalloonHandle>,
}

fn open_file(path: &Path, what: &'static str) -> Result<File, Error> {
    let err = |source| Error::Open {
        what,
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    File::open(path).map_err(err)
}

/// A disk must be a regular file or a block device, openable in its mode.
fn check_disk(disk: &DiskConfig) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| Error::Open {
        what: "disk",
        path: disk.path.clone(),
        source,
    };
    let meta = std::fs::metadata(&disk.path).map_err(err)?;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(err(std::io::Error::other(
            "not a regular file or block device",
        )));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.readonly)
        .open(&disk.path)
        .map_err(err)?;
    Ok(())
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io {
        what: "eventfd",
        source,
    })
}

fn check_vcpus(config: &VmConfig, max: usize) -> Result<(), Error> {
    let n = usize::from(config.vcpus);
    if n == 0 || n > max {
        return Err(Error::Vcpus { requested: n, max });
    }
    Ok(())
}

/// Check everything that can be checked without KVM: vCPU count, memory
/// size against this host, kernel and initrd files readable, and the kernel
/// in a format we boot. Used before building, and before handing a config
/// to another process (the nested rig), so bad input fails fast and clearly.
pub fn preflight(config: &VmConfig) -> Result<(), Error> {
    check_vcpus(config, MAX_VCPUS)?;
    let cmdline = config.full_cmdline(PLATFORM_CMDLINE);
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: MAX_CMDLINE_LEN,
        });
    }
    memory::check_size(config.memory_mib)?;
    let mut kernel = open_file(&config.kernel, "kernel")?;
    arch::boot::kernel_format(&mut kernel).map_err(|source| Error::Load {
        what: "kernel",
        path: config.kernel.clone(),
        source,
    })?;
    if let Some(p) = &config.initrd {
        open_file(p, "initrd")?;
    }
    for disk in &config.disks {
        check_disk(disk)?;
    }
    if let ConsoleConfig::File(path) = &config.console {
        console::serial_output(&ConsoleConfig::File(path.clone()))?;
    }
    for n in &config.nets {
        net_settings(n, [0x02, 0, 0, 0, 0, 0])?;
        check_net_backend(n)?;
    }
    if let Some(v) = &config.vsock {
        use devices::virtio::vsock::{Error as VsockError, MIN_GUEST_CID};
        if v.guest_cid < MIN_GUEST_CID || v.guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::BadCid(v.guest_cid).into());
        }
        if std::fs::symlink_metadata(&v.uds_path).is_ok() {
            return Err(VsockError::PathExists(v.uds_path.clone()).into());
        }
    }
    Ok(())
}

/// The device settings `n` asks for, checked; `mac` when it names none.
fn net_settings(
    n: &crate::config::NetConfig,
    mac: [u8; 6],
) -> Result<devices::virtio::net::NetSettings, Error> {
    use crate::config::NetBackend;
    use devices::virtio::net::{passt, tap};
    let bad = |reason: String| Error::NetConfig {
        tap: n.label().to_string(),
        reason,
    };
    let mut mtu = n.mtu;
    match &n.backend {
        NetBackend::Tap(name) if !tap::valid_name(name) => {
            return Err(
                devices::virtio::net::Error::from(tap::TapError::BadName(name.clone())).into(),
            );
        }
        NetBackend::Tap(_) => {}
        NetBackend::User { .. } => {
            if n.queues != 1 {
                return Err(bad(
                    "user networking has one queue pair (passt serves one)".into()
                ));
            }
            mtu = mtu.or(Some(passt::DEFAULT_MTU));
        }
    }
    let mac = match &n.mac {
        Some(m) => crate::config::parse_mac(m).map_err(bad)?,
        None => mac,
    };
    let settings = devices::virtio::net::NetSettings {
        tap: n.label().to_string(),
        mac,
        mtu,
        queue_pairs: n.queues,
        rx_rate_limiter: n.rx_rate_limiter.unwrap_or_default(),
        tx_rate_limiter: n.tx_rate_limiter.unwrap_or_default(),
    };
    settings.check()?;
    Ok(settings)
}

/// The host side a NIC names must be there: an existing tap (the nested
/// rig's inner taps, joined to its bridge, are made by the VM), or passt
/// installed for user networking.
fn check_net_backend(n: &crate::config::NetConfig) -> Result<(), Error> {
    use crate::config::NetBackend;
    let fail = |reason: String| {
        Err(Error::NetConfig {
            tap: n.label().to_string(),
            reason,
        })
    };
    match &n.backend {
        NetBackend::Tap(name) if n.l1_bridge.is_none() => {
            let c = std::ffi::CString::new(name.as_str()).unwrap_or_default();
            // SAFETY: a NUL-terminated name; the call only reads it.
            if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
                return fail(format!(
                    "no such interface in this network namespace; create it first, \
                     e.g. ip tuntap add {name} mode tap{}",
                    if n.queues > 1 { " multi_queue" } else { "" }
                ));
            }
        }
        NetBackend::User { .. } if !on_path("passt") => {
            return fail(
                "user networking needs passt, which is not installed (Debian: apt install passt)"
                    .into(),
            );
        }
        _ => {}
    }
    Ok(())
}

/// Whether `program` is an executable file in a PATH directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx).
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most 5 bytes into the slice it is given.
    let n = unsafe { libc::getrandom(mac[1..].as_mut_ptr().cast(), 5, 0) };
    if n != 5 {
        // No entropy (never on Linux after boot): the time is unique enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        mac[1..].copy_from_slice(&t.to_le_bytes()[..5]);
    }
    mac[0] = 0x02;
    mac
}

/// Build the VM `config` describes.
pub fn build(config: &VmConfig) -> Result<Vm, Error> {
    let mut kernel_file = open_file(&config.kernel, "kernel")?;
    let mut initrd_file = match &config.initrd {
        Some(p) => Some(open_file(p, "initrd")?),
        None => None,
    };
    preflight(config)?;
    let hv = Hypervisor::new()?;
    check_vcpus(config, hv.max_vcpus().min(MAX_VCPUS))?;

    let mut vm = hv.create_vm()?;
    let mem = memory::create_guest_memory_with(config.memory_mib, &config.memory_backing)?;
    for region in mem.iter() {
        // SAFETY: the regions belong to `mem`, which `Vm` keeps alive for
        // longer than the KVM VM (see the field order of `Vm`).
        unsafe { vm.map_memory(region.start_addr().0, region.len(), region.as_ptr() as u64)? };
    }
    vm.setup_platform(layout::KVM_TSS_START)?;
    // Shared from here on: the PCI devices' MSI routing and ioeventfds use it.
    let vm = Arc::new(vm);

    let exit = Arc::new(ExitNotifier::new().map_err(|source| Error::Io {
        what: "eventfd",
        source,
    })?);
    // Device threads (virtio workers) report panics here; one VM per
    // process, so the process-wide sink is this VM's (devices::thread).
    devices::thread::set_panic_sink(exit.clone());
    let sink: Arc<dyn VmEventSink> = exit.clone();
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, layout::COM1_IRQ)?;
    let serial_input_ready = eventfd()?;
    let serial = Arc::new(Mutex::new(Serial::new(
        serial_irq,
        serial_input_ready.try_clone().map_err(|source| Error::Io {
            what: "eventfd",
            source,
        })?,
        console::serial_output(&config.console)?,
    )));
    let kbd_irq = eventfd()?;
    vm.register_irqfd(&kbd_irq, layout::I8042_IRQ)?;
    let i8042 = Arc::new(Mutex::new(I8042::with_irq(sink.clone(), kbd_irq)));
    let mut pio = Bus::new();
    let platform: [(u16, u64, SharedDevice); 5] = [
        (layout::COM1_PORT, 8, serial.clone()),
        (layout::I8042_PORT, 5, i8042.clone()),
        (
            layout::ACPI_SLEEP_CONTROL_PORT,
            3,
            Arc::new(Mutex::new(AcpiPower::new(sink.clone()))),
        ),
        (
            layout::PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanic::new(sink.clone()))),
        ),
        (
            layout::EXIT_PORT,
            1,
            Arc::new(Mutex::new(ExitPort::new(sink))),
        ),
    ];
    for (port, len, dev) in platform {
        pio.insert(u64::from(port), len, dev)?;
    }
    // Every VM has a PCI segment (host bridge, ECAM, BAR windows), even
    // with no devices on it: one platform shape for every guest.
    let mut mmio = Bus::new();
    let mut pci = crate::pci::PciSegment::new(vm.clone(), config.memory_mib)?;
    pci.attach(&mut pio, &mut mmio)?;
    let mut virtio = Vec::new();
    let transport = config.virtio_transport();
    let mut virtio_mmio = crate::transport::MmioDevices::new(vm.clone());
    // The guest sees the disks in order (vda, vdb, ...), then the rest.
    let mut wanted: Vec<Box<dyn devices::virtio::VirtioDevice>> = Vec::new();
    for d in &config.disks {
        // One queue per vCPU.
        let mut blk = devices::virtio::block::Block::new(
            &d.path,
            d.readonly,
            d.id.clone(),
            u16::from(config.vcpus),
        )?;
        if let Some(limit) = d.rate_limiter {
            blk.set_rate_limit(limit);
        }
        wanted.push(Box::new(blk));
    }
    for n in &config.nets {
        use crate::config::NetBackend;
        use devices::virtio::net::Net;
        let settings = net_settings(n, random_mac())?;
        let dev = match &n.backend {
            NetBackend::Tap(name) => {
                let dev = Net::with_tap(settings)?;
                if let Some(bridge) = &n.l1_bridge {
                    devices::virtio::net::tap::join_bridge(name, bridge, n.mtu).map_err(
                        |source| Error::Io {
                            what: "joining the tap to the nested rig's bridge",
                            source,
                        },
                    )?;
                }
                dev
            }
            NetBackend::User { forwards } => Net::with_passt(settings, forwards)?,
        };
        wanted.push(Box::new(dev));
    }
    if let Some(rng) = &config.rng {
        let limit = rng.rate_limiter.unwrap_or_default();
        wanted.push(Box::new(devices::virtio::rng::Rng::new(limit)));
    }
    if let Some(v) = &config.vsock {
        let mut dev = devices::virtio::vsock::Vsock::new(v.guest_cid, &v.uds_path)?;
        if v.host_relay {
            use devices::virtio::vsock::relay::InnerEnd;
            let end = InnerEnd::open_port()
                .and_then(|port| InnerEnd::start(port, &v.uds_path))
                .map_err(|source| Error::Io {
                    what: "vsock relay port of the nested rig",
                    source,
                })?;
            dev = dev.with_connector(end);
        }
        wanted.push(Box::new(dev));
    }
    let mut balloon = None;
    if let Some(b) = &config.balloon {
        let discard = config.memory_backing.discard();
        let dev = devices::virtio::balloon::Balloon::with_discard(*b, config.memory_mib, discard)
            .map_err(Error::Balloon)?;
        balloon = Some(dev.handle());
        wanted.push(Box::new(dev));
    }
    for device in wanted {
        virtio.push(crate::transport::add_virtio(
            transport,
            device,
            &mem,
            &mut pci,
            &mut virtio_mmio,
            &mut mmio,
        )?);
    }

    let kernel = arch::boot::load_kernel(&mem, &mut kernel_file).map_err(|source| Error::Load {
        what: "kernel",
        path: config.kernel.clone(),
        source,
    })?;
    let initrd = match (&mut initrd_file, &config.initrd) {
        (Some(f), Some(path)) => Some(arch::boot::load_initrd(&mem, f, &kernel).map_err(
            |source| Error::Load {
                what: "initrd",
                path: path.clone(),
                source,
            },
        )?),
        _ => None,
    };
    let cmdline_len = arch::boot::load_kernel_cmdline(&mem, &config.full_cmdline(PLATFORM_CMDLINE))
        .map_err(|source| Error::Load {
            what: "kernel command line",
            path: Default::default(),
            source,
        })?;
    let pci_host = arch::acpi::PciHost::for_memory(config.memory_mib);
    let platform = arch::acpi::Platform {
        pci: Some(&pci_host),
        virtio_mmio: &virtio_mmio.described,
    };
    let rsdp = arch::acpi::write_acpi_tables_for(&mem, config.vcpus, &platform)?;
    match kernel.mode {
        EntryMode::Linux64 => {
            arch::boot::write_boot_params(&mem, &kernel, initrd, cmdline_len, rsdp)?
        }
        EntryMode::Pvh => arch::boot::write_pvh_info(&mem, initrd, rsdp)?,
    }

    let base_cpuid = hv.supported_cpuid()?;
    let msrs = arch::msr::boot_msrs()?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(u64::from(id))?;
        let mut cpuid = base_cpuid.clone();
        arch::cpuid::configure(&mut cpuid, id, config.vcpus);
        vcpu.set_cpuid(&cpuid)?;
        vcpu.set_msrs(&msrs)?;
        regs::setup_fpu(&vcpu)?;
        regs::setup_lapic(&vcpu)?;
        if id == 0 {
            regs::setup_boot_vcpu(&vcpu, &mem, kernel.entry, kernel.mode)?;
        }
        vcpus.push(vcpu);
    }

    Ok(Vm {
        config: config.clone(),
        vcpus,
        threads: Vec::new(),
        control: Arc::default(),
        buses: Arc::new(Buses { pio, mmio }),
        virtio,
        paused_clock: None,
        _pci: pci,
        vm,
        _memory: mem,
        serial,
        i8042,
        serial_input_ready,
        exit,
        balloon,
    })
}
