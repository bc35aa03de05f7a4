//! `PUT /boot-source`: the kernel, initrd and command line.

use serde::{Deserialize, Serialize};

use super::{FieldError, Validate};

/// The guest's kernel image, optional initrd and kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl Validate for BootSource {
    fn validate(&self) -> Result<(), FieldError> {
        if self.kernel_image_path.is_empty() {
            return Err(FieldError::new("kernel_image_path", "must not be empty"));
        }
        Ok(())
    }
}
