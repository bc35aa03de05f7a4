//! `vireo run` inside the rig: copy this vireo binary, its libraries and the
//! guest's kernel and initrd into L1, and run
//! `vireo run --config /rig/vm.json --emulate=never` there with the guest
//! console on L1's ttyS0 and its stderr on the control channel.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use devices::virtio::vsock::relay;

use vmm::{ConsoleConfig, VmConfig};

use crate::qemu::{l1_disk_path, l1_nic_mac, run_l1, L1Drive, L1Nic, L1NicBackend, L1Run, Ttys0};
use crate::{add_executable, probe_host_kvm, HostKvm, RigError};
use devices::virtio::net::passt;
use vmm::config::NetBackend;

/// L1 paths of what a nested run copies in.
const L1_VIREO: &str = "/rig/bin/vireo";
const L1_KERNEL: &str = "/rig/kernel";
const L1_INITRD: &str = "/rig/initrd";
const L1_CONFIG: &str = "/rig/vm.json";
/// The inner vsock device's socket in L1 (the relay connects host programs
/// to it).
const L1_VSOCK: &str = "/rig/vsock.sock";

/// Boots L1 and runs `config` there with this process's own binary (which
/// must be `vireo`); returns the inner vireo's exit code. `interactive`
/// connects the guest console to our terminal both ways.
pub fn run_nested(config: &VmConfig, interactive: bool) -> Result<i32, RigError> {
    let exe = std::env::current_exe().map_err(|e| RigError::io(Path::new("/proc/self/exe"), e))?;
    run_nested_with_binary(config, interactive, &exe)
}

/// [`run_nested_with_binary`] driven through the API: the inner vireo
/// serves API requests relayed over `control` (a listening Unix socket
/// that becomes L1's ttyS2; see `vireo --control-tty`) instead of a
/// terminal. The console is never interactive.
pub fn run_nested_api(config: &VmConfig, control: &Path, id: &str) -> Result<i32, RigError> {
    let exe = std::env::current_exe().map_err(|e| RigError::io(Path::new("/proc/self/exe"), e))?;
    nested(config, false, &exe, Some((control, id)))
}

/// [`run_nested`] with an explicit vireo binary (for callers that are not
/// the vireo binary themselves, such as tests and benchmarks).
pub fn run_nested_with_binary(
    config: &VmConfig,
    interactive: bool,
    vireo: &Path,
) -> Result<i32, RigError> {
    nested(config, interactive, vireo, None)
}

fn nested(
    config: &VmConfig,
    interactive: bool,
    vireo: &Path,
    control: Option<(&Path, &str)>,
) -> Result<i32, RigError> {
    match probe_host_kvm() {
        HostKvm::Unusable(why) => eprintln!(
            "vireo: /dev/kvm here cannot run stock kernels ({why}); running inside the \
             nested emulation rig (QEMU TCG + KVM), expect slow boots"
        ),
        HostKvm::Usable => eprintln!(
            "vireo: running inside the nested emulation rig (QEMU TCG + KVM) as asked, \
             expect slow boots"
        ),
    }
    let tmp = guest::cache::temp_dir_for(&std::env::temp_dir().join("vireo-nested"))?;
    let _cleanup = guest::cache::RemoveOnDrop(Some(tmp.clone()));

    let (inner, mut files, drives) = l1_config(config)?;
    let nics = l1_nics(config, &tmp);
    // User networking: passt runs here, on the host, and L1's NIC connects
    // to it; the guest gets its DHCP through L1's bridge.
    let mut _passts = Vec::new();
    for (nic, net) in nics.iter().zip(&config.nets) {
        if let (L1NicBackend::Stream(sock), NetBackend::User { forwards }) =
            (&nic.backend, &net.backend)
        {
            _passts.push(
                passt::start_listening(forwards, sock)
                    .map_err(|e| RigError::Config(e.to_string()))?,
            );
        }
    }
    // vsock: the user's socket is served here, on the host, and relayed to
    // the inner device over a virtio-serial port of L1.
    let _vsock = match &config.vsock {
        Some(v) => Some(VsockHost::start(&v.uds_path, &tmp)?),
        None => None,
    };
    let json = serde_json::to_vec_pretty(&inner).map_err(|e| RigError::Config(e.to_string()))?;
    let json_path = tmp.join("vm.json");
    std::fs::write(&json_path, json).map_err(|e| RigError::io(&json_path, e))?;
    files.push((json_path, L1_CONFIG.to_string()));
    add_executable(&mut files, vireo, L1_VIREO)?;

    let console = match (&config.console, interactive) {
        (ConsoleConfig::Stdio, true) => Ttys0::Interactive,
        (ConsoleConfig::Stdio, false) => Ttys0::Forward,
        (ConsoleConfig::Off, _) => Ttys0::Off,
        (ConsoleConfig::File(p), _) => Ttys0::File(p.clone()),
    };
    run_l1(&L1Run {
        script: format!(
            "{}{}{}",
            bridge_script(&nics),
            huge_page_script(config),
            run_script(interactive, control.map(|(_, id)| id))
        ),
        files,
        timeout: None,
        console,
        guest_memory_mib: config.memory_mib,
        cpus: u32::from(config.vcpus),
        forward_log: true,
        drives,
        control: control.map(|(sock, _)| sock.to_path_buf()),
        vsock_channel: _vsock.as_ref().map(|v| v.channel.clone()),
        nics,
    })
    .map(|o| o.exit_code)
}

