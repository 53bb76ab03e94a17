//! Kubernetes resource quantities (`500m`, `2`, `128Mi`, `1G`) parsed to
//! integers: CPU in millicores, everything else in base units.

/// Parses a CPU quantity into millicores (`250m` → 250, `1.5` → 1500).
pub fn cpu_millis(q: &str) -> Result<i64, String> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m
            .parse::<i64>()
            .map_err(|_| format!("invalid CPU quantity {q:?}"));
    }
    let v: f64 = q
        .parse()
        .map_err(|_| format!("invalid CPU quantity {q:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid CPU quantity {q:?}"));
    }
    Ok((v * 1000.0).round() as i64)
}

/// Parses a byte quantity (`128Mi`, `1G`, `1e6`, `1000`) into bytes.
pub fn bytes(q: &str) -> Result<i64, String> {
    let q = q.trim();
    const SUFFIXES: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let v: f64 = num.parse().map_err(|_| format!("invalid quantity {q:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid quantity {q:?}"));
    }
    Ok((v * mult).round() as i64)
}

/// Parses a quantity of `resource` (`cpu` in millicores, others in units).
pub fn parse(resource: &str, q: &str) -> Result<i64, String> {
    if resource == "cpu" {
        cpu_millis(q)
    } else {
        bytes(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_memory() {
        assert_eq!(cpu_millis("250m").unwrap(), 250);
        assert_eq!(cpu_millis("1.5").unwrap(), 1500);
        assert_eq!(cpu_millis("2").unwrap(), 2000);
        assert!(cpu_millis("lots").is_err());
        assert_eq!(bytes("128Mi").unwrap(), 134_217_728);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("1e3").unwrap(), 1000);
        assert!(bytes("-1").is_err());
        assert!(bytes("12Qi").is_err());
    }
}
