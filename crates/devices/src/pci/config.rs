//! A PCI type-0 configuration space: the 256-byte header and capability
//! area of one function, with per-bit write masks (read-only ids, writable
//! command bits, write-1-to-clear status bits), memory BARs and their sizing
//! protocol, and the capability list.
//!
//! BAR sizing falls out of the write masks: a BAR's mask covers exactly the
//! address bits above its size, so writing all ones reads back the size mask
//! with the read-only type bits below it, as on real hardware.

use serde::{Deserialize, Serialize};

/// Size of the conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG_IF: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command register bits the guest may change: I/O space, memory space,
/// bus master, parity error response, SERR#, INTx disable.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status: capability list present; error bits are write-1-to-clear.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
const STATUS_W1C: u16 = 0xf900;

/// First byte after the standard header, where capabilities go.
const FIRST_CAPABILITY: usize = 0x40;
/// BAR type bits.
const BAR_MEM_64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;

/// A memory BAR's width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarKind {
    /// One register, address below 4 GiB.
    Memory32,
    /// Two registers (this one and the next), any address; prefetchable.
    Memory64,
}

/// A BAR the device declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} does not exist (a type-0 header has BARs 0 to 5)")]
    BarIndex(usize),
    #[error("BAR {bar} is already in use")]
    BarInUse { bar: usize },
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    #[error("BAR address {addr:#x} is not aligned to its size {size:#x} or does not fit")]
    BarAddress { addr: u64, size: u64 },
    #[error("no room for a {0}-byte capability in configuration space")]
    CapabilitySpace(usize),
}

/// The serializable state of a configuration space (for snapshots). The
/// write masks and BAR declarations are rebuilt by the device's constructor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSpaceState {
    pub registers: Vec<u8>,
}

/// The identity a function presents in its header.
#[derive(Clone, Copy, Debug, Default)]
pub struct PciIds {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    /// (class, subclass, programming interface)
    pub class: (u8, u8, u8),
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

/// One function's configuration space.
pub struct ConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest may write.
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// Bits a guest write of 1 clears.
    w1c: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<Bar>; NUM_BARS],
    /// Offset of the last capability in the list, and the next free byte.
    last_capability: Option<usize>,
    next_capability: usize,
}

