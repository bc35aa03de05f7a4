//! `/machine-config` (vCPUs, memory, SMT, huge pages, CPU template) and
//! `PUT /cpu-config` (custom CPU template modifiers).

use serde::{Deserialize, Serialize};

use super::{FieldError, Validate};

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 32;

/// A static CPU template (deprecated in Firecracker, still accepted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    #[default]
    None,
}

/// How guest memory is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (`madvise(MADV_HUGEPAGE)`).
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// The VM's shape. `GET /machine-config` before any PUT reports
/// [`MachineConfiguration::default`]: 1 vCPU, 128 MiB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
    #[serde(default)]
    pub cpu_template: CpuTemplate,
}

impl Default for MachineConfiguration {
    fn default() -> Self {
        MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: CpuTemplate::None,
        }
    }
}

fn check_vcpus(vcpus: u8) -> Result<(), FieldError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(FieldError::new(
            "vcpu_count",
            format!("must be between 1 and {MAX_VCPUS}, got {vcpus}"),
        ));
    }
    Ok(())
}

fn check_mem(mem_mib: usize) -> Result<(), FieldError> {
    if mem_mib == 0 {
        return Err(FieldError::new("mem_size_mib", "must be at least 1"));
    }
    Ok(())
}

fn check_shape(vcpus: u8, mem_mib: usize, smt: bool, huge: HugePages) -> Result<(), FieldError> {
    check_vcpus(vcpus)?;
    check_mem(mem_mib)?;
    if smt && vcpus > 1 && vcpus % 2 == 1 {
        return Err(FieldError::new(
            "vcpu_count",
            format!("must be 1 or even when smt is enabled, got {vcpus}"),
        ));
    }
    if huge == HugePages::Hugetlbfs2M && mem_mib % 2 == 1 {
        return Err(FieldError::new(
            "mem_size_mib",
            format!("must be a multiple of 2 with 2M huge pages, got {mem_mib}"),
        ));
    }
    Ok(())
}

impl Validate for MachineConfiguration {
    fn validate(&self) -> Result<(), FieldError> {
        check_shape(
            self.vcpu_count,
            self.mem_size_mib,
            self.smt,
            self.huge_pages,
        )
    }
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
}

impl MachineConfigUpdate {
    /// `base` with this update applied, checked as a whole.
    pub fn apply(&self, base: &MachineConfiguration) -> Result<MachineConfiguration, FieldError> {
        let merged = MachineConfiguration {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
            cpu_template: self.cpu_template.unwrap_or(base.cpu_template),
        };
        merged.validate()?;
        Ok(merged)
    }
}

impl Validate for MachineConfigUpdate {
    fn validate(&self) -> Result<(), FieldError> {
        self.vcpu_count.map_or(Ok(()), check_vcpus)?;
        self.mem_size_mib.map_or(Ok(()), check_mem)
    }
}

/// A CPUID register name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Bits to set, clear or keep in one CPUID output register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    pub bitmap: String,
}

/// Modifiers for one CPUID leaf and subleaf (x86_64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    pub leaf: String,
    pub subleaf: String,
    pub flags: i32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// Bits to set, clear or keep in one MSR (x86_64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    pub addr: String,
    pub bitmap: String,
}

/// Bits to set, clear or keep in one register (aarch64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmRegisterModifier {
    pub addr: String,
    pub bitmap: String,
}

/// A vCPU feature word to modify (aarch64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuFeatures {
    pub index: i32,
    pub bitmap: String,
}

/// A custom CPU template. The bitmaps are kept as the strings the user
/// wrote; turning them into masks is the VMM's job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<MsrModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reg_modifiers: Vec<ArmRegisterModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_features: Vec<VcpuFeatures>,
}

impl Validate for CpuConfig {
    fn validate(&self) -> Result<(), FieldError> {
        for (i, cap) in self.kvm_capabilities.iter().enumerate() {
            let digits = cap.strip_prefix('!').unwrap_or(cap);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FieldError::new(
                    format!("kvm_capabilities[{i}]"),
                    format!("expected a number, optionally prefixed by '!', got {cap:?}"),
                ));
            }
        }
        Ok(())
    }
}
