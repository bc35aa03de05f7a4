//! Guest resource allocation for devices: addresses in the 32-bit and 64-bit
//! PCI BAR windows, GSIs for MSI vectors, and virtio-mmio register blocks
//! with their IOAPIC pins, on top of rust-vmm's
//! vm-allocator. The VMM owns one `SystemAllocator` per VM.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("cannot set up the {what} allocator: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: vm_allocator::Error,
    },
    #[error(
        "no room for {size:#x} bytes (alignment {align:#x}) in the {window} PCI window: {source}"
    )]
    Mmio {
        window: &'static str,
        size: u64,
        align: u64,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("no GSI left for an MSI vector: {0}")]
    Gsi(#[source] vm_allocator::Error),
    #[error("no room left for a virtio-mmio device (at most {max}): {source}")]
    VirtioMmio {
        max: u64,
        #[source]
        source: vm_allocator::Error,
    },
}

/// Which PCI BAR window an allocation comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioWindow {
    /// Below 4 GiB (32-bit BARs; any BAR can live here).
    Below4G,
    /// Above RAM (64-bit BARs only).
    Above4G,
}

/// The VM's device resources: BAR address windows and MSI GSIs.
pub struct SystemAllocator {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    mmio64_window: (u64, u64),
    gsis: IdAllocator,
    virtio_mmio: AddressAllocator,
    legacy_irqs: IdAllocator,
}

impl SystemAllocator {
    /// Allocators for a guest with `ram_mib` MiB of RAM.
    pub fn new(ram_mib: u64) -> Result<Self, AllocError> {
        let setup = |what| move |source| AllocError::Setup { what, source };
        let mmio64_window = layout::pci_mmio64_window(ram_mib);
        Ok(SystemAllocator {
            mmio32: AddressAllocator::new(layout::PCI_MMIO_32_START, layout::PCI_MMIO_32_SIZE)
                .map_err(setup("32-bit MMIO"))?,
            mmio64: AddressAllocator::new(mmio64_window.0, mmio64_window.1)
                .map_err(setup("64-bit MMIO"))?,
            mmio64_window,
            gsis: IdAllocator::new(layout::FIRST_MSI_GSI, layout::LAST_MSI_GSI)
                .map_err(setup("GSI"))?,
            virtio_mmio: AddressAllocator::new(layout::VIRTIO_MMIO_START, layout::VIRTIO_MMIO_SIZE)
                .map_err(setup("virtio-mmio"))?,
            legacy_irqs: IdAllocator::new(
                layout::VIRTIO_MMIO_FIRST_IRQ,
                layout::VIRTIO_MMIO_LAST_IRQ,
            )
            .map_err(setup("legacy IRQ"))?,
        })
    }

    /// The 64-bit window (start, size) this allocator hands out from.
    pub fn mmio64_window(&self) -> (u64, u64) {
        self.mmio64_window
    }

