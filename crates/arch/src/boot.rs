//! Loading a kernel and telling it about the machine: the kernel image
//! (bzImage or ELF vmlinux, through linux-loader), the initrd, the command
//! line, the e820 memory map, and either the Linux `boot_params` zero page or
//! the Xen PVH `hvm_start_info`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::bootparam::{boot_params, setup_header};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use memory::layout::{
    ACPI_END, ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_32_START,
    PCI_ECAM_SIZE, PCI_ECAM_START, PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START,
};
use memory::GuestMemory;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::regs::EntryMode;

/// Where the modlist (the initrd, for PVH) goes, after the memory map.
const PVH_MODLIST_START: u64 = 0x6800;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Offset of the 64-bit entry point from a bzImage's protected-mode start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Why a kernel, initrd or command line could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a Linux kernel: neither a bzImage (no 'HdrS' setup header) nor an ELF image")]
    UnknownFormat,
    #[error("cannot load the kernel: {0}")]
    Kernel(#[from] linux_loader::loader::Error),
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("the initrd ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("cannot copy the initrd into guest memory at {0:#x}")]
    InitrdWrite(u64),
}

/// A kernel in guest memory, ready to be entered.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: u64,
    pub mode: EntryMode,
    /// The bzImage's setup header (None for ELF).
    pub setup_header: Option<setup_header>,
    pub end: u64,
}

/// An initrd in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// The kernel image formats Vireo boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Tell a bzImage from an ELF vmlinux by their magic numbers.
pub fn kernel_format(file: &mut File) -> Result<KernelFormat, LoadError> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0))?;
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let mut hdr_magic = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))?;
    let is_bzimage = file.read_exact(&mut hdr_magic).is_ok() && hdr_magic == *b"HdrS";
    file.seek(SeekFrom::Start(0))?;
    match (is_elf, is_bzimage) {
        (true, _) => Ok(KernelFormat::Elf),
        (false, true) => Ok(KernelFormat::BzImage),
        _ => Err(LoadError::UnknownFormat),
    }
}

/// Load a bzImage or ELF kernel, choosing PVH entry when the ELF has the note.
pub fn load_kernel(mem: &GuestMemory, file: &mut File) -> Result<LoadedKernel, LoadError> {
    let format = kernel_format(file)?;
    if format == KernelFormat::Elf {
        let r = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))?;
        let (entry, mode) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr.raw_value(), EntryMode::Pvh),
            _ => (r.kernel_load.raw_value(), EntryMode::Linux64),
        };
        Ok(LoadedKernel {
            entry,
            mode,
            setup_header: None,
            end: r.kernel_end,
        })
    } else {
        let r = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START)))?;
        Ok(LoadedKernel {
            entry: r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
            mode: EntryMode::Linux64,
            setup_header: r.setup_header,
            end: r.kernel_end,
        })
    }
}

/// End of RAM below the 32-bit hole.
fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.last_addr().raw_value().min(MMIO_32_START - 1) + 1
}

/// Copy the initrd to the highest page-aligned spot in low RAM that the
/// kernel accepts (below `initrd_addr_max` for a bzImage), above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    file: &mut File,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, LoadError> {
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut limit = low_ram_end(mem);
    if let Some(hdr) = kernel.setup_header {
        let max = hdr.initrd_addr_max;
        if max != 0 {
            limit = limit.min(u64::from(max) + 1);
        }
    }
    let too_big = LoadError::InitrdTooBig { size, limit };
    let addr = limit.checked_sub(size).ok_or(too_big)? & !0xfff;
    if addr < kernel.end.max(HIMEM_START) {
        return Err(LoadError::InitrdTooBig { size, limit });
    }
    mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
        .map_err(|_| LoadError::InitrdWrite(addr))?;
    Ok(LoadedInitrd { addr, size })
}

/// Write the NUL-terminated command line at `CMDLINE_START`.
pub fn load_kernel_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<usize, LoadError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    Ok(cmdline.len())
}

/// The guest's memory map as (start, size, type).
pub fn memory_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    // The PCI ECAM region: Linux uses MMCONFIG only where it is reserved.
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    map
}

/// Fill and write the Linux zero page for a 64-bit boot.
pub fn write_boot_params(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
    rsdp: u64,
) -> Result<(), crate::Error> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = memory_map(mem);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *type_;
    }
    params.e820_entries = map.len() as u8;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem)?;
    Ok(())
}

/// Fill and write the PVH start info, memory map and module list.
pub fn write_pvh_info(
    mem: &GuestMemory,
    initrd: Option<LoadedInitrd>,
    rsdp: u64,
) -> Result<(), crate::Error> {
    let map: Vec<hvm_memmap_table_entry> = memory_map(mem)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|rd| hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut bp = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    bp.set_sections(&map, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        bp.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory::layout::RAM_64_START;

    #[test]
    fn memory_map_covers_ram_and_skips_the_hole() {
        let mem = memory::create_guest_memory(4096).unwrap();
        let map = memory_map(&mem);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert!(map.contains(&(HIMEM_START, MMIO_32_START - HIMEM_START, E820_RAM)));
        assert!(map.contains(&(RAM_64_START, 1 << 30, E820_RAM)));
        assert!(map.contains(&(PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED)));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = memory::create_guest_memory(64).unwrap();
        let mut f = tempfile_with(&[0x55u8; 4096]);
        assert!(matches!(
            load_kernel(&mem, &mut f),
            Err(LoadError::UnknownFormat)
        ));
    }

    fn tempfile_with(data: &[u8]) -> File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("vireo-arch-test-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(data).unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
