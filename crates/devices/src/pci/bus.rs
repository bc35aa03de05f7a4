//! PCI segment 0, bus 0: the host bridge at 00:00.0, up to 31 more
//! single-function devices, and the three ways the guest reaches them:
//! - `PciConfigIo`: configuration mechanism #1 (address at 0xCF8, data at
//!   0xCFC..0xCFF), a `BusDevice` for the port bus;
//! - `PciConfigMmio`: ECAM (1 MiB per bus, 4 KiB per function), a
//!   `BusDevice` for the MMIO bus;
//! - `PciBarWindow`: a `BusDevice` covering a BAR window on the MMIO bus,
//!   which routes each access to the function whose BAR decodes that address
//!   now. After every configuration write the bus recomputes the function's
//!   decoded BARs, so a guest that moves a BAR (or toggles memory decoding)
//!   keeps working; the function hears about it through `bar_moved`.
//!
//! Lock order: a function's lock, then the bus lock, never the other way.
//! The bus lock is held only to look up a function or to update the BAR
//! routes, never while a function is locked from it, so one slow function
//! (a device busy in its config handler) delays accesses to itself only,
//! not every other function's configuration cycles and BARs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::bus::{lock, BusDevice};

use super::config::{ConfigSpace, PciIds, NUM_BARS};
use super::PciDevice;

/// Device slots on a bus.
pub const SLOTS: usize = 32;

/// A PCI function shared between the bus and the VMM.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;
/// The bus shared by its access paths.
pub type SharedPciBus = Arc<Mutex<PciBus>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("the PCI bus is full ({SLOTS} slots)")]
    BusFull,
    #[error("PCI slot {0} is taken or does not exist")]
    SlotTaken(u8),
}

/// The host bridge at 00:00.0 (class 06/00: host bridge). Linux's
/// configuration mechanism #1 probe looks for it.
pub struct PciHostBridge {
    config: ConfigSpace,
}

