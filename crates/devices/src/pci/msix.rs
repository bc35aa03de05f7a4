//! MSI-X: the capability in configuration space, the vector table and the
//! pending-bit array (PBA) that live in a BAR, per-vector masking and the
//! function mask, and delivery through the VMM's `MsiRouter`.
//!
//! Every vector owns a GSI and an irqfd. A vector is routed (its message
//! handed to the router) when it first becomes unmasked and whenever the
//! guest changes its message while unmasked. Signalling a masked vector sets
//! its pending bit; unmasking a pending vector delivers it and clears the bit.
//!
//! The router changes a vector's route and irqfd together or not at all;
//! `routed` records only what it accepted, so a vector whose routing failed
//! stays "not set up" and the next table write, unmask or signal retries it.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::config::{ConfigError, ConfigSpace};
use super::{MsiMessage, MsiRouter};

/// PCI capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// "No vector" as virtio and the PCI spec write it.
pub const MSIX_NO_VECTOR: u16 = 0xffff;
/// Most vectors one function may have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message control bits.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the per-vector mask bit.
const VECTOR_MASKED: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    #[error("{0} MSI-X vectors requested; a function has 1 to 2048")]
    VectorCount(u16),
    #[error("{gsis} GSIs given for {vectors} MSI-X vectors")]
    GsiCount { gsis: usize, vectors: u16 },
    #[error("cannot create an MSI-X irqfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("MSI-X capability: {0}")]
    Config(#[from] ConfigError),
}

/// Where the table and PBA live (BAR index and offset in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixLayout {
    pub fn table_size(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    pub fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Add the MSI-X capability to `config`; returns its offset. Only the
    /// enable and function-mask bits of message control are writable.
    pub fn add_capability(&self, config: &mut ConfigSpace) -> Result<usize, ConfigError> {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(self.table_offset | u32::from(self.table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(self.pba_offset | u32::from(self.pba_bar)).to_le_bytes());
        let wmask = (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes();
        config.add_capability(MSIX_CAP_ID, &body, &wmask)
    }
}

/// One table entry as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntry {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
    pub vector_control: u32,
}

impl Default for MsixEntry {
    /// Vectors come out of reset masked.
    fn default() -> Self {
        MsixEntry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            vector_control: VECTOR_MASKED,
        }
    }
}

impl MsixEntry {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, w) in [self.addr_lo, self.addr_hi, self.data, self.vector_control]
            .iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8; 16]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        MsixEntry {
            addr_lo: w(0),
            addr_hi: w(4),
            data: w(8),
            // Only the mask bit is defined; the rest reads as 0.
            vector_control: w(12) & VECTOR_MASKED,
        }
    }

    fn masked(&self) -> bool {
        self.vector_control & VECTOR_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// MSI-X state a snapshot needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    pub entries: Vec<MsixEntry>,
    pub pba: Vec<u64>,
    pub enabled: bool,
    pub function_masked: bool,
}

/// The MSI-X function state and its delivery path.
pub struct Msix {
    state: MsixState,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    /// The message the router currently has for each vector.
    routed: Vec<Option<MsiMessage>>,
    router: Arc<dyn MsiRouter>,
}

