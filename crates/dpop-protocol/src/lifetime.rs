//! Key lifetimes as people write them, in ssh-agent's time format: `600` or `600s` seconds,
//! `10m`, `8h`, `2d`, `1w`, and sums like `1h30m`.

/// Seconds in `text` (`8h`, `1h30m`, `90`), or a message naming what is wrong.
pub fn parse_lifetime(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a lifetime (examples: 90, 90s, 10m, 8h, 2d, 1w, 1h30m)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if let Some(seconds) = number {
        total = total.checked_add(seconds).ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(format!("{text:?}: a lifetime must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(parse_lifetime("90"), Ok(90));
        assert_eq!(parse_lifetime("90s"), Ok(90));
        assert_eq!(parse_lifetime("10m"), Ok(600));
        assert_eq!(parse_lifetime("8h"), Ok(28_800));
        assert_eq!(parse_lifetime("1h30m"), Ok(5_400));
        assert_eq!(parse_lifetime("2D"), Ok(172_800));
        assert_eq!(parse_lifetime("1w"), Ok(604_800));
        for bad in [
            "",
            "h",
            "5x",
            "1.5h",
            "-3",
            "0",
            "0s",
            "99999999999999999999w",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }
}