impl PciHostBridge {
    pub fn new() -> Self {
        PciHostBridge {
            config: ConfigSpace::new(PciIds {
                // Red Hat, Inc. "QEMU PCIe host bridge": a generic host
                // bridge no guest has quirks for.
                vendor_id: 0x1b36,
                device_id: 0x0008,
                revision: 0,
                class: (0x06, 0x00, 0x00),
                subsystem_vendor_id: 0x1b36,
                subsystem_id: 0x0008,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

type Mappings = [Option<(u64, u64)>; NUM_BARS];

/// Bus 0 of segment 0.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    /// What each slot's BARs decode right now: (address, size).
    mappings: Vec<Mappings>,
    /// Decoded BARs by address: start -> (size, slot, bar).
    routes: BTreeMap<u64, (u64, usize, usize)>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> Self {
        let mut bus = PciBus {
            slots: vec![None; SLOTS],
            mappings: vec![[None; NUM_BARS]; SLOTS],
            routes: BTreeMap::new(),
        };
        bus.slots[0] = Some(Arc::new(Mutex::new(PciHostBridge::new())));
        bus
    }

    /// Put `device` in the first free slot; returns the slot (its device
    /// number: the function is 00:<slot>.0).
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        self.add_device_at(slot as u8, device)?;
        Ok(slot as u8)
    }

    /// Put `device` in `slot`.
    pub fn add_device_at(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciError> {
        let s = usize::from(slot);
        match self.slots.get(s) {
            Some(None) => {}
            _ => return Err(PciError::SlotTaken(slot)),
        }
        self.slots[s] = Some(device);
        self.refresh(s);
        Ok(())
    }

    fn device(&self, bus: u8, dev: u8, func: u8) -> Option<SharedPciDevice> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.clone()
    }

    /// Route a device just put in `slot`. The only place the bus lock is held
    /// while a function is locked: the function is not reachable through
    /// the bus before this, so no access path can hold it and wait for us.
    fn refresh(&mut self, slot: usize) {
        if let Some(d) = self.slots[slot].clone() {
            let mut d = lock(&d);
            let now = mappings_of(&*d);
            let before = self.set_mappings(slot, now);
            notify_moves(&mut *d, &before, &now);
        }
    }

    /// Record what `slot`'s BARs decode now and rebuild the routes; returns
    /// what they decoded before. Overlapping BARs (a guest mistake, or a
    /// transient state while it reprograms) are not routed.
    fn set_mappings(&mut self, slot: usize, now: Mappings) -> Mappings {
        let before = self.mappings[slot];
        if now == before {
            return before;
        }
        self.mappings[slot] = now;
        // Rebuild all routes (a handful of BARs), so a BAR that lost an
        // overlap earlier is routed again once the other one moves away.
        self.routes.clear();
        for s in 0..SLOTS {
            for bar in 0..NUM_BARS {
                if let Some((addr, size)) = self.mappings[s][bar] {
                    if !self.overlaps(addr, size) {
                        self.routes.insert(addr, (size, s, bar));
                    }
                }
            }
        }
        before
    }

    fn overlaps(&self, addr: u64, size: u64) -> bool {
        let end = addr + size;
        let before = self.routes.range(..end).next_back();
        matches!(before, Some((b, (s, _, _))) if b + s > addr)
    }

    fn route(&self, addr: u64, len: usize) -> Option<(SharedPciDevice, usize, u64)> {
        let (base, (size, slot, bar)) = self.routes.range(..=addr).next_back()?;
        let offset = addr - base;
        if offset.checked_add(len as u64)? > *size {
            return None;
        }
        Some((self.slots[*slot].clone()?, *bar, offset))
    }

    /// The BARs currently decoded, as (address, size, slot, bar).
    pub fn decoded_bars(&self) -> Vec<(u64, u64, u8, usize)> {
        self.routes
            .iter()
            .map(|(a, (s, slot, bar))| (*a, *s, *slot as u8, *bar))
            .collect()
    }
}

/// What a function's BARs decode now.
fn mappings_of(dev: &dyn PciDevice) -> Mappings {
    let config = dev.config();
    std::array::from_fn(|bar| config.bar_mapping(bar))
}

/// Tell a function which of its BARs moved.
fn notify_moves(dev: &mut dyn PciDevice, before: &Mappings, now: &Mappings) {
    for bar in 0..NUM_BARS {
        let (from, to) = (before[bar].map(|m| m.0), now[bar].map(|m| m.0));
        if from != to {
            dev.bar_moved(bar, from, to);
        }
    }
}

/// Configuration read of `bus:dev.func` at `reg`; absent functions read as
/// all ones (which is how the guest finds the slot empty).
pub fn config_read(bus: &SharedPciBus, b: u8, d: u8, f: u8, reg: usize, data: &mut [u8]) {
    let dev = lock(bus).device(b, d, f);
    match dev {
        Some(dev) => lock(&dev).read_config(reg, data),
        None => data.fill(0xff),
    }
}

/// Configuration write; then re-route the function's BARs (the bus lock
/// taken inside the function's, briefly) and tell it what moved.
pub fn config_write(bus: &SharedPciBus, b: u8, d: u8, f: u8, reg: usize, data: &[u8]) {
    let Some(dev) = lock(bus).device(b, d, f) else {
        return;
    };
    let mut dev = lock(&dev);
    dev.write_config(reg, data);
    let now = mappings_of(&*dev);
    let before = lock(bus).set_mappings(usize::from(d), now);
    notify_moves(&mut *dev, &before, &now);
}

/// Read a guest-physical `addr` from whichever BAR decodes it; false if none.
pub fn bar_read(bus: &SharedPciBus, addr: u64, data: &mut [u8]) -> bool {
    // Take the device out of the bus lock before locking the device, so a
    // slow device access does not stall configuration cycles.
    let route = lock(bus).route(addr, data.len());
    match route {
        Some((dev, bar, offset)) => {
            lock(&dev).read_bar(bar, offset, data);
            true
        }
        None => false,
    }
}

/// Write a guest-physical `addr` in whichever BAR decodes it; false if none.
pub fn bar_write(bus: &SharedPciBus, addr: u64, data: &[u8]) -> bool {
    let route = lock(bus).route(addr, data.len());
    match route {
        Some((dev, bar, offset)) => {
            lock(&dev).write_bar(bar, offset, data);
            true
        }
        None => false,
    }
}

/// Configuration mechanism #1: 8 ports from 0xCF8. Offsets 0..4 are the
/// address register (32-bit accesses only), 4..8 the data window into the
/// addressed dword.
pub struct PciConfigIo {
    bus: SharedPciBus,
    address: u32,
}

const CONFIG_ENABLE: u32 = 1 << 31;

impl PciConfigIo {
    pub fn new(bus: SharedPciBus) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    /// (bus, dev, func, register) for a data access at byte `within` of the
    /// data window, if enabled and the access stays inside the dword.
    fn target(&self, within: usize, len: usize) -> Option<(u8, u8, u8, usize)> {
        if self.address & CONFIG_ENABLE == 0 || within + len > 4 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as usize + within,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let bytes = self.address.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
                }
            }
            4..=7 => match self.target(offset as usize - 4, data.len()) {
                Some((b, d, f, reg)) => config_read(&self.bus, b, d, f, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            4..=7 => {
                if let Some((b, d, f, reg)) = self.target(offset as usize - 4, data.len()) {
                    config_write(&self.bus, b, d, f, reg, data);
                }
            }
            // Byte and word writes to the address register (the
            // configuration mechanism #2 probe writes 0xCFB) are ignored.
            _ => {}
        }
    }
}

/// ECAM: the configuration space of bus B, device D, function F at offset
/// (B << 20 | D << 15 | F << 12) of the region.
pub struct PciConfigMmio {
    bus: SharedPciBus,
}

impl PciConfigMmio {
    pub fn new(bus: SharedPciBus) -> Self {
        PciConfigMmio { bus }
    }

    fn target(offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
        let reg = (offset & 0xfff) as usize;
        // Accesses of 1, 2 or 4 bytes that stay inside one dword.
        if !matches!(len, 1 | 2 | 4) || (reg % 4) + len > 4 {
            return None;
        }
        Some((
            u8::try_from(offset >> 20).ok()?,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            reg,
        ))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some((b, d, f, reg)) => config_read(&self.bus, b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = Self::target(offset, data.len()) {
            config_write(&self.bus, b, d, f, reg, data);
        }
    }
}

/// A BAR window on the MMIO bus (for example the whole 32-bit PCI hole, or
/// the 64-bit window): routes accesses to the decoding BAR.
pub struct PciBarWindow {
    bus: SharedPciBus,
    base: u64,
}

impl PciBarWindow {
    /// A window whose first byte is guest address `base`.
    pub fn new(bus: SharedPciBus, base: u64) -> Self {
        PciBarWindow { bus, base }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let hit = self
            .base
            .checked_add(offset)
            .is_some_and(|addr| bar_read(&self.bus, addr, data));
        if !hit {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(addr) = self.base.checked_add(offset) {
            bar_write(&self.bus, addr, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{BarKind, BAR0, COMMAND, COMMAND_MEMORY_SPACE};
    use super::*;

    /// A function with one 32-bit BAR that remembers the last write and the
    /// moves it was told about.
    struct Dummy {
        config: ConfigSpace,
        last: Option<(usize, u64, Vec<u8>)>,
        moves: Vec<(usize, Option<u64>, Option<u64>)>,
    }

    impl Dummy {
        fn new(bar_addr: u64) -> Self {
            let mut config = ConfigSpace::new(PciIds {
                vendor_id: 0x1234,
                device_id: 0x5678,
                ..Default::default()
            });
            config
                .add_bar(0, BarKind::Memory32, 0x1000, bar_addr)
                .unwrap();
            Dummy {
                config,
                last: None,
                moves: Vec::new(),
            }
        }
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 + offset as u8);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last = Some((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, bar: usize, from: Option<u64>, to: Option<u64>) {
            self.moves.push((bar, from, to));
        }
    }

    fn setup() -> (SharedPciBus, Arc<Mutex<Dummy>>) {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let dev = Arc::new(Mutex::new(Dummy::new(0xc000_0000)));
        assert_eq!(lock(&bus).add_device(dev.clone()).unwrap(), 1);
        (bus, dev)
    }

    fn cf8(io: &mut PciConfigIo, dev: u8, reg: u32) {
        io.write(
            0,
            &(CONFIG_ENABLE | u32::from(dev) << 11 | reg).to_le_bytes(),
        );
    }

    fn ecam_offset(dev: u64, reg: u64) -> u64 {
        dev << 15 | reg
    }

    #[test]
    fn cf8_and_ecam_agree() {
        let (bus, _) = setup();
        let mut io = PciConfigIo::new(bus.clone());
        let mut ecam = PciConfigMmio::new(bus.clone());
        for dev in 0..4u8 {
            for reg in (0..0x40).step_by(4) {
                cf8(&mut io, dev, reg);
                let mut a = [0u8; 4];
                io.read(4, &mut a);
                let mut b = [0u8; 4];
                ecam.read(ecam_offset(u64::from(dev), u64::from(reg)), &mut b);
                assert_eq!(a, b, "dev {dev} reg {reg:#x}");
            }
        }
        // The host bridge is there; slot 2 is empty.
        cf8(&mut io, 0, 0x8);
        let mut class = [0u8; 4];
        io.read(4, &mut class);
        assert_eq!(u32::from_le_bytes(class) >> 8, 0x060000);
        cf8(&mut io, 2, 0);
        io.read(4, &mut class);
        assert_eq!(class, [0xff; 4]);
        // A write through one path is seen through the other; byte access
        // inside the data window uses the low address bits.
        cf8(&mut io, 1, 0x3c);
        io.write(4, &[9]);
        let mut line = [0u8; 1];
        ecam.read(ecam_offset(1, 0x3c), &mut line);
        assert_eq!(line[0], 9);
        ecam.write(ecam_offset(1, 0x0d), &[0x40]);
        cf8(&mut io, 1, 0x0c);
        io.read(5, &mut line);
        assert_eq!(line[0], 0x40);
    }

    #[test]
    fn config_io_address_register() {
        let (bus, _) = setup();
        let mut io = PciConfigIo::new(bus);
        // Linux's mechanism #1 probe: write 0x80000000, read it back.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
        // A byte write to 0xCFB does not change it.
        io.write(3, &[0x01]);
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
        // Disabled: data reads all ones; a dword access at 0xCFD is refused.
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut a);
        assert_eq!(a, [0xff; 4]);
        cf8(&mut io, 0, 0);
        io.read(5, &mut a);
        assert_eq!(a, [0xff; 4]);
        io.read(9, &mut a);
        assert_eq!(a, [0xff; 4]);
    }

    #[test]
    fn ecam_rejects_bad_accesses_and_other_buses() {
        let (bus, _) = setup();
        let mut ecam = PciConfigMmio::new(bus);
        let mut d = [0u8; 4];
        ecam.read(1 << 20, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 has nothing");
        ecam.read(ecam_offset(1, 0) | 1 << 12, &mut d);
        assert_eq!(d, [0xff; 4], "function 1 has nothing");
        ecam.read(ecam_offset(1, 2), &mut d);
        assert_eq!(d, [0xff; 4], "a dword across a dword boundary");
        let mut q = [0u8; 8];
        ecam.read(ecam_offset(1, 0), &mut q);
        assert_eq!(q, [0xff; 8]);
        ecam.read(u64::MAX - 3, &mut d);
        ecam.write(u64::MAX - 3, &d);
        // The extended area of a conventional function reads 0.
        ecam.read(ecam_offset(1, 0x100), &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn bars_route_by_current_address() {
        let (bus, dev) = setup();
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut window = PciBarWindow::new(bus.clone(), 0xc000_0000);
        let mut d = [0u8; 4];
        // Memory decoding off: nothing answers.
        window.read(0x10, &mut d);
        assert_eq!(d, [0xff; 4]);
        ecam.write(
            ecam_offset(1, COMMAND as u64),
            &[COMMAND_MEMORY_SPACE as u8, 0],
        );
        window.read(0x10, &mut d);
        assert_eq!(d, [0x10; 4]);
        window.write(0x20, &[1, 2]);
        assert_eq!(lock(&dev).last, Some((0, 0x20, vec![1, 2])));
        // An access that runs off the end of the BAR is not routed.
        window.read(0xffe, &mut d);
        assert_eq!(d, [0xff; 4]);
        // The guest sizes the BAR and moves it.
        ecam.write(ecam_offset(1, BAR0 as u64), &[0xff; 4]);
        ecam.read(ecam_offset(1, BAR0 as u64), &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_f000);
        ecam.write(ecam_offset(1, BAR0 as u64), &0xc010_0000u32.to_le_bytes());
        window.read(0x10, &mut d);
        assert_eq!(d, [0xff; 4], "old address is dead");
        window.read(0x10_0010, &mut d);
        assert_eq!(d, [0x10; 4], "new address answers");
        assert_eq!(lock(&bus).decoded_bars(), vec![(0xc010_0000, 0x1000, 1, 0)]);
        assert_eq!(
            lock(&dev).moves,
            vec![
                (0, None, Some(0xc000_0000)),
                (0, Some(0xc000_0000), None),
                (0, None, Some(0xc010_0000)),
            ]
        );
    }

    #[test]
    fn overlapping_bars_are_not_routed() {
        let (bus, _) = setup();
        let other = Arc::new(Mutex::new(Dummy::new(0xc000_0000)));
        lock(&bus).add_device(other).unwrap();
        let mut ecam = PciConfigMmio::new(bus.clone());
        for dev in 1..=2 {
            ecam.write(
                ecam_offset(dev, COMMAND as u64),
                &[COMMAND_MEMORY_SPACE as u8, 0],
            );
        }
        assert_eq!(lock(&bus).decoded_bars().len(), 1);
    }

    #[test]
    fn slots_fill_up() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        for i in 1..SLOTS {
            let d = Arc::new(Mutex::new(Dummy::new(0xc000_0000 + i as u64 * 0x1000)));
            assert_eq!(lock(&bus).add_device(d).unwrap() as usize, i);
        }
        let d = Arc::new(Mutex::new(Dummy::new(0xd000_0000)));
        assert_eq!(lock(&bus).add_device(d.clone()), Err(PciError::BusFull));
        assert_eq!(
            lock(&bus).add_device_at(40, d),
            Err(PciError::SlotTaken(40))
        );
    }
}
