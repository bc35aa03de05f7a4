//! `vireo-exit`: a 75-byte static x86-64 program for the guest that reads
//! one byte from stdin and writes it to the VMM's exit port with `outb`.
//!
//! Debian's kernels are built without `CONFIG_DEVPORT`, so `/dev/port` does
//! not exist and busybox alone cannot write an I/O port. This program asks
//! for access with `ioperm(port, 1, 1)` (PID 1 runs as root) and does the
//! write itself. It exits 0 after the write (normally the VM has ended by
//! then) and 1 if stdin was empty or `ioperm` failed. It is assembled here
//! by hand so that building the guest needs no toolchain; the listing is:
//!
//! ```text
//!  0: 48 83 ec 10      sub  rsp, 16
//!  4: 31 ff            xor  edi, edi        ; fd 0
//!  6: 48 89 e6         mov  rsi, rsp
//!  9: ba 01 00 00 00   mov  edx, 1
//!  e: 31 c0            xor  eax, eax        ; SYS_read
//! 10: 0f 05            syscall
//! 12: 48 83 f8 01      cmp  rax, 1
//! 16: 75 27            jne  fail
//! 18: bf PP PP 00 00   mov  edi, PORT
//! 1d: be 01 00 00 00   mov  esi, 1
//! 22: ba 01 00 00 00   mov  edx, 1
//! 27: b8 ad 00 00 00   mov  eax, 173        ; SYS_ioperm
//! 2c: 0f 05            syscall
//! 2e: 48 85 c0         test rax, rax
//! 31: 75 0c            jne  fail
//! 33: 8a 04 24         mov  al, [rsp]
//! 36: 66 ba PP PP      mov  dx, PORT
//! 3a: ee               out  dx, al
//! 3b: 31 ff            xor  edi, edi
//! 3d: eb 05            jmp  exit
//! 3f: bf 01 00 00 00   fail: mov edi, 1
//! 44: b8 3c 00 00 00   exit: mov eax, 60    ; SYS_exit
//! 49: 0f 05            syscall
//! ```

const LOAD_ADDR: u64 = 0x40_0000;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

fn code(port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    #[rustfmt::skip]
    let code = vec![
        0x48, 0x83, 0xec, 0x10,
        0x31, 0xff,
        0x48, 0x89, 0xe6,
        0xba, 0x01, 0x00, 0x00, 0x00,
        0x31, 0xc0,
        0x0f, 0x05,
        0x48, 0x83, 0xf8, 0x01,
        0x75, 0x27,
        0xbf, lo, hi, 0x00, 0x00,
        0xbe, 0x01, 0x00, 0x00, 0x00,
        0xba, 0x01, 0x00, 0x00, 0x00,
        0xb8, 0xad, 0x00, 0x00, 0x00,
        0x0f, 0x05,
        0x48, 0x85, 0xc0,
        0x75, 0x0c,
        0x8a, 0x04, 0x24,
        0x66, 0xba, lo, hi,
        0xee,
        0x31, 0xff,
        0xeb, 0x05,
        0xbf, 0x01, 0x00, 0x00, 0x00,
        0xb8, 0x3c, 0x00, 0x00, 0x00,
        0x0f, 0x05,
    ];
    code
}

/// The complete ELF executable that writes its stdin byte to `port`.
pub fn exit_port_program(port: u16) -> Vec<u8> {
    let code = code(port);
    let total = (EHDR_SIZE + PHDR_SIZE + code.len()) as u64;
    let entry = LOAD_ADDR + (EHDR_SIZE + PHDR_SIZE) as u64;
    let mut elf = Vec::with_capacity(total as usize);
    // ELF header: 64-bit, little-endian, SysV, ET_EXEC, x86-64.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&entry.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx

    // One PT_LOAD, R+X, mapping the whole file.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&total.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&total.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_port_patching() {
        let elf = exit_port_program(0x506);
        assert_eq!(elf.len(), 64 + 56 + 75);
        let code = &elf[120..];
        assert_eq!(&code[0x18..0x1b], &[0xbf, 0x06, 0x05]);
        assert_eq!(&code[0x36..0x3a], &[0x66, 0xba, 0x06, 0x05]);
        assert_eq!(code[0x3a], 0xee);
    }

    /// The kernel loads and runs it; with empty stdin it exits 1 before
    /// touching any port, so this is safe on any host.
    #[test]
    fn runs_and_exits_1_on_empty_stdin() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vireo-exitport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("vireo-exit");
        std::fs::write(&p, exit_port_program(0x506)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread forking while the file was open for writing
        // can make exec fail with ETXTBSY for a moment; retry.
        let mut tries = 0;
        let status = loop {
            match std::process::Command::new(&p)
                .stdin(std::process::Stdio::null())
                .status()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.unwrap(),
            }
        };
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(status.code(), Some(1));
    }
}
