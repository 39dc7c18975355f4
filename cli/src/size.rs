//! Sizes on the command line: plain bytes, or a number with a binary suffix
//! (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`; powers of 1024, case-insensitive).
//!
//! A volume size must be a non-zero multiple of the page size (4096 bytes) and at most 64 TiB.

use sixfold_proto::{PAGE_SIZE, VOLUME_BYTES_MAX};

/// Parses a size such as `64G`, `10GiB`, `1T` or `4096`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size (examples: 64G, 10GiB, 1T, 4096)"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{digits:?} is too large a number"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {text:?} (use K, M, G, T or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a volume size and checks its bounds (clap value parser).
pub fn parse_volume_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes == 0 {
        return Err("a volume cannot be empty".into());
    }
    if bytes > VOLUME_BYTES_MAX {
        return Err(format!(
            "{text} is larger than the maximum volume size of 64 TiB ({VOLUME_BYTES_MAX} bytes)"
        ));
    }
    if bytes % PAGE_SIZE as u64 != 0 {
        return Err(format!(
            "{text} ({bytes} bytes) is not a multiple of the page size ({PAGE_SIZE} bytes)"
        ));
    }
    Ok(bytes)
}

/// `68719476736` -> `64 GiB`; sizes that are not a whole number of units keep one decimal.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64G"), Ok(64 << 30));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("1t"), Ok(1 << 40));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("10GB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
    }

    #[test]
    fn checks_volume_bounds() {
        assert_eq!(parse_volume_size("64T"), Ok(64 << 40));
        assert!(parse_volume_size("65T").is_err());
        assert!(parse_volume_size("0").is_err());
        assert!(parse_volume_size("4097").is_err());
    }

    #[test]
    fn renders_human_sizes() {
        assert_eq!(human(64 << 30), "64 GiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 bytes");
    }
}
