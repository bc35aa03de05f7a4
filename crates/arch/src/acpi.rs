//! ACPI tables that describe the platform to the guest: RSDP -> XSDT ->
//! FADT (hardware-reduced; sleep control and reset registers) -> DSDT (COM1,
//! pvpanic, the S5 sleep state), and MADT (one local APIC per vCPU, one IOAPIC).
//! They are written into the BIOS area at `ACPI_START`, where the guest finds
//! the RSDP (it is also passed explicitly through boot_params / PVH start info).

use acpi_tables::{aml, fadt, gas, madt, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use memory::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_START, COM1_IRQ, COM1_PORT, IOAPIC_START, LAPIC_START,
    PVPANIC_PORT,
};
use memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::{Error, Result};

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_TABLE_ID: [u8; 8] = *b"VIREOVM ";
const OEM_REVISION: u32 = 1;

/// IAPC_BOOT_ARCH: no VGA, no CMOS RTC (and, by omission, no 8042: Linux then
/// skips probing for a keyboard controller; `reboot=k` still resets through it).
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

/// The DSDT: platform devices the guest cannot probe by itself.
fn dsdt() -> Vec<u8> {
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
    b.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
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
    let dsdt_addr = place(&dsdt(), "DSDT")?;
    let fadt_addr = place(&fadt(dsdt_addr), "FADT")?;
    let madt_addr = place(&madt(vcpus), "MADT")?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
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
        for t in [dsdt(), fadt(0x1234), madt(4)] {
            let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
            assert_eq!(len, t.len());
            assert!(checksum_ok(&t), "bad checksum in {:?}", &t[0..4]);
        }
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