impl ConfigSpace {
    /// A type-0 header with the given identity, no BARs, no capabilities,
    /// and no INTx pin.
    pub fn new(ids: PciIds) -> Self {
        let mut c = ConfigSpace {
            regs: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.set_u16(VENDOR_ID, ids.vendor_id);
        c.set_u16(DEVICE_ID, ids.device_id);
        c.regs[REVISION_ID] = ids.revision;
        c.regs[CLASS_PROG_IF] = ids.class.2;
        c.regs[CLASS_PROG_IF + 1] = ids.class.1;
        c.regs[CLASS_PROG_IF + 2] = ids.class.0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        c.set_wmask_u16(COMMAND, COMMAND_WRITABLE);
        c.w1c[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xff;
        c.wmask[LATENCY_TIMER] = 0xff;
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_u16(&mut self, offset: usize, v: u16) {
        self.regs[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, v: u32) {
        self.regs[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_wmask_u16(&mut self, offset: usize, v: u16) {
        self.wmask[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_wmask_u32(&mut self, offset: usize, v: u32) {
        self.wmask[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Read a little-endian value of up to 4 bytes at `offset` (0 if out of range).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The guest's view: bytes beyond the 256-byte space (the ECAM extended
    /// area of a conventional function) read as 0.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A guest write: only writable bits change, write-1-to-clear bits clear,
    /// bytes out of range are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let old = self.regs[o];
            let kept = old & !self.wmask[o] & !(v & self.w1c[o]);
            self.regs[o] = kept | (v & self.wmask[o]);
        }
    }

    /// Set bytes directly, bypassing the write masks (device-side updates).
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = offset
            .checked_add(data.len())
            .and_then(|end| self.regs.get_mut(offset..end))
        {
            dst.copy_from_slice(data);
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Declare memory BAR `index` of `size` bytes at guest address `addr`.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        addr: u64,
    ) -> Result<(), ConfigError> {
        let regs = if kind == BarKind::Memory64 { 2 } else { 1 };
        if index + regs > NUM_BARS {
            return Err(ConfigError::BarIndex(index));
        }
        if (index..index + regs).any(|i| self.bars[i].is_some() || self.is_bar_upper_half(i)) {
            return Err(ConfigError::BarInUse { bar: index });
        }
        if !size.is_power_of_two() || size < 16 || (kind == BarKind::Memory32 && size > 1 << 31) {
            return Err(ConfigError::BarSize(size));
        }
        let fits = match kind {
            BarKind::Memory32 => addr.checked_add(size).is_some_and(|e| e <= 1 << 32),
            BarKind::Memory64 => addr.checked_add(size).is_some(),
        };
        if !addr.is_multiple_of(size) || !fits {
            return Err(ConfigError::BarAddress { addr, size });
        }
        self.bars[index] = Some(Bar { kind, size });
        let off = BAR0 + 4 * index;
        let mask = !(size - 1);
        match kind {
            BarKind::Memory32 => {
                self.set_wmask_u32(off, mask as u32 & !0xf);
                self.set_u32(off, addr as u32);
            }
            BarKind::Memory64 => {
                self.set_wmask_u32(off, mask as u32 & !0xf);
                self.set_wmask_u32(off + 4, (mask >> 32) as u32);
                self.set_u32(off, addr as u32 | BAR_MEM_64 | BAR_PREFETCHABLE);
                self.set_u32(off + 4, (addr >> 32) as u32);
            }
        }
        Ok(())
    }

    fn is_bar_upper_half(&self, index: usize) -> bool {
        index > 0 && matches!(self.bars[index - 1], Some(b) if b.kind == BarKind::Memory64)
    }

    /// The BAR declared at `index`, if any.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` currently holds (whatever the guest wrote).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = BAR0 + 4 * index;
        let low = u64::from(self.read_u32(off) & !0xf);
        Some(match bar.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 => low | u64::from(self.read_u32(off + 4)) << 32,
        })
    }

    /// Where BAR `index` decodes right now: its address if memory decoding
    /// is on and the address is set (not 0, not the all-ones of the sizing
    /// protocol, not past the top of the address space).
    pub fn bar_mapping(&self, index: usize) -> Option<(u64, u64)> {
        if self.command() & COMMAND_MEMORY_SPACE == 0 {
            return None;
        }
        let bar = self.bar(index)?;
        let addr = self.bar_address(index)?;
        let end = addr.checked_add(bar.size)?;
        let (limit, sizing) = match bar.kind {
            BarKind::Memory32 => (1 << 32, !(bar.size - 1) & 0xffff_ffff),
            BarKind::Memory64 => (u64::MAX, !(bar.size - 1)),
        };
        // All ones written (the sizing protocol) is not an address.
        (addr != 0 && addr != sizing && end <= limit).then_some((addr, bar.size))
    }

    /// Append a capability with `id` and `body` (the bytes after the id and
    /// next pointer); `body_wmask` gives the guest-writable bits of the body
    /// (shorter means the rest is read-only). Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        body_wmask: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        let end = offset + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpace(len));
        }
        self.regs[offset] = id;
        self.regs[offset + 1] = 0;
        self.regs[offset + 2..end].copy_from_slice(body);
        for (i, m) in body_wmask.iter().take(body.len()).enumerate() {
            self.wmask[offset + 2 + i] = *m;
        }
        match self.last_capability {
            Some(last) => self.regs[last + 1] = offset as u8,
            None => self.regs[CAPABILITIES_POINTER] = offset as u8,
        }
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        self.last_capability = Some(offset);
        self.next_capability = (end + 3) & !3;
        Ok(offset)
    }

    pub fn state(&self) -> ConfigSpaceState {
        ConfigSpaceState {
            registers: self.regs.to_vec(),
        }
    }

    /// Restore register contents saved by `state` on a space built the same
    /// way (same BARs and capabilities); a state of the wrong size is ignored.
    pub fn restore(&mut self, state: &ConfigSpaceState) {
        if state.registers.len() == CONFIG_SPACE_SIZE {
            self.regs.copy_from_slice(&state.registers);
        }
    }
}

/// Walk a capability list through `read` (a config-space reader) and return
/// (id, offset) pairs, stopping at loops or bad pointers.
pub fn capabilities(read: impl Fn(usize) -> u8) -> Vec<(u8, usize)> {
    let mut caps = Vec::new();
    let mut ptr = usize::from(read(CAPABILITIES_POINTER)) & !3;
    while ptr >= FIRST_CAPABILITY && caps.len() < 48 {
        caps.push((read(ptr), ptr));
        ptr = usize::from(read(ptr + 1)) & !3;
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(PciIds {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: (0x01, 0x80, 0),
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        })
    }

    #[test]
    fn ids_are_read_only_and_command_is_masked() {
        let mut c = space();
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0180_0001);
        c.write(0, &[0xff; 4]);
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE);
        c.write(INTERRUPT_LINE, &[5]);
        assert_eq!(c.read_u16(INTERRUPT_LINE), 5);
        // Out of range: ignored on write, 0 on read, no panic.
        c.write(255, &[1, 2, 3, 4]);
        c.write(usize::MAX, &[1]);
        assert_eq!(c.read_u32(0x100), 0);
        assert_eq!(c.read_u32(usize::MAX - 1), 0);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = space();
        c.set_bytes(STATUS, &0x8000u16.to_le_bytes());
        c.write(STATUS, &0x0000u16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0x8000);
        c.write(STATUS, &0x8000u16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0);
    }

    #[test]
    fn bar32_sizing_and_move() {
        let mut c = space();
        c.add_bar(0, BarKind::Memory32, 0x8000, 0xc000_0000)
            .unwrap();
        assert_eq!(c.read_u32(BAR0), 0xc000_0000);
        c.write(BAR0, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0), 0xffff_8000);
        assert_eq!(c.bar_mapping(0), None, "memory decoding is off");
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        c.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        assert_eq!(c.bar_mapping(0), Some((0xd000_0000, 0x8000)));
        // Unaligned bits below the size are dropped.
        c.write(BAR0, &0xd000_1234u32.to_le_bytes());
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
        // Unused BARs read 0 and stay 0.
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0 + 4), 0);
    }

    #[test]
    fn bar64_sizing_spans_two_registers() {
        let mut c = space();
        c.add_bar(2, BarKind::Memory64, 0x4000, 0x1_0000_0000)
            .unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0b1100);
        assert_eq!(c.read_u32(BAR0 + 12), 1);
        c.write(BAR0 + 8, &[0xff; 4]);
        c.write(BAR0 + 12, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0 + 8), 0xffff_c00c);
        assert_eq!(c.read_u32(BAR0 + 12), 0xffff_ffff);
        c.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        // All ones is mid-sizing: not a mapping.
        assert_eq!(c.bar_mapping(2), None);
        c.write(BAR0 + 8, &0x8000_0000u32.to_le_bytes());
        c.write(BAR0 + 12, &2u32.to_le_bytes());
        assert_eq!(c.bar_mapping(2), Some((0x2_8000_0000, 0x4000)));
        assert_eq!(
            c.add_bar(3, BarKind::Memory32, 0x1000, 0),
            Err(ConfigError::BarInUse { bar: 3 })
        );
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = space();
        assert!(c.add_bar(6, BarKind::Memory32, 0x1000, 0).is_err());
        assert!(c.add_bar(5, BarKind::Memory64, 0x1000, 0).is_err());
        assert!(c.add_bar(0, BarKind::Memory32, 0x1800, 0).is_err());
        assert!(c.add_bar(0, BarKind::Memory32, 0x1000, 0x800).is_err());
        assert!(c
            .add_bar(0, BarKind::Memory32, 0x1000, 0xffff_f000 + 0x1000)
            .is_err());
    }

    #[test]
    fn capability_chain() {
        let mut c = space();
        assert_eq!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
        let a = c.add_capability(0x09, &[14, 1, 0, 0], &[]).unwrap();
        let b = c.add_capability(0x11, &[0, 0], &[0, 0xc0]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
        assert_eq!(
            capabilities(|o| c.read_u32(o) as u8),
            vec![(0x09, 0x40), (0x11, 0x48)]
        );
        // Only the writable body bits change.
        c.write(b + 2, &[0xff, 0xff]);
        assert_eq!(c.read_u16(b + 2), 0xc000);
        c.write(a + 2, &[0xff]);
        assert_eq!(c.read_u16(a + 2), 14 | 1 << 8);
        // Fill the space: a capability that does not fit is refused.
        while c.add_capability(0x09, &[0; 30], &[]).is_ok() {}
        assert!(matches!(
            c.add_capability(0x09, &[0; 30], &[]),
            Err(ConfigError::CapabilitySpace(32))
        ));
    }

    #[test]
    fn capability_walk_survives_a_loop() {
        let mut regs = [0u8; 256];
        regs[CAPABILITIES_POINTER] = 0x40;
        regs[0x40] = 0x09;
        regs[0x41] = 0x40;
        assert_eq!(capabilities(|o| regs[o & 0xff]).len(), 48);
    }

    #[test]
    fn state_round_trip() {
        let mut c = space();
        c.write(COMMAND, &[0x06, 0]);
        let s = c.state();
        let mut d = space();
        d.restore(&s);
        assert_eq!(d.command(), 6);
        d.restore(&ConfigSpaceState { registers: vec![] });
        assert_eq!(d.command(), 6);
    }
}