impl Msix {
    /// `vectors` vectors delivered on `gsis` (one per vector) via `router`.
    pub fn new(
        vectors: u16,
        gsis: Vec<u32>,
        router: Arc<dyn MsiRouter>,
    ) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount(vectors));
        }
        if gsis.len() != usize::from(vectors) {
            return Err(MsixError::GsiCount {
                gsis: gsis.len(),
                vectors,
            });
        }
        let irqfds = (0..vectors)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(MsixError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let n = usize::from(vectors);
        Ok(Msix {
            state: MsixState {
                entries: vec![MsixEntry::default(); n],
                pba: vec![0; n.div_ceil(64)],
                enabled: false,
                function_masked: false,
            },
            gsis,
            irqfds,
            routed: vec![None; n],
            router,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.state.entries.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    /// The irqfd of `vector` (for tests and for devices that want to hand
    /// it to another thread).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.irqfds.get(usize::from(vector))
    }

    /// Read the vector table at `offset` (bytes past it read as 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, within)) = self.entry_at(offset, data.len()) else {
            return;
        };
        let bytes = self.state.entries[index].to_bytes();
        data.copy_from_slice(&bytes[within..within + data.len()]);
    }

    /// Write the vector table at `offset`; accesses that leave one entry are
    /// dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((index, within)) = self.entry_at(offset, data.len()) else {
            return;
        };
        let mut bytes = self.state.entries[index].to_bytes();
        bytes[within..within + data.len()].copy_from_slice(data);
        self.state.entries[index] = MsixEntry::from_bytes(&bytes);
        self.update_vector(index);
    }

    fn entry_at(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let index = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let within = (offset % MSIX_ENTRY_SIZE) as usize;
        (index < self.state.entries.len() && len <= 16 && within + len <= 16)
            .then_some((index, within))
    }

    /// Read the pending-bit array (read-only to the guest).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset.saturating_add(i as u64);
            let word = usize::try_from(byte / 8).unwrap_or(usize::MAX);
            *b = self
                .state
                .pba
                .get(word)
                .map(|w| (w >> ((byte % 8) * 8)) as u8)
                .unwrap_or(0);
        }
    }

    /// Apply the capability's message control register (after a guest
    /// config write touched it).
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        let was_enabled = self.state.enabled;
        self.state.enabled = enabled;
        self.state.function_masked = function_masked;
        if was_enabled && !enabled {
            self.disable_all();
        }
        for v in 0..self.state.entries.len() {
            self.update_vector(v);
        }
    }

    fn masked(&self, v: usize) -> bool {
        !self.state.enabled || self.state.function_masked || self.state.entries[v].masked()
    }

    fn pending(&self, v: usize) -> bool {
        self.state.pba[v / 64] & (1 << (v % 64)) != 0
    }

    fn set_pending(&mut self, v: usize, pending: bool) {
        if pending {
            self.state.pba[v / 64] |= 1 << (v % 64);
        } else {
            self.state.pba[v / 64] &= !(1 << (v % 64));
        }
    }

    /// Make an unmasked vector's route current and deliver what is pending.
    fn update_vector(&mut self, v: usize) {
        if self.masked(v) {
            return;
        }
        let msg = self.state.entries[v].message();
        if self.routed[v] != Some(msg) {
            // A failed call leaves the router as it was (the old message, or
            // nothing), and so `routed`; the next update tries again.
            // Nothing here may take the VMM down.
            if self
                .router
                .enable_vector(self.gsis[v], msg, &self.irqfds[v])
                .is_ok()
            {
                self.routed[v] = Some(msg);
            }
        }
        if self.pending(v) {
            self.set_pending(v, false);
            let _ = self.irqfds[v].write(1);
        }
    }

    fn disable_all(&mut self) {
        for v in 0..self.routed.len() {
            if self.routed[v].is_some()
                && self
                    .router
                    .disable_vector(self.gsis[v], &self.irqfds[v])
                    .is_ok()
            {
                self.routed[v] = None;
            }
        }
    }

    /// Raise `vector`: deliver it, or mark it pending while masked. Vectors
    /// out of range (including `MSIX_NO_VECTOR`) and a disabled MSI-X
    /// (there is no INTx fallback) drop the interrupt.
    pub fn signal(&mut self, vector: u16) -> io::Result<()> {
        let v = usize::from(vector);
        if v >= self.state.entries.len() || !self.state.enabled {
            return Ok(());
        }
        if self.masked(v) {
            self.set_pending(v, true);
            return Ok(());
        }
        if self.routed[v].is_none() {
            self.update_vector(v);
        }
        self.irqfds[v].write(1)
    }

    pub fn state(&self) -> MsixState {
        self.state.clone()
    }

    /// Restore a saved state with the same number of vectors and re-route
    /// the unmasked vectors; a mismatched state is ignored.
    pub fn restore(&mut self, state: &MsixState) {
        if state.entries.len() != self.state.entries.len()
            || state.pba.len() != self.state.pba.len()
        {
            return;
        }
        self.disable_all();
        self.state = state.clone();
        for v in 0..self.state.entries.len() {
            self.update_vector(v);
        }
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        self.disable_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the router accepted; `fail_enables` calls to
    /// `enable_vector` fail first (and change nothing, as the real router
    /// promises).
    #[derive(Default)]
    pub(crate) struct FakeRouter {
        pub routes: Mutex<Vec<(u32, Option<MsiMessage>)>>,
        pub fail_enables: Mutex<u32>,
    }

    impl MsiRouter for FakeRouter {
        fn enable_vector(&self, gsi: u32, msg: MsiMessage, _irqfd: &EventFd) -> io::Result<()> {
            let mut fail = self.fail_enables.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(io::Error::other("injected irqfd registration failure"));
            }
            self.routes.lock().unwrap().push((gsi, Some(msg)));
            Ok(())
        }
        fn disable_vector(&self, gsi: u32, _irqfd: &EventFd) -> io::Result<()> {
            self.routes.lock().unwrap().push((gsi, None));
            Ok(())
        }
    }

    fn fired(m: &Msix, v: u16) -> bool {
        m.irqfd(v).unwrap().read().is_ok()
    }

    fn program(m: &mut Msix, v: u64, addr: u32, data: u32) {
        m.write_table(v * 16, &addr.to_le_bytes());
        m.write_table(v * 16 + 4, &0u32.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
    }

    fn unmask(m: &mut Msix, v: u64) {
        m.write_table(v * 16 + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn masked_vectors_go_pending_and_fire_on_unmask() {
        let router = Arc::new(FakeRouter::default());
        let mut m = Msix::new(3, vec![30, 31, 32], router.clone()).unwrap();
        // Disabled: dropped, nothing pending.
        m.signal(1).unwrap();
        assert!(!fired(&m, 1));
        m.set_control(CONTROL_ENABLE);
        program(&mut m, 1, 0xfee0_0000, 0x41);
        // Entry still masked (reset state): pending.
        m.signal(1).unwrap();
        assert!(!fired(&m, 1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        unmask(&mut m, 1);
        assert!(fired(&m, 1));
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        assert_eq!(
            router.routes.lock().unwrap().as_slice(),
            &[(
                31,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                })
            )]
        );
        // Unmasked: delivered at once.
        m.signal(1).unwrap();
        assert!(fired(&m, 1));
        // Function mask: pending again, delivered on function unmask.
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.signal(1).unwrap();
        assert!(!fired(&m, 1));
        m.set_control(CONTROL_ENABLE);
        assert!(fired(&m, 1));
        // Out of range and NO_VECTOR are dropped.
        m.signal(3).unwrap();
        m.signal(MSIX_NO_VECTOR).unwrap();
        // Disabling MSI-X takes the route away.
        m.set_control(0);
        assert_eq!(router.routes.lock().unwrap().last(), Some(&(31, None)));
    }

    #[test]
    fn changing_an_unmasked_message_reroutes() {
        let router = Arc::new(FakeRouter::default());
        let mut m = Msix::new(1, vec![40], router.clone()).unwrap();
        m.set_control(CONTROL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 1);
        unmask(&mut m, 0);
        m.write_table(8, &2u32.to_le_bytes());
        let routes = router.routes.lock().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].1.unwrap().data, 2);
    }

    #[test]
    fn a_vector_whose_routing_failed_is_retried_not_trusted() {
        let router = Arc::new(FakeRouter::default());
        let mut m = Msix::new(1, vec![50], router.clone()).unwrap();
        m.set_control(CONTROL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 7);
        *router.fail_enables.lock().unwrap() = 1;
        unmask(&mut m, 0);
        assert_eq!(m.routed[0], None, "a failed vector is not set up");
        assert!(router.routes.lock().unwrap().is_empty());
        // The next signal routes it and delivers.
        m.signal(0).unwrap();
        assert!(fired(&m, 0));
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 7,
        };
        assert_eq!(m.routed[0], Some(msg));
        assert_eq!(router.routes.lock().unwrap().as_slice(), &[(50, Some(msg))]);
        // A failed re-route keeps the old route (the router kept it too)
        // and the next write retries.
        *router.fail_enables.lock().unwrap() = 1;
        m.write_table(8, &8u32.to_le_bytes());
        assert_eq!(m.routed[0], Some(msg));
        m.write_table(8, &9u32.to_le_bytes());
        assert_eq!(m.routed[0].map(|r| r.data), Some(9));
    }

    #[test]
    fn table_accesses_are_bounds_checked() {
        let mut m = Msix::new(2, vec![1, 2], Arc::new(FakeRouter::default())).unwrap();
        let mut q = [0u8; 8];
        m.read_table(8, &mut q);
        assert_eq!(q, [0, 0, 0, 0, 1, 0, 0, 0], "data 0, vector control masked");
        // 64-bit access to the address pair.
        m.write_table(16, &0x1_2345_6780u64.to_le_bytes());
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_2345_6780);
        // Crossing an entry, past the table, huge offsets: ignored, reads 0.
        m.write_table(12, &[0xff; 8]);
        m.write_table(32, &[0xff; 4]);
        m.write_table(u64::MAX - 2, &[0xff; 4]);
        let mut big = [0xaau8; 32];
        m.read_table(0, &mut big);
        assert_eq!(big, [0; 32]);
        let mut b = [0xaau8; 4];
        m.read_pba(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
        // Reserved vector-control bits read as 0.
        m.write_table(12, &0xffff_fffeu32.to_le_bytes());
        let mut w = [0u8; 4];
        m.read_table(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0);
    }

    #[test]
    fn bad_constructions_are_refused() {
        let r: Arc<dyn MsiRouter> = Arc::new(FakeRouter::default());
        assert!(Msix::new(0, vec![], r.clone()).is_err());
        assert!(Msix::new(2, vec![1], r.clone()).is_err());
        assert!(Msix::new(4096, vec![0; 4096], r).is_err());
    }

    #[test]
    fn capability_layout() {
        let mut c = ConfigSpace::new(Default::default());
        let layout = MsixLayout {
            vectors: 65,
            table_bar: 0,
            table_offset: 0x4000,
            pba_bar: 0,
            pba_offset: 0x6000,
        };
        assert_eq!(layout.pba_size(), 16);
        let off = layout.add_capability(&mut c).unwrap();
        assert_eq!(c.read_u16(off), u16::from(MSIX_CAP_ID));
        assert_eq!(c.read_u16(off + 2), 64);
        assert_eq!(c.read_u32(off + 4), 0x4000);
        c.write(off + 2, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_u16(off + 2), 0xc000 | 64);
    }
}
