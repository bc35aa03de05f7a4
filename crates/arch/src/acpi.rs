//! ACPI tables that describe the platform to the guest: RSDP -> XSDT ->
//! FADT (hardware-reduced; sleep control and reset registers) -> DSDT (COM1,
//! pvpanic, the S5 sleep state, and with PCI the host bridge `\_SB_.PCI0`
//! and a motherboard-resources device reserving ECAM; one `LNRO0005` device
//! per virtio-mmio transport), MADT (one local APIC
//! per vCPU, one IOAPIC) and, with PCI, MCFG (the ECAM region).
//! They are written into the BIOS area at `ACPI_START`, where the guest finds
//! the RSDP (it is also passed explicitly through boot_params / PVH start info).

use acpi_tables::{aml, fadt, gas, madt, mcfg, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use memory::layout::{
    self, ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_START, COM1_IRQ, COM1_PORT, I8042_IRQ, I8042_PORT, IOAPIC_START,
    LAPIC_START, PVPANIC_PORT,
};
use memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::{Error, Result};

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_TABLE_ID: [u8; 8] = *b"VIREOVM ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: an 8042 keyboard controller (for Ctrl-Alt-Del from the
/// API), no VGA, no CMOS RTC.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> gas::GAS {
    gas::GAS::new(
        gas::AddressSpace::SystemIo,
        8,
        0,
        gas::AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The PCI host bridge the tables describe: segment 0, bus 0, ECAM and the
/// 32-bit BAR window at their fixed addresses (`memory::layout`), and the
/// 64-bit BAR window, which depends on the RAM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    pub mmio64_start: u64,
    pub mmio64_size: u64,
}

impl PciHost {
    /// The host bridge of a guest with `ram_mib` MiB of RAM.
    pub fn for_memory(ram_mib: u64) -> Self {
        let (mmio64_start, mmio64_size) = layout::pci_mmio64_window(ram_mib);
        PciHost {
            mmio64_start,
            mmio64_size,
        }
    }
}

/// A virtio-mmio device as the DSDT describes it: its 4 KiB register block
/// and its interrupt line (an IOAPIC pin, edge-triggered, active high).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub base: u64,
    pub gsi: u32,
}

/// What the tables describe beyond the fixed platform devices.
#[derive(Clone, Copy, Debug, Default)]
pub struct Platform<'a> {
    pub pci: Option<&'a PciHost>,
    pub virtio_mmio: &'a [VirtioMmioDevice],
}

