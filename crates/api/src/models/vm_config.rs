//! The whole VM's configuration: the body of `GET /vm/config` and the
//! format of the `--config-file` JSON. Keys are hyphenated
//! (`"boot-source"`, `"machine-config"`, ...).

use serde::{Deserialize, Deserializer, Serialize};

use super::{
    parse_json, validate_all, validate_opt, Balloon, BootSource, CpuConfig, Drive, EntropyDevice,
    FieldError, Logger, MachineConfiguration, MemoryHotplugConfig, Metrics, MmdsConfig,
    NetworkInterface, Pmem, SerialDevice, Validate, Vsock,
};
use crate::error::ApiError;

/// The `"cpu-config"` entry: in a config file, Firecracker takes the path
/// of a CPU template file; `GET /vm/config` reports the template itself.
/// Both forms are accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CpuConfigSource {
    /// A JSON file holding a [`CpuConfig`], for the VMM to read.
    File(String),
    Inline(CpuConfig),
}

impl<'de> Deserialize<'de> for CpuConfigSource {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<CpuConfigSource, D::Error> {
        match serde_json::Value::deserialize(de)? {
            serde_json::Value::String(path) => Ok(CpuConfigSource::File(path)),
            value => CpuConfig::deserialize(value)
                .map(CpuConfigSource::Inline)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Validate for CpuConfigSource {
    fn validate(&self) -> Result<(), FieldError> {
        match self {
            CpuConfigSource::File(p) if p.is_empty() => {
                Err(FieldError::new("", "the template path must not be empty"))
            }
            CpuConfigSource::File(_) => Ok(()),
            CpuConfigSource::Inline(c) => c.validate(),
        }
    }
}

/// Every resource of a VM, each optional. Absent resources serialize as
/// `null` and absent device lists as `[]`, as `GET /vm/config` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfiguration {
    #[serde(default)]
    pub balloon: Option<Balloon>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(default, rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(default, rename = "cpu-config")]
    pub cpu_config: Option<CpuConfigSource>,
    #[serde(default)]
    pub logger: Option<Logger>,
    #[serde(default, rename = "machine-config")]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(default)]
    pub metrics: Option<Metrics>,
    #[serde(default, rename = "memory-hotplug")]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    #[serde(default, rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(default, rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub pmem: Vec<Pmem>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub entropy: Option<EntropyDevice>,
    /// Vireo extension (not in Firecracker's FullVmConfiguration): the
    /// serial console, as `PUT /serial` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialDevice>,
}

impl FullVmConfiguration {
    /// Parses and validates a configuration document.
    pub fn from_json(json: &[u8]) -> Result<FullVmConfiguration, ApiError> {
        parse_json("VM configuration", json)
    }

    /// Parses and validates a `--config-file` document, which must name a
    /// boot source (as in Firecracker).
    pub fn from_config_file(json: &[u8]) -> Result<FullVmConfiguration, ApiError> {
        let config = FullVmConfiguration::from_json(json)?;
        if config.boot_source.is_none() {
            return Err(ApiError::InvalidField {
                resource: "VM configuration",
                field: "boot-source".to_string(),
                reason: "required in a config file".to_string(),
            });
        }
        Ok(config)
    }
}

fn check_unique<'a>(
    field: &str,
    key: &str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<(), FieldError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, id) in ids.enumerate() {
        if !seen.insert(id) {
            return Err(FieldError::new(
                format!("{field}[{i}].{key}"),
                format!("duplicate id {id:?}"),
            ));
        }
    }
    Ok(())
}

impl Validate for FullVmConfiguration {
    fn validate(&self) -> Result<(), FieldError> {
        validate_opt("balloon", &self.balloon)?;
        validate_all("drives", &self.drives)?;
        check_unique(
            "drives",
            "drive_id",
            self.drives.iter().map(|d| d.drive_id.as_str()),
        )?;
        let roots = self.drives.iter().filter(|d| d.is_root_device).count();
        if roots > 1 {
            return Err(FieldError::new(
                "drives",
                "at most one drive may have is_root_device",
            ));
        }
        validate_opt("boot-source", &self.boot_source)?;
        validate_opt("cpu-config", &self.cpu_config)?;
        validate_opt("logger", &self.logger)?;
        validate_opt("machine-config", &self.machine_config)?;
        validate_opt("metrics", &self.metrics)?;
        validate_opt("memory-hotplug", &self.memory_hotplug)?;
        validate_opt("mmds-config", &self.mmds_config)?;
        validate_all("network-interfaces", &self.network_interfaces)?;
        check_unique(
            "network-interfaces",
            "iface_id",
            self.network_interfaces.iter().map(|n| n.iface_id.as_str()),
        )?;
        validate_all("pmem", &self.pmem)?;
        check_unique("pmem", "id", self.pmem.iter().map(|p| p.id.as_str()))?;
        validate_opt("vsock", &self.vsock)?;
        validate_opt("entropy", &self.entropy)?;
        validate_opt("serial", &self.serial)
    }
}
