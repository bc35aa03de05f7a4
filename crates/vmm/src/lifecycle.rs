//! A built VM's life after `build`: start the vCPU threads, pause and
//! resume the whole machine, and stop and join the threads at the end.
//!
//! Pause order: vCPUs first (so no new doorbells or config accesses
//! arrive), then each virtio device finishes its I/O in flight and parks;
//! last the guest's kvm-clock is read. Resume is the reverse: the clock is
//! set back to the value it had, so the guest sees no time pass while it
//! was paused (as QEMU does), devices serve again, vCPUs are released.

use std::time::Duration;

use devices::rate_limiter::RateLimiterConfig;
use devices::virtio::device_type;

use crate::builder::Vm;
use crate::{vcpu, Error};

/// How long `pause` and the final stop wait for vCPU threads to react to
/// a kick (they need microseconds; a thread stuck in a device's handler
/// is a bug, reported rather than waited on for ever).
const VCPU_REACTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the VM is in its life, as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

impl Vm {
    /// Start one thread per vCPU (once; later calls do nothing).
    pub fn start(&mut self) -> Result<(), Error> {
        hypervisor::kick::install_kick_handler().map_err(|source| Error::Io {
            what: "install the vCPU kick signal handler",
            source,
        })?;
        for (id, v) in self.vcpus.drain(..).enumerate() {
            let t = vcpu::spawn(
                id as u8,
                v,
                self.buses.clone(),
                self.exit.clone(),
                self.control.clone(),
            )
            .map_err(|source| Error::Io {
                what: "spawn vCPU thread",
                source,
            })?;
            self.threads.push(t);
        }
        Ok(())
    }

    pub fn state(&self) -> RunState {
        if self.control.is_paused() {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    /// Park every vCPU and device; the guest's clock stops. Pausing a
    /// paused VM does nothing.
    pub fn pause(&mut self) -> Result<(), Error> {
        if self.state() == RunState::Paused {
            return Ok(());
        }
        if !self.control.pause(&self.threads, VCPU_REACTION_TIMEOUT) {
            self.control.resume();
            return Err(Error::Io {
                what: "pause",
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "a vCPU thread did not stop in time",
                ),
            });
        }
        for t in &self.virtio {
            devices::bus::lock(t).device_mut().pause();
        }
        // A VM whose clock cannot be read still pauses; its clock just
        // runs on across the pause.
        self.paused_clock = self.vm.clock().ok();
        Ok(())
    }

    /// Undo `pause`. Resuming a running VM does nothing.
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.state() == RunState::Running {
            return Ok(());
        }
        if let Some(clock) = &self.paused_clock {
            self.vm.set_clock(clock)?;
            self.paused_clock = None;
        }
        for t in &self.virtio {
            devices::bus::lock(t).device_mut().resume();
        }
        self.control.resume();
        Ok(())
    }

    /// One metrics line for this VM (see `observe::metrics`): its state
    /// and each device's counters: disks named `block_<id>` after the drive
    /// id, NICs `net_<iface_id>` (`net_eth<n>` for `vireo run` NICs), the
    /// entropy device `entropy` and vsock `vsock`, as Firecracker
    /// names them.
    pub fn metrics(&self) -> serde_json::Value {
        let state = match self.state() {
            RunState::Running => "Running",
            RunState::Paused => "Paused",
        };
        let devices: Vec<(String, Vec<(&'static str, u64)>)> = self
            .virtio
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let transport = devices::bus::lock(t);
                let device = transport.device();
                let disk = self.config.disks.get(i);
                // NICs follow the disks, in order.
                let nic = i.checked_sub(self.config.disks.len());
                let name = match (device.device_type(), disk) {
                    (device_type::RNG, _) => "entropy".to_string(),
                    (device_type::BALLOON, _) => "balloon".to_string(),
                    (device_type::VSOCK, _) => "vsock".to_string(),
                    (device_type::NET, _) => {
                        let n = nic.unwrap_or(0);
                        match self.config.nets.get(n).and_then(|c| c.id.as_deref()) {
                            Some(id) => format!("net_{id}"),
                            None => format!("net_eth{n}"),
                        }
                    }
                    (_, Some(d)) => match d.drive_id.as_deref().or(d.id.as_deref()) {
                        Some(id) => format!("block_{id}"),
                        None => format!("block_{i}"),
                    },
                    _ => format!("virtio_{i}"),
                };
                (name, device.counters())
            })
            .collect();
        crate::observe::metrics::snapshot(state, self.vcpu_count(), &devices)
    }

    fn vcpu_count(&self) -> usize {
        usize::from(self.config.vcpus)
    }

    /// Serve the disk whose id is `id` from `path` from now on (Firecracker's
    /// `PATCH /drives`), and tell the guest its capacity may have changed.
    pub fn replace_drive(&mut self, id: &str, path: &std::path::Path) -> Result<(), String> {
        let index = self
            .config
            .disks
            .iter()
            .position(|d| d.drive_id.as_deref() == Some(id))
            .ok_or_else(|| format!("drive {id:?} does not exist"))?;
        let transport = self
            .virtio
            .get(index)
            .ok_or_else(|| format!("drive {id:?} has no device"))?;
        let mut t = devices::bus::lock(transport);
        t.device_mut().replace_backing(path)?;
        let _ = t.signal_config_change();
        drop(t);
        self.config.disks[index].path = path.to_path_buf();
        Ok(())
    }

    /// New receive and transmit rate limiters for network interface `id`
    /// while the VM runs, each patched over the current one (a bucket the
    /// patch leaves out stays); returns the limiters now in force.
    pub fn patch_net_rate_limiters(
        &mut self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(RateLimiterConfig, RateLimiterConfig), String> {
        let index = self
            .config
            .nets
            .iter()
            .position(|n| n.id.as_deref() == Some(id))
            .ok_or_else(|| format!("network interface {id:?} does not exist"))?;
        // The devices are the disks, then the NICs (see the builder).
        let transport = self
            .virtio
            .get(self.config.disks.len() + index)
            .ok_or_else(|| format!("network interface {id:?} has no device"))?;
        let now = devices::bus::lock(transport)
            .device_mut()
            .patch_rate_limiters(rx, tx)?;
        let net = &mut self.config.nets[index];
        net.rx_rate_limiter = Some(now.0);
        net.tx_rate_limiter = Some(now.1);
        Ok(now)
    }

    /// Where this VM's memory is on the host, measured now.
    pub fn memory_usage(&self) -> std::io::Result<crate::memory_usage::Usage> {
        crate::memory_usage::measure(&self._memory)
    }

    /// The balloon's handle, if the VM has a balloon.
    pub fn balloon(&self) -> Option<&devices::virtio::balloon::BalloonHandle> {
        self.balloon.as_ref()
    }

    /// Press Ctrl-Alt-Del on the guest's keyboard (a stock guest reboots,
    /// which ends the VM as any guest reset does).
    pub fn send_ctrl_alt_del(&self) {
        devices::bus::lock(&self.i8042).send_ctrl_alt_del();
    }

    /// End of the VM: make every vCPU thread leave its loop and join them.
    /// A thread that does not react in time is left behind (the process
    /// is about to exit) rather than waited on.
    pub(crate) fn stop_vcpus(&mut self) {
        if self.control.stop(&self.threads, VCPU_REACTION_TIMEOUT) {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        } else {
            eprintln!("vireo: a vCPU thread did not stop; not waiting for it");
            self.threads.clear();
        }
    }
}
