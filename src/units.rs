//! Sizes as users write them (`4K`, `1M`, `2G`) and the block-size newtype.

use std::fmt;
use std::str::FromStr;

/// Errors from parsing a size or validating a block size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitsError {
    /// The text is not a number with an optional K/M/G/T suffix.
    #[error("invalid size {text:?}: expected a number with an optional K, M, G or T suffix")]
    Syntax {
        /// What the user wrote.
        text: String,
    },
    /// The size does not fit in 64 bits.
    #[error("size {text:?} is too large")]
    Overflow {
        /// What the user wrote.
        text: String,
    },
    /// A block size that is not a power of two within bounds.
    #[error("block size {size} must be a power of two between {min} and {max}")]
    BlockSize {
        /// The rejected size.
        size: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

/// Parses `512`, `4K`, `4KiB`, `1M`, `2G`, `1T` (binary multiples, case-insensitive).
///
/// # Errors
/// [`UnitsError::Syntax`] for malformed text, [`UnitsError::Overflow`] past `u64::MAX`.
pub fn parse_size(text: &str) -> Result<u64, UnitsError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(UnitsError::Syntax { text: text.into() });
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(UnitsError::Syntax { text: text.into() }),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| UnitsError::Overflow { text: text.into() })?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| UnitsError::Overflow { text: text.into() })
}

/// Formats a byte count for humans: `1.5 GiB`, `4.0 KiB`, `17 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Granularity of change detection: a power of two from 512 B to 64 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    /// Smallest block size (one classic sector).
    pub const MIN: u32 = 512;
    /// Largest block size.
    pub const MAX: u32 = 64 << 20;
    /// The default comparison granularity: one page, the unit filesystems write.
    pub const DEFAULT: BlockSize = BlockSize(4096);

    /// Validates a block size.
    ///
    /// # Errors
    /// [`UnitsError::BlockSize`] unless `size` is a power of two in bounds.
    pub fn new(size: u64) -> Result<Self, UnitsError> {
        if size.is_power_of_two() && (Self::MIN as u64..=Self::MAX as u64).contains(&size) {
            Ok(BlockSize(size as u32))
        } else {
            Err(UnitsError::BlockSize {
                size,
                min: Self::MIN as u64,
                max: Self::MAX as u64,
            })
        }
    }

    /// The size in bytes.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The size in bytes as `u64`.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// The size in bytes as `usize`.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for BlockSize {
    type Err = UnitsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockSize::new(parse_size(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4kib"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("-4").is_err());
        assert!(matches!(
            parse_size("99999999999T"),
            Err(UnitsError::Overflow { .. })
        ));
    }

    #[test]
    fn block_size_bounds() {
        assert!(BlockSize::new(4096).is_ok());
        assert!(BlockSize::new(512).is_ok());
        assert!(BlockSize::new(256).is_err());
        assert!(BlockSize::new(3000).is_err());
        assert!(BlockSize::new(128 << 20).is_err());
        assert_eq!("64K".parse::<BlockSize>().map(BlockSize::get), Ok(65536));
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
