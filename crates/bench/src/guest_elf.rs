//! The minimal benchmark guest: a hand-assembled ELF64 image with a Xen PVH
//! entry note, built in memory so no assembler or toolchain is needed.
//!
//! The guest starts as PVH guests do (32-bit protected mode, flat segments,
//! paging off), writes [`MARKER`] to COM1 one byte at a time, asks the i8042
//! controller for a reset (0xFE to port 0x64), and then halts forever in case
//! the reset is not honoured.
//!
//! File layout (everything is one `PT_LOAD` segment from file offset 0, loaded
//! at physical [`LOAD_ADDR`], so a file offset `o` lives at `LOAD_ADDR + o`):
//!
//! | offset | size | contents                                             |
//! |--------|------|------------------------------------------------------|
//! | 0      | 64   | ELF64 header                                         |
//! | 64     | 112  | two program headers: `PT_LOAD`, `PT_NOTE`            |
//! | 176    | 20   | note "Xen", type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`)     |
//! | 208    | 27   | 32-bit code (see [`code`])                           |
//! | 240    | 20   | the marker, NUL-terminated                           |

/// The line the guest prints on COM1; the benchmark waits for it.
pub const MARKER: &[u8] = b"VIREO-BENCH-MARKER\n";

/// Guest-physical address the image is loaded at (1 MiB).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// COM1's base I/O port.
pub const COM1_PORT: u16 = 0x3f8;

/// The i8042 command port; writing [`I8042_RESET`] to it resets the machine.
pub const I8042_PORT: u8 = 0x64;

/// The i8042 "pulse reset line" command.
pub const I8042_RESET: u8 = 0xfe;

/// ELF note type of the PVH 32-bit physical entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PHNUM: usize = 2;
const NOTE_OFF: usize = EHDR_SIZE + PHNUM * PHDR_SIZE; // 176
const NOTE_NAME: &[u8; 4] = b"Xen\0";
const NOTE_SIZE: usize = 12 + NOTE_NAME.len() + 4; // header + name + 32-bit desc
/// File offset of the first instruction.
pub const CODE_OFF: usize = 208;
/// Length of [`code`]'s output.
const CODE_LEN: usize = 27;
/// File offset of the NUL-terminated marker string.
pub const MSG_OFF: usize = 240;
const _: () = assert!(NOTE_OFF + NOTE_SIZE <= CODE_OFF && CODE_OFF + CODE_LEN <= MSG_OFF);

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_R: u32 = 4;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// Guest-physical entry point, as given both in `e_entry` and in the PVH note.
pub const ENTRY_ADDR: u64 = LOAD_ADDR + CODE_OFF as u64;

