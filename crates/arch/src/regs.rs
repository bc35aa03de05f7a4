//! Boot vCPU state: the GDT and identity page tables in guest memory, the
//! segment/control registers for 64-bit Linux entry or 32-bit PVH entry, the
//! FPU, and the local APIC's LINT pins.

use hypervisor::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, Vcpu};
use memory::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
use memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::{Error, Result};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const PDE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, paging on, RSI = boot_params.
    Linux64,
    /// Xen PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh,
}

/// A GDT entry from flags, base and limit (the classic packed layout).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The KVM segment a GDT entry describes.
fn segment(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<()> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|_| Error::GuestWrite { what, addr })
}

/// Write the GDT for `mode` and load it into `sregs`.
fn setup_segments(mem: &GuestMemory, sregs: &mut kvm_sregs, mode: EntryMode) -> Result<()> {
    let gdt: [u64; 4] = match mode {
        EntryMode::Linux64 => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        EntryMode::Pvh => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xc09b, 0, 0xffff_ffff), // 32-bit code
            gdt_entry(0xc093, 0, 0xffff_ffff), // data
            gdt_entry(0x008b, 0, 0x67),        // TSS
        ],
    };
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, *entry, BOOT_GDT_START + i as u64 * 8, "GDT")?;
    }
    write(mem, 0u64, BOOT_IDT_START, "IDT")?;

    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    let tss = segment(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    Ok(())
}

/// Identity-map the first 4 GiB with 2 MiB pages for 64-bit entry.
fn setup_page_tables(mem: &GuestMemory, sregs: &mut kvm_sregs) -> Result<()> {
    write(mem, PDPTE_START | PDE_PRESENT_RW, PML4_START, "PML4")?;
    for gib in 0..4u64 {
        let pd = PDE_START + gib * 0x1000;
        write(mem, pd | PDE_PRESENT_RW, PDPTE_START + gib * 8, "PDPT")?;
        for i in 0..512u64 {
            let addr = ((gib << 9) + i) << 21;
            write(
                mem,
                addr | PDE_PRESENT_RW | PDE_HUGE,
                pd + i * 8,
                "page directory",
            )?;
        }
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// Put the boot vCPU at `entry` in `mode`.
pub fn setup_boot_vcpu(vcpu: &Vcpu, mem: &GuestMemory, entry: u64, mode: EntryMode) -> Result<()> {
    let mut sregs = vcpu.sregs()?;
    setup_segments(mem, &mut sregs, mode)?;
    sregs.cr0 = (sregs.cr0 & !X86_CR0_PG) | X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if mode == EntryMode::Linux64 {
        setup_page_tables(mem, &mut sregs)?;
    }
    vcpu.set_sregs(&sregs)?;

    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &Vcpu) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    Ok(vcpu.set_fpu(&fpu)?)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Wire LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware would.
pub fn setup_lapic(vcpu: &Vcpu) -> Result<()> {
    let mut lapic = vcpu.lapic()?;
    let regs = &mut lapic.regs;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let mut bytes = [0u8; 4];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = regs[offset + i] as u8;
        }
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[offset + i] = *b as _;
        }
    }
    Ok(vcpu.set_lapic(&lapic)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_back() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(code.l, 1);
        assert_eq!(code.present, 1);
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
        let data32 = segment(gdt_entry(0xc093, 0, 0xffff_ffff), 2);
        assert_eq!(data32.db, 1);
        assert_eq!(data32.l, 0);
        assert_eq!(data32.type_, 3);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = memory::create_guest_memory(16).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&mem, &mut sregs).unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress(PDE_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, (4u64 << 30) - (2 << 20));
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.efer & EFER_LMA, 0);
    }
}
