//! Tests for the benchmark guest image: its headers parse back, linux-loader
//! loads it and finds the PVH entry, and its code (run by a tiny interpreter
//! of exactly the instructions it uses) prints the marker and resets.

use super::*;
use linux_loader::loader::{elf::Elf, KernelLoader, PvhBootCapability};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[test]
fn headers_parse_back() {
    let elf = minimal_guest_elf();
    assert!(elf.len() < 512, "guest is {} bytes", elf.len());
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "ELFCLASS64");
    assert_eq!(elf[5], 1, "little endian");
    assert_eq!(u16_at(&elf, 16), 2, "ET_EXEC");
    assert_eq!(u16_at(&elf, 18), 62, "EM_X86_64");
    assert_eq!(u64_at(&elf, 24), ENTRY_ADDR);
    let phoff = u64_at(&elf, 32) as usize;
    assert_eq!(u16_at(&elf, 54), 56);
    let phnum = usize::from(u16_at(&elf, 56));
    assert_eq!(phnum, 2);

    let mut saw_load = false;
    let mut saw_note = false;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        let (p_type, off) = (u32_at(&elf, ph), u64_at(&elf, ph + 8) as usize);
        let (paddr, filesz) = (u64_at(&elf, ph + 24), u64_at(&elf, ph + 32) as usize);
        match p_type {
            1 => {
                saw_load = true;
                assert_eq!(paddr, LOAD_ADDR);
                assert_eq!(off, 0);
                assert_eq!(filesz, elf.len());
                assert!(ENTRY_ADDR >= paddr && ENTRY_ADDR < paddr + filesz as u64);
            }
            4 => {
                saw_note = true;
                assert_eq!(u32_at(&elf, off), 4, "namesz");
                assert_eq!(u32_at(&elf, off + 4), 4, "descsz");
                assert_eq!(u32_at(&elf, off + 8), XEN_ELFNOTE_PHYS32_ENTRY);
                assert_eq!(&elf[off + 12..off + 16], b"Xen\0");
                assert_eq!(u64::from(u32_at(&elf, off + 16)), ENTRY_ADDR);
                assert_eq!(filesz, 20);
            }
            other => panic!("unexpected program header type {other}"),
        }
    }
    assert!(saw_load && saw_note);
}

#[test]
fn linux_loader_finds_pvh_entry() {
    let elf = minimal_guest_elf();
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("guest memory");
    let res = Elf::load(
        &mem,
        None,
        &mut Cursor::new(&elf),
        Some(GuestAddress(LOAD_ADDR)),
    )
    .expect("linux-loader loads the guest");
    assert_eq!(res.kernel_load, GuestAddress(ENTRY_ADDR));
    assert_eq!(res.kernel_end, LOAD_ADDR + elf.len() as u64);
    match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => assert_eq!(addr, GuestAddress(ENTRY_ADDR)),
        other => panic!("no PVH entry: {other}"),
    }
    let mut loaded = vec![0u8; elf.len()];
    mem.read_slice(&mut loaded, GuestAddress(LOAD_ADDR))
        .expect("read back");
    assert_eq!(loaded, elf);
}

/// Runs the guest image from its entry point, interpreting exactly the
/// instructions [`code`] uses, and returns its port writes up to `hlt`.
fn interpret(image: &[u8]) -> Vec<(u16, u8)> {
    let mem = |addr: u32| -> u8 {
        let off = (u64::from(addr) - LOAD_ADDR) as usize;
        image[off]
    };
    let (mut eip, mut esi, mut edx, mut al, mut zf) = (ENTRY_ADDR as u32, 0u32, 0u32, 0u8, false);
    let mut outs = Vec::new();
    for _ in 0..10_000 {
        let op = mem(eip);
        let imm8 = mem(eip + 1);
        let rel8 = |len: u32| eip.wrapping_add(len).wrapping_add(imm8 as i8 as u32);
        match op {
            0xfa => eip += 1,
            0xbe => {
                esi = u32::from_le_bytes([imm8, mem(eip + 2), mem(eip + 3), mem(eip + 4)]);
                eip += 5;
            }
            0x66 if imm8 == 0xba => {
                edx = (edx & !0xffff) | u32::from(u16::from_le_bytes([mem(eip + 2), mem(eip + 3)]));
                eip += 4;
            }
            0x8a if imm8 == 0x06 => {
                al = mem(esi);
                eip += 2;
            }
            0x84 if imm8 == 0xc0 => {
                zf = al == 0;
                eip += 2;
            }
            0x74 => eip = if zf { rel8(2) } else { eip + 2 },
            0xeb => eip = rel8(2),
            0xee => {
                outs.push((edx as u16, al));
                eip += 1;
            }
            0x46 => {
                esi += 1;
                eip += 1;
            }
            0xb0 => {
                al = imm8;
                eip += 2;
            }
            0xe6 => {
                outs.push((u16::from(imm8), al));
                eip += 2;
            }
            0xf4 => return outs,
            other => panic!("unexpected opcode {other:#04x} at {eip:#x}"),
        }
    }
    panic!("guest did not reach hlt");
}

#[test]
fn code_prints_marker_then_resets() {
    let outs = interpret(&minimal_guest_elf());
    let (serial, rest) = outs.split_at(MARKER.len());
    assert!(serial.iter().all(|&(port, _)| port == COM1_PORT));
    let printed: Vec<u8> = serial.iter().map(|&(_, b)| b).collect();
    assert_eq!(printed, MARKER);
    assert_eq!(rest, &[(u16::from(I8042_PORT), I8042_RESET)]);
}

#[test]
fn code_fits_before_message() {
    assert_eq!(code(0).len(), CODE_LEN);
}