    /// Allocate `size` bytes aligned to `align` (both powers of two; a BAR
    /// is naturally aligned, so pass its size) in `window`.
    pub fn allocate_mmio(
        &mut self,
        window: MmioWindow,
        size: u64,
        align: u64,
    ) -> Result<u64, AllocError> {
        let (alloc, name) = match window {
            MmioWindow::Below4G => (&mut self.mmio32, "32-bit"),
            MmioWindow::Above4G => (&mut self.mmio64, "64-bit"),
        };
        alloc
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|source| AllocError::Mmio {
                window: name,
                size,
                align,
                source,
            })
    }

    /// Allocate one GSI for an MSI vector.
    pub fn allocate_gsi(&mut self) -> Result<u32, AllocError> {
        self.gsis.allocate_id().map_err(AllocError::Gsi)
    }

    /// Allocate a virtio-mmio device's register block and its interrupt
    /// line (an IOAPIC pin): (base, gsi).
    pub fn allocate_virtio_mmio(&mut self) -> Result<(u64, u32), AllocError> {
        let max = u64::from(layout::VIRTIO_MMIO_LAST_IRQ - layout::VIRTIO_MMIO_FIRST_IRQ + 1);
        let err = |source| AllocError::VirtioMmio { max, source };
        let gsi = self.legacy_irqs.allocate_id().map_err(err)?;
        let size = layout::VIRTIO_MMIO_DEVICE_SIZE;
        let base = self
            .virtio_mmio
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map_err(err)?;
        Ok((base.start(), gsi))
    }

    /// Allocate `n` GSIs (one per MSI-X vector of a device).
    pub fn allocate_gsis(&mut self, n: usize) -> Result<Vec<u32>, AllocError> {
        (0..n).map(|_| self.allocate_gsi()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_and_disjoint() {
        let mut a = SystemAllocator::new(512).unwrap();
        let x = a
            .allocate_mmio(MmioWindow::Below4G, 0x8000, 0x8000)
            .unwrap();
        let y = a
            .allocate_mmio(MmioWindow::Below4G, 0x1000, 0x1000)
            .unwrap();
        let z = a
            .allocate_mmio(MmioWindow::Below4G, 0x8000, 0x8000)
            .unwrap();
        assert_eq!(x, layout::PCI_MMIO_32_START);
        assert_eq!(x % 0x8000, 0);
        assert_eq!(z % 0x8000, 0);
        assert!(y >= x + 0x8000 && z >= y + 0x1000);
        assert!(z + 0x8000 <= layout::PCI_ECAM_START);
        let hi = a
            .allocate_mmio(MmioWindow::Above4G, 1 << 20, 1 << 20)
            .unwrap();
        assert_eq!(hi, 4 << 30);
        assert!(a
            .allocate_mmio(MmioWindow::Below4G, 1 << 40, 1 << 40)
            .is_err());
    }

    #[test]
    fn window_64_starts_past_ram() {
        assert_eq!(layout::pci_mmio64_window(512).0, 4 << 30);
        // 4 GiB of RAM: 1 GiB of it above 4 GiB.
        assert_eq!(layout::pci_mmio64_window(4096).0, 5 << 30);
        assert_eq!(layout::pci_mmio64_window(4096 + 1).0, 6 << 30);
    }

    #[test]
    fn gsis_start_after_the_ioapic_pins() {
        let mut a = SystemAllocator::new(64).unwrap();
        assert_eq!(a.allocate_gsis(3).unwrap(), vec![24, 25, 26]);
        assert_eq!(a.allocate_gsi().unwrap(), 27);
    }

    #[test]
    fn virtio_mmio_devices_get_a_page_and_a_pin_each() {
        let mut a = SystemAllocator::new(64).unwrap();
        assert_eq!(a.allocate_virtio_mmio().unwrap(), (0xe100_0000, 5));
        assert_eq!(a.allocate_virtio_mmio().unwrap(), (0xe100_1000, 6));
        for _ in 7..=23 {
            a.allocate_virtio_mmio().unwrap();
        }
        let e = a.allocate_virtio_mmio().unwrap_err();
        assert!(e.to_string().contains("at most 19"), "{e}");
        // MSI GSIs are a separate range.
        assert_eq!(a.allocate_gsi().unwrap(), 24);
    }

    // The fixed PCI regions fit in the 32-bit hole without overlapping.
    const _: () = {
        assert!(layout::PCI_MMIO_32_START + layout::PCI_MMIO_32_SIZE <= layout::PCI_ECAM_START);
        assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= layout::IOAPIC_START);
        assert!(layout::PCI_ECAM_SIZE == (layout::PCI_LAST_BUS as u64 + 1) << 20);
        // virtio-mmio sits between ECAM and the IOAPIC, its pins below MSI.
        assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= layout::VIRTIO_MMIO_START);
        assert!(layout::VIRTIO_MMIO_START + layout::VIRTIO_MMIO_SIZE <= layout::KVM_TSS_START);
        assert!(layout::VIRTIO_MMIO_START + layout::VIRTIO_MMIO_SIZE <= layout::IOAPIC_START);
        assert!(layout::VIRTIO_MMIO_LAST_IRQ < layout::FIRST_MSI_GSI);
        assert!(layout::VIRTIO_MMIO_FIRST_IRQ > layout::COM1_IRQ);
    };
}