/// `\_SB_.VMxx`: what Linux's virtio_mmio driver binds through ACPI
/// (`_HID` LNRO0005), so guests need no `virtio_mmio.device=` arguments.
fn virtio_mmio_aml(devices: &[VirtioMmioDevice], sink: &mut Sdt) {
    for (i, d) in devices.iter().enumerate() {
        let uid = i as u32;
        aml::Device::new(
            format!("_SB_.VM{:02X}", i & 0xff).as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(
                            true,
                            d.base as u32,
                            layout::VIRTIO_MMIO_DEVICE_SIZE as u32,
                        ),
                        &aml::Interrupt::new(true, true, false, false, d.gsi),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB_.PCI0` (a PCIe host bridge; its _CRS gives the bus range, the
/// configuration ports, the I/O windows and both BAR windows) and
/// `\_SB_.MBRD`, motherboard resources that reserve the ECAM region so
/// Linux accepts MMCONFIG.
fn pci_host_aml(pci: &PciHost, sink: &mut Sdt) {
    let mmio32_end = (layout::PCI_MMIO_32_START + layout::PCI_MMIO_32_SIZE - 1) as u32;
    let mmio64_end = pci.mmio64_start + pci.mmio64_size - 1;
    let cfg_port = layout::PCI_CONFIG_IO_PORT;
    aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::AddressSpace::new_bus_number(0u16, u16::from(layout::PCI_LAST_BUS)),
                    &aml::IO::new(cfg_port, cfg_port, 1, layout::PCI_CONFIG_IO_PORT_SIZE as u8),
                    &aml::AddressSpace::new_io(0u16, cfg_port - 1, None),
                    &aml::AddressSpace::new_io(
                        cfg_port + layout::PCI_CONFIG_IO_PORT_SIZE as u16,
                        0xffffu16,
                        None,
                    ),
                    &aml::AddressSpace::new_memory(
                        aml::AddressSpaceCacheable::NotCacheable,
                        true,
                        layout::PCI_MMIO_32_START as u32,
                        mmio32_end,
                        None,
                    ),
                    &aml::AddressSpace::new_memory(
                        aml::AddressSpaceCacheable::NotCacheable,
                        true,
                        pci.mmio64_start,
                        mmio64_end,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(sink);
    aml::Device::new(
        "_SB_.MBRD".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Memory32Fixed::new(
                    true,
                    layout::PCI_ECAM_START as u32,
                    layout::PCI_ECAM_SIZE as u32,
                )]),
            ),
        ],
    )
    .to_aml_bytes(sink);
}

/// MCFG: one ECAM region for segment 0, buses 0..=PCI_LAST_BUS.
fn mcfg() -> Vec<u8> {
    let mut m = mcfg::MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(layout::PCI_ECAM_START, 0, 0, layout::PCI_LAST_BUS);
    to_bytes(&m)
}

/// The DSDT: platform devices the guest cannot probe by itself.
fn dsdt(platform: &Platform) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // Each object is built and emitted in one statement: the aml builders
    // borrow their children, so the temporaries must live that long.
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    // The keyboard controller, so Linux's i8042 driver finds it by PNP.
    aml::Device::new(
        "_SB_.KBD_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(I8042_PORT, I8042_PORT, 1, 1),
                    &aml::IO::new(I8042_PORT + 4, I8042_PORT + 4, 1, 1),
                    &aml::Interrupt::new(true, true, false, false, I8042_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    aml::Device::new(
        "_SB_.PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    if let Some(pci) = platform.pci {
        pci_host_aml(pci, &mut dsdt);
    }
    virtio_mmio_aml(platform.virtio_mmio, &mut dsdt);
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&ACPI_S5_SLEEP_TYPE, &ACPI_S5_SLEEP_TYPE, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut dsdt);
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = fadt::FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    b.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    b.reset_reg = io_register(ACPI_RESET_PORT);
    b.reset_value = ACPI_RESET_VALUE;
    b.sleep_control_reg = io_register(ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_register(ACPI_SLEEP_STATUS_PORT);
    to_bytes(&b.finalize())
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut m = madt::MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        madt::LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..vcpus {
        m.add_structure(madt::ProcessorLocalApic::new(
            id,
            id,
            madt::EnabledStatus::Enabled,
        ));
    }
    m.add_structure(madt::IoApic::new(vcpus, IOAPIC_START as u32, 0));
    to_bytes(&m)
}

/// Build the tables for `vcpus` CPUs, write them to guest memory and return
/// the RSDP's address.
pub fn write_acpi_tables(mem: &GuestMemory, vcpus: u8) -> Result<u64> {
    write_acpi_tables_with_pci(mem, vcpus, None)
}

/// Like `write_acpi_tables`, and with `pci` also describe the PCI host
/// bridge (DSDT) and its ECAM region (MCFG).
pub fn write_acpi_tables_with_pci(
    mem: &GuestMemory,
    vcpus: u8,
    pci: Option<&PciHost>,
) -> Result<u64> {
    write_acpi_tables_for(
        mem,
        vcpus,
        &Platform {
            pci,
            virtio_mmio: &[],
        },
    )
}

/// Like `write_acpi_tables`, describing everything in `platform`.
pub fn write_acpi_tables_for(mem: &GuestMemory, vcpus: u8, platform: &Platform) -> Result<u64> {
    let pci = platform.pci;
    // RSDP first (fixed address), then each table on a 16-byte boundary.
    let mut next = ACPI_START + 64;
    let mut place = |bytes: &[u8], what: &'static str| -> Result<u64> {
        let addr = next;
        let end = addr + bytes.len() as u64;
        if end > ACPI_END {
            return Err(Error::GuestWrite { what, addr });
        }
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|_| Error::GuestWrite { what, addr })?;
        next = (end + 15) & !15;
        Ok(addr)
    };
    let dsdt_addr = place(&dsdt(platform), "DSDT")?;
    let fadt_addr = place(&fadt(dsdt_addr), "FADT")?;
    let madt_addr = place(&madt(vcpus), "MADT")?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if pci.is_some() {
        xsdt.add_entry(place(&mcfg(), "MCFG")?);
    }
    let xsdt_addr = place(&to_bytes(&xsdt), "XSDT")?;
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(ACPI_START))
        .map_err(|_| Error::GuestWrite {
            what: "RSDP",
            addr: ACPI_START,
        })?;
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        for t in [dsdt(&Platform::default()), fadt(0x1234), madt(4)] {
            let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
            assert_eq!(len, t.len());
            assert!(checksum_ok(&t), "bad checksum in {:?}", &t[0..4]);
        }
    }

    #[test]
    fn pci_tables_are_valid_and_describe_the_host_bridge() {
        let pci = PciHost::for_memory(512);
        let d = dsdt(&Platform {
            pci: Some(&pci),
            virtio_mmio: &[],
        });
        let m = mcfg();
        for t in [&d, &m] {
            let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
            assert_eq!(len, t.len());
            assert!(checksum_ok(t));
        }
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(find(&d, b"PCI0"));
        assert!(find(&d, b"MBRD"));
        assert!(find(&d, b"_CRS"));
        // EISA id PNP0A08 compressed: 0x41d0 0x0a08 (big-endian product).
        assert!(find(&d, &[0x41, 0xd0, 0x0a, 0x08]));
        assert!(find(&d, &[0x41, 0xd0, 0x0c, 0x02]));
        assert!(find(&d, &pci.mmio64_start.to_le_bytes()));
        assert!(find(&d, &(layout::PCI_ECAM_START as u32).to_le_bytes()));
        // MCFG: 36-byte header, 8 reserved, one 16-byte entry.
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(&m[0..4], b"MCFG");
        assert_eq!(&m[44..52], &layout::PCI_ECAM_START.to_le_bytes());
        assert_eq!((m[54], m[55]), (0, layout::PCI_LAST_BUS));
    }

    #[test]
    fn virtio_mmio_devices_are_lnro0005_with_memory_and_interrupt() {
        let devices = [
            VirtioMmioDevice {
                base: 0xe100_0000,
                gsi: 5,
            },
            VirtioMmioDevice {
                base: 0xe100_1000,
                gsi: 6,
            },
        ];
        let d = dsdt(&Platform {
            pci: None,
            virtio_mmio: &devices,
        });
        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
        assert_eq!(len, d.len());
        assert!(checksum_ok(&d));
        let count = |needle: &[u8]| d.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005\0"), 2);
        assert_eq!(count(b"VM00"), 1);
        assert_eq!(count(b"VM01"), 1);
        for dev in devices {
            // Memory32Fixed: tag 0x86, length 9, read-write, base, 4 KiB.
            let mut mem32 = vec![0x86, 9, 0, 1];
            mem32.extend_from_slice(&(dev.base as u32).to_le_bytes());
            mem32.extend_from_slice(&0x1000u32.to_le_bytes());
            assert_eq!(count(&mem32), 1, "{dev:?}");
            // Extended Interrupt: tag 0x89, length 6, consumer + edge
            // (active high, exclusive), one interrupt number.
            let mut irq = vec![0x89, 6, 0, 0x03, 1];
            irq.extend_from_slice(&dev.gsi.to_le_bytes());
            assert_eq!(count(&irq), 1, "{dev:?}");
        }
    }

    #[test]
    fn xsdt_lists_mcfg_only_with_pci() {
        let mem = memory::create_guest_memory(16).unwrap();
        let xsdt_entries = |mem: &GuestMemory| -> Vec<[u8; 4]> {
            let xsdt: u64 = mem.read_obj(GuestAddress(ACPI_START + 24)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(xsdt + 4)).unwrap();
            (0..(len as u64 - 36) / 8)
                .map(|i| {
                    let t: u64 = mem.read_obj(GuestAddress(xsdt + 36 + 8 * i)).unwrap();
                    mem.read_obj(GuestAddress(t)).unwrap()
                })
                .collect()
        };
        write_acpi_tables(&mem, 1).unwrap();
        assert_eq!(xsdt_entries(&mem), vec![*b"FACP", *b"APIC"]);
        write_acpi_tables_with_pci(&mem, 1, Some(&PciHost::for_memory(16))).unwrap();
        assert_eq!(xsdt_entries(&mem), vec![*b"FACP", *b"APIC", *b"MCFG"]);
    }

    #[test]
    fn madt_has_one_lapic_per_vcpu() {
        let m = madt(3);
        // header 44 bytes, 3 local APICs of 8 bytes, 1 IOAPIC of 12 bytes.
        assert_eq!(m.len(), 44 + 3 * 8 + 12);
    }

    #[test]
    fn rsdp_points_at_xsdt() {
        let mem = memory::create_guest_memory(16).unwrap();
        let rsdp = write_acpi_tables(&mem, 2).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        let xsdt: u64 = mem.read_obj(GuestAddress(rsdp + 24)).unwrap();
        let mut xsig = [0u8; 4];
        mem.read_slice(&mut xsig, GuestAddress(xsdt)).unwrap();
        assert_eq!(&xsig, b"XSDT");
    }
}
