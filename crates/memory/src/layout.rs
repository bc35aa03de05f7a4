//! Fixed guest physical addresses used while booting and for devices.

/// Smallest guest Vireo will build (kernel + initrd need room).
pub const MIN_MEMORY_MIB: u64 = 16;

/// Boot GDT and IDT.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Linux boot protocol "zero page" (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for 64-bit entry: PML4, PDPT, and four PDs (4 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area, where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Kernels are loaded here (1 MiB).
pub const HIMEM_START: u64 = 0x100000;

/// Start of the 32-bit MMIO hole (3 GiB) and of RAM above it (4 GiB).
pub const MMIO_32_START: u64 = 0xc000_0000;
pub const RAM_64_START: u64 = 0x1_0000_0000;
/// KVM's TSS (3 pages) and identity map page, just below the IOAPIC.
pub const KVM_TSS_START: u64 = 0xfeff_c000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;

/// Legacy I/O ports of the platform devices.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
/// The keyboard's ISA interrupt.
pub const I8042_IRQ: u32 = 1;
/// ACPI hardware-reduced sleep control/status and reset registers.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// pvpanic (ACPI id QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;
/// Vireo's exit device: a byte written here ends the VM with that status.
pub const EXIT_PORT: u16 = 0x506;
/// SLP_TYP for S5 (soft off) that the DSDT's \_S5 object advertises and the
/// sleep control register acts on.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// PCI. The 32-bit hole holds the 32-bit BAR window and the ECAM region;
/// 64-bit BARs go in a window above the end of RAM (`pci_mmio64_window`).
pub const PCI_MMIO_32_START: u64 = MMIO_32_START;
pub const PCI_MMIO_32_SIZE: u64 = 0x2000_0000;
/// ECAM (PCIe enhanced configuration access) for bus 0 only: 1 MiB, 4 KiB
/// per function. Described by the ACPI MCFG table and reserved in e820.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// The last PCI bus number the ECAM region covers.
pub const PCI_LAST_BUS: u8 = 0;
/// virtio-mmio devices: one 4 KiB register block each, in a window of the
/// 32-bit hole between ECAM and the IOAPIC (clear of the PCI BAR window,
/// which ends at ECAM). Described to the guest in the DSDT.
pub const VIRTIO_MMIO_START: u64 = 0xe100_0000;
pub const VIRTIO_MMIO_DEVICE_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x10_0000;
/// virtio-mmio interrupts: one IOAPIC pin each, after COM1's IRQ 4 and
/// below the MSI GSIs (edge-triggered, active high, through an irqfd).
pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 5;
pub const VIRTIO_MMIO_LAST_IRQ: u32 = 23;
/// Legacy PCI configuration mechanism #1: address at 0xcf8, data at 0xcfc.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_IO_PORT_SIZE: u64 = 8;
/// Size of the 64-bit BAR window above RAM.
pub const PCI_MMIO_64_SIZE: u64 = 64 << 30;
/// The 64-bit window starts on this alignment past the end of RAM.
pub const PCI_MMIO_64_ALIGN: u64 = 1 << 30;
/// GSIs 0..24 are the IOAPIC's pins; MSI vectors use GSIs from here on.
pub const FIRST_MSI_GSI: u32 = 24;
/// Last GSI handed out (KVM allows up to 4096 routes).
pub const LAST_MSI_GSI: u32 = 4095;

/// The 64-bit PCI BAR window (start, size) for a guest with `ram_mib` MiB
/// of RAM: at or above 4 GiB, aligned, past the last byte of RAM.
pub fn pci_mmio64_window(ram_mib: u64) -> (u64, u64) {
    let high_ram = ram_mib
        .saturating_mul(1 << 20)
        .saturating_sub(MMIO_32_START);
    let end = RAM_64_START.saturating_add(high_ram);
    let start = end.div_ceil(PCI_MMIO_64_ALIGN) * PCI_MMIO_64_ALIGN;
    (start, PCI_MMIO_64_SIZE)
}
