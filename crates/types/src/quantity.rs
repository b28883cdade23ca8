//! Resource amounts written the way Kubernetes writes them (`"500m"` of a CPU, `"256Mi"` of memory), as the
//! Python SDK's `resources=` and CoreWeave's API take them, turned into the units of [`crate::SandboxConfig`].

use crate::Invalid;

/// A number of CPU cores from a quantity: `"2"`, `"0.5"` or `"500m"` (millicores).
///
/// ```
/// use hangar_types::quantity::cpus;
/// assert_eq!(cpus("cpu", "500m"), Ok(0.5));
/// assert_eq!(cpus("cpu", "2"), Ok(2.0));
/// assert_eq!(cpus("cpu", "1.5"), Ok(1.5));
/// assert!(cpus("cpu", "lots").unwrap_err().to_string().contains("\"lots\""));
/// ```
pub fn cpus(field: &'static str, q: &str) -> Result<f64, Invalid> {
    let bad = || Invalid::new(field, format!("{q:?} is not a CPU amount (write it like \"2\", \"0.5\" or \"500m\")"));
    let s = q.trim();
    let (num, scale) = match s.strip_suffix('m') {
        Some(milli) => (milli, 1e-3),
        None => (s, 1.0),
    };
    match num.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && !num.starts_with('+') => Ok(n * scale),
        _ => Err(bad()),
    }
}

/// A number of bytes from a quantity: a plain number, or one with a binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`) or
/// decimal (`k`, `M`, `G`, `T`, `P`) suffix, as Kubernetes reads them: `"256Mi"` is 256 × 2²⁰, `"1G"` is 10⁹.
///
/// ```
/// use hangar_types::quantity::bytes;
/// assert_eq!(bytes("memory", "256Mi"), Ok(256 << 20));
/// assert_eq!(bytes("memory", "1G"), Ok(1_000_000_000));
/// assert_eq!(bytes("memory", "1.5Gi"), Ok(3 << 29));
/// assert_eq!(bytes("memory", "4096"), Ok(4096));
/// assert!(bytes("memory", "12 parsecs").is_err());
/// ```
pub fn bytes(field: &'static str, q: &str) -> Result<u64, Invalid> {
    let bad =
        || Invalid::new(field, format!("{q:?} is not an amount of bytes (write it like \"256Mi\", \"2Gi\" or \"1G\")"));
    let s = q.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let total = (n * mult).round();
    match total.is_finite() && total >= 1.0 && total < u64::MAX as f64 {
        true => Ok(total as u64),
        false => Err(bad()),
    }
}