/// The host side of a nested run's vsock device: the user's socket, and
/// the channel QEMU connects to as L1's relay port. Removes the user's
/// socket when the run ends (as the device does on a direct run).
struct VsockHost {
    uds_path: PathBuf,
    channel: PathBuf,
}

impl VsockHost {
    fn start(uds_path: &Path, tmp: &Path) -> Result<VsockHost, RigError> {
        if std::fs::symlink_metadata(uds_path).is_ok() {
            return Err(devices::virtio::vsock::Error::PathExists(uds_path.to_path_buf()).into());
        }
        let listener =
            UnixListener::bind(uds_path).map_err(|source| devices::virtio::vsock::Error::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        let host = VsockHost {
            uds_path: uds_path.to_path_buf(),
            channel: tmp.join("vsock-relay.sock"),
        };
        let chan = UnixListener::bind(&host.channel).map_err(|e| RigError::io(&host.channel, e))?;
        let uds = uds_path.to_path_buf();
        std::thread::Builder::new()
            .name("vireo-vsock-rig".into())
            .spawn(move || {
                // QEMU connects once, at start.
                if let Ok((stream, _)) = chan.accept() {
                    let file = std::fs::File::from(std::os::fd::OwnedFd::from(stream));
                    if let Err(e) = relay::serve_host(listener, &uds, file) {
                        eprintln!("vireo: vsock relay: {e}");
                    }
                }
            })
            .map_err(|e| RigError::io(&host.channel, e))?;
        Ok(host)
    }
}

impl Drop for VsockHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// What a nested run hands L1.
type L1Inputs = (VmConfig, Vec<(PathBuf, String)>, Vec<L1Drive>);

/// The config as seen inside L1 (paths rewritten, console on stdio), the
/// files it needs there, and the disks, which reach L1 as virtio-blk drives
/// (so guest writes land in the host files) rather than as copies.
fn l1_config(config: &VmConfig) -> Result<L1Inputs, RigError> {
    let mut inner = config.clone();
    let mut files = Vec::new();
    let mut drives = Vec::new();
    for (n, disk) in inner.disks.iter_mut().enumerate() {
        check_disk(&disk.path)?;
        drives.push(L1Drive {
            host: disk.path.clone(),
            readonly: disk.readonly,
        });
        disk.path = PathBuf::from(l1_disk_path(n));
    }
    check_readable(&config.kernel, "kernel")?;
    files.push((config.kernel.clone(), L1_KERNEL.to_string()));
    inner.kernel = PathBuf::from(L1_KERNEL);
    if let Some(initrd) = &config.initrd {
        check_readable(initrd, "initrd")?;
        files.push((initrd.clone(), L1_INITRD.to_string()));
        inner.initrd = Some(PathBuf::from(L1_INITRD));
    }
    inner.console = ConsoleConfig::Stdio;
    if let Some(v) = &mut inner.vsock {
        v.uds_path = PathBuf::from(L1_VSOCK);
        v.host_relay = true;
    }
    // Each NIC's host tap is one of L1's NICs, bridged in L1 with a tap
    // the inner vireo makes; the guest keeps its MAC, MTU and queues.
    for (n, net) in inner.nets.iter_mut().enumerate() {
        if matches!(net.backend, NetBackend::User { .. }) {
            net.mtu = Some(l1_mtu(net));
        }
        net.backend = NetBackend::Tap(l1_tap(n));
        net.l1_bridge = Some(l1_bridge(n));
    }
    Ok((inner, files, drives))
}

/// The tap the inner vireo makes for NIC `n`, and the bridge in L1 that
/// joins it to L1's NIC `n`.
fn l1_tap(n: usize) -> String {
    format!("vireo-tap{n}")
}

fn l1_bridge(n: usize) -> String {
    format!("vireo-br{n}")
}

/// The MTU a user-networking NIC has on every hop of the rig: the one
/// asked for, else passt's.
fn l1_mtu(net: &vmm::config::NetConfig) -> u16 {
    net.mtu.unwrap_or(passt::DEFAULT_MTU)
}

/// L1's NICs: one per guest NIC, on the host tap the user named, or on
/// the socket of a passt started for it (in `tmp`).
fn l1_nics(config: &VmConfig, tmp: &Path) -> Vec<L1Nic> {
    config
        .nets
        .iter()
        .enumerate()
        .map(|(n, net)| match &net.backend {
            NetBackend::Tap(tap) => L1Nic {
                backend: L1NicBackend::Tap(tap.clone()),
                queues: net.queues,
                mac: l1_nic_mac(n),
                mtu: net.mtu,
            },
            // Not in `tmp`: passt drops root for nobody, who cannot enter
            // that private directory.
            NetBackend::User { .. } => L1Nic {
                backend: L1NicBackend::Stream(tmp.with_file_name(format!(
                    "{}-passt-{n}.sock",
                    tmp.file_name().and_then(|f| f.to_str()).unwrap_or("vireo")
                ))),
                queues: 1,
                mac: l1_nic_mac(n),
                mtu: Some(l1_mtu(net)),
            },
        })
        .collect()
}

/// Shell lines that make bridge `vireo-brN` in L1 and put L1's NIC N in
/// it (found by its MAC), before the inner vireo adds its tap.
fn bridge_script(nics: &[L1Nic]) -> String {
    let mut s = String::new();
    for (n, nic) in nics.iter().enumerate() {
        let mtu = nic
            .mtu
            .map(|m| format!(" && ip link set \"$ifc\" mtu {m}"))
            .unwrap_or_default();
        let br = l1_bridge(n);
        s.push_str(&format!(
            "ifc=; for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {mac} ] && ifc=${{d##*/}}; done\n\
             [ -n \"$ifc\" ]{mtu} && brctl addbr {br} && brctl addif {br} \"$ifc\" \
             && ip link set \"$ifc\" up && ip link set {br} up \
             || echo \"vireo-rig: cannot bridge L1 NIC {n} ({mac})\" >&2\n",
            mac = nic.mac,
        ));
    }
    s
}

fn check_disk(path: &Path) -> Result<(), RigError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| RigError::io(path, e))?;
    let t = meta.file_type();
    if t.is_file() || t.is_block_device() {
        Ok(())
    } else {
        Err(RigError::io(
            path,
            std::io::Error::other("a disk must be a regular file or a block device"),
        ))
    }
}