/// The guest's 32-bit code, assembled by hand. `msg` is the guest-physical
/// address of the NUL-terminated marker.
///
/// ```text
///  off  bytes            instruction
///   0   FA               cli                    ; PVH enters with IF=0; be sure
///   1   BE m0 m1 m2 m3   mov  esi, msg
///   6   66 BA F8 03      mov  dx, 0x3f8         ; COM1 THR
///  10   8A 06            next: mov al, [esi]
///  12   84 C0            test al, al
///  14   74 04            jz   done              ; 16 + 4 = 20
///  16   EE               out  dx, al
///  17   46               inc  esi               ; (a REX prefix in 64-bit mode, not here)
///  18   EB F6            jmp  next              ; 20 - 10 = 10
///  20   B0 FE            done: mov al, 0xfe
///  22   E6 64            out  0x64, al          ; i8042: pulse reset
///  24   F4               halt: hlt
///  25   EB FD            jmp  halt              ; 27 - 3 = 24
/// ```
///
/// The UART's line status register is not polled: every VMM's emulated 16550
/// accepts a byte at any time, and fewer instructions mean fewer exits.
pub fn code(msg: u32) -> Vec<u8> {
    let m = msg.to_le_bytes();
    let [p0, p1] = COM1_PORT.to_le_bytes();
    vec![
        0xfa, // cli
        0xbe,
        m[0],
        m[1],
        m[2],
        m[3], // mov esi, msg
        0x66,
        0xba,
        p0,
        p1, // mov dx, 0x3f8
        0x8a,
        0x06, // next: mov al, [esi]
        0x84,
        0xc0, // test al, al
        0x74,
        0x04, // jz done
        0xee, // out dx, al
        0x46, // inc esi
        0xeb,
        0xf6, // jmp next
        0xb0,
        I8042_RESET, // done: mov al, 0xfe
        0xe6,
        I8042_PORT, // out 0x64, al
        0xf4,       // halt: hlt
        0xeb,
        0xfd, // jmp halt
    ]
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// One ELF64 program header with `p_vaddr == p_paddr`.
fn put_phdr(buf: &mut Vec<u8>, p_type: u32, flags: u32, off: usize, size: usize, align: u64) {
    let addr = LOAD_ADDR + off as u64;
    put_u32(buf, p_type);
    put_u32(buf, flags);
    put_u64(buf, off as u64); // p_offset
    put_u64(buf, addr); // p_vaddr
    put_u64(buf, addr); // p_paddr
    put_u64(buf, size as u64); // p_filesz
    put_u64(buf, size as u64); // p_memsz
    put_u64(buf, align);
}

fn pad_to(buf: &mut Vec<u8>, off: usize) {
    debug_assert!(buf.len() <= off, "layout overlap at offset {off}");
    buf.resize(off, 0);
}

/// Builds the benchmark guest: an ELF64 x86-64 executable with a PVH entry
/// note, loaded at 1 MiB, that prints [`MARKER`] on COM1 and resets through
/// the i8042. A few hundred bytes; see the module comment for the layout.
pub fn minimal_guest_elf() -> Vec<u8> {
    // Every address below is LOAD_ADDR plus a file offset under 1 KiB, so the
    // narrowing to the PVH note's 32-bit field cannot truncate.
    let entry32 = ENTRY_ADDR as u32;
    let msg32 = (LOAD_ADDR + MSG_OFF as u64) as u32;
    let total = MSG_OFF + MARKER.len() + 1;

    let mut elf = Vec::with_capacity(total);
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F']);
    elf.push(2); // EI_CLASS: ELFCLASS64
    elf.push(1); // EI_DATA: little endian
    elf.push(1); // EI_VERSION: EV_CURRENT
    elf.push(0); // EI_OSABI: System V
    pad_to(&mut elf, 16); // EI_ABIVERSION and padding
    put_u16(&mut elf, ET_EXEC);
    put_u16(&mut elf, EM_X86_64);
    put_u32(&mut elf, 1); // e_version
    put_u64(&mut elf, ENTRY_ADDR); // e_entry
    put_u64(&mut elf, EHDR_SIZE as u64); // e_phoff
    put_u64(&mut elf, 0); // e_shoff: no section headers
    put_u32(&mut elf, 0); // e_flags
    put_u16(&mut elf, EHDR_SIZE as u16); // e_ehsize
    put_u16(&mut elf, PHDR_SIZE as u16); // e_phentsize
    put_u16(&mut elf, PHNUM as u16); // e_phnum
    put_u16(&mut elf, 0); // e_shentsize
    put_u16(&mut elf, 0); // e_shnum
    put_u16(&mut elf, 0); // e_shstrndx
    debug_assert_eq!(elf.len(), EHDR_SIZE);

    // Program headers: the whole file as one loadable segment, and the note.
    put_phdr(&mut elf, PT_LOAD, PF_R | PF_X, 0, total, 0x1000);
    put_phdr(&mut elf, PT_NOTE, PF_R, NOTE_OFF, NOTE_SIZE, 4);

    // The PVH note: namesz, descsz, type, name (4-byte aligned), desc.
    pad_to(&mut elf, NOTE_OFF);
    put_u32(&mut elf, NOTE_NAME.len() as u32);
    put_u32(&mut elf, 4);
    put_u32(&mut elf, XEN_ELFNOTE_PHYS32_ENTRY);
    elf.extend_from_slice(NOTE_NAME);
    put_u32(&mut elf, entry32);

    pad_to(&mut elf, CODE_OFF);
    elf.extend_from_slice(&code(msg32));
    pad_to(&mut elf, MSG_OFF);
    elf.extend_from_slice(MARKER);
    elf.push(0);
    debug_assert_eq!(elf.len(), total);
    elf
}

#[cfg(test)]
#[path = "guest_elf_tests.rs"]
mod tests;
