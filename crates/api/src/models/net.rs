//! `/network-interfaces/{iface_id}` and `/mmds/config`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{check_id, validate_opt, FieldError, RateLimiter, Validate};

/// A virtio-net device backed by a host TAP device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// Whether `mac` reads `xx:xx:xx:xx:xx:xx` in hex.
fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Validate for NetworkInterface {
    fn validate(&self) -> Result<(), FieldError> {
        check_id("iface_id", &self.iface_id)?;
        if self.host_dev_name.is_empty() {
            return Err(FieldError::new("host_dev_name", "must not be empty"));
        }
        if let Some(mac) = &self.guest_mac {
            if !is_mac(mac) {
                return Err(FieldError::new(
                    "guest_mac",
                    format!("expected six hex pairs like 06:00:ac:10:00:02, got {mac:?}"),
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return Err(FieldError::new(
                    "mtu",
                    format!("must be between 68 and 65535, got {mtu}"),
                ));
            }
        }
        validate_opt("rx_rate_limiter", &self.rx_rate_limiter)?;
        validate_opt("tx_rate_limiter", &self.tx_rate_limiter)
    }
}

/// `PATCH /network-interfaces/{iface_id}`: new rate limiters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl Validate for PartialNetworkInterface {
    fn validate(&self) -> Result<(), FieldError> {
        check_id("iface_id", &self.iface_id)?;
        validate_opt("rx_rate_limiter", &self.rx_rate_limiter)?;
        validate_opt("tx_rate_limiter", &self.tx_rate_limiter)
    }
}

/// The MMDS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// The address MMDS answers on when none is given.
pub const DEFAULT_MMDS_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The microVM metadata service: version, address and which interfaces
/// may reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    pub network_interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub imds_compat: bool,
}

impl MmdsConfig {
    /// The configured address, or 169.254.169.254.
    pub fn address(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_ADDRESS)
    }
}

impl Validate for MmdsConfig {
    fn validate(&self) -> Result<(), FieldError> {
        for (i, id) in self.network_interfaces.iter().enumerate() {
            check_id(&format!("network_interfaces[{i}]"), id)?;
        }
        if let Some(addr) = self.ipv4_address {
            let [a, b, c, _] = addr.octets();
            if a != 169 || b != 254 || c == 0 || c == 255 {
                return Err(FieldError::new(
                    "ipv4_address",
                    format!("must be link-local, 169.254.1.0 to 169.254.254.255, got {addr}"),
                ));
            }
        }
        Ok(())
    }
}