fn check_readable(path: &Path, what: &str) -> Result<(), RigError> {
    std::fs::File::open(path)
        .and_then(|f| f.metadata())
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "the {what} is not a regular file"
                )))
            }
        })
        .map_err(|e| RigError::io(path, e))
}

/// Reserve in L1 the huge pages the guest's memory asks for (L1 is sized
/// for the guest's memory, so they fit); the inner vireo checks the pool
/// and says clearly if L1 could not reserve them.
fn huge_page_script(config: &VmConfig) -> String {
    let Some(size) = config.memory_backing.hugepages else {
        return String::new();
    };
    let pages = (config.memory_mib << 20) / size.bytes();
    format!("echo {pages} > {}/nr_hugepages\n", size.sysfs_dir())
}

/// The tty the API relay reaches L1 on (the third serial port).
pub const L1_CONTROL_TTY: &str = "/dev/ttyS2";

/// `/rig/run.sh` for a nested `vireo run`, or with `relay` (the instance
/// id) for a VM driven through the API relay.
fn run_script(interactive: bool, relay: Option<&str>) -> String {
    let vireo = if let Some(id) = relay {
        format!(
            "{L1_VIREO} --no-api --vm-config {L1_CONFIG} --control-tty {L1_CONTROL_TTY} \
             --emulate=never --id {}",
            guest::shell_quote(id)
        )
    } else {
        format!("{L1_VIREO} run --config {L1_CONFIG} --emulate=never")
    };
    if interactive {
        // A new session with ttyS0 as controlling terminal, so the inner
        // vireo can put it in raw mode and pass every key to the guest.
        format!("exec setsid -c {vireo} <>/dev/ttyS0 >&0 2>/dev/ttyS1\n")
    } else {
        format!("exec {vireo} </dev/null >/dev/ttyS0 2>/dev/ttyS1\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_paths_are_rewritten_for_l1() {
        let dir = std::env::temp_dir().join(format!("vireo-nested-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("k");
        std::fs::write(&k, b"kernel").unwrap();
        let mut c = VmConfig::new(k.clone());
        c.console = ConsoleConfig::File("/tmp/out".into());
        c.vcpus = 2;
        let (inner, files, drives) = l1_config(&c).unwrap();
        assert_eq!(inner.kernel, PathBuf::from("/rig/kernel"));
        assert_eq!(inner.initrd, None);
        assert_eq!(inner.console, ConsoleConfig::Stdio);
        assert_eq!(inner.vcpus, 2);
        assert_eq!(files, [(k.clone(), "/rig/kernel".to_string())]);
        assert!(drives.is_empty());

        c.disks = vec![
            vmm::config::DiskConfig {
                readonly: true,
                id: Some("x".into()),
                ..vmm::config::DiskConfig::new(k.clone())
            },
            vmm::config::DiskConfig::new(k.clone()),
        ];
        let (inner, _, drives) = l1_config(&c).unwrap();
        assert_eq!(inner.disks[0].path, PathBuf::from("/rig/disk-0"));
        assert_eq!(inner.disks[1].path, PathBuf::from("/rig/disk-1"));
        assert_eq!(inner.disks[0].id.as_deref(), Some("x"));
        assert!(drives[0].readonly && !drives[1].readonly);
        assert_eq!(drives[1].host, k);
        c.disks[1].path = dir.clone();
        assert!(l1_config(&c).is_err(), "a directory is not a disk");
        c.disks.clear();

        c.nets = vec![vmm::config::NetConfig::new("hosttap"), {
            let mut n = vmm::config::NetConfig::new("mq0");
            n.queues = 2;
            n.mtu = Some(4000);
            n
        }];
        let (inner, _, _) = l1_config(&c).unwrap();
        assert_eq!(inner.nets[0].backend, NetBackend::Tap("vireo-tap0".into()));
        assert_eq!(inner.nets[1].l1_bridge.as_deref(), Some("vireo-br1"));
        assert_eq!(inner.nets[1].queues, 2);
        let nics = l1_nics(&c, &dir);
        assert_eq!(nics[1].backend, L1NicBackend::Tap("mq0".into()));
        assert_eq!((nics[1].queues, nics[1].mtu), (2, Some(4000)));
        let script = bridge_script(&nics);
        assert!(script.contains("brctl addbr vireo-br1"), "{script}");
        assert!(script.contains("mtu 4000"), "{script}");
        assert!(script.contains(&l1_nic_mac(0)), "{script}");
        c.nets = vec![vmm::config::NetConfig::user(Vec::new())];
        let (inner, _, _) = l1_config(&c).unwrap();
        assert_eq!(inner.nets[0].backend, NetBackend::Tap("vireo-tap0".into()));
        assert_eq!(inner.nets[0].mtu, Some(passt::DEFAULT_MTU));
        let nics = l1_nics(&c, &dir);
        // Outside the private dir: passt runs as nobody.
        let L1NicBackend::Stream(sock) = &nics[0].backend else {
            panic!("{nics:?}");
        };
        assert!(!sock.starts_with(&dir), "{sock:?} is in the private dir");
        assert_eq!(nics[0].mtu, Some(passt::DEFAULT_MTU));
        c.nets.clear();

        c.initrd = Some(dir.join("missing"));
        let err = l1_config(&c).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_script_routes_streams() {
        assert!(run_script(false, None).contains("</dev/null >/dev/ttyS0 2>/dev/ttyS1"));
        assert!(run_script(false, Some("vm 1")).contains("--control-tty /dev/ttyS2"));
        assert!(run_script(false, Some("vm 1")).contains("--id 'vm 1'"));
        assert!(run_script(true, None).contains("setsid -c"));
        let mut c = VmConfig::new("/k".into());
        assert_eq!(huge_page_script(&c), "");
        c.memory_mib = 256;
        c.memory_backing.hugepages = Some(memory::backing::HugePageSize::Size2M);
        assert_eq!(
            huge_page_script(&c),
            "echo 128 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages\n"
        );
    }
}
