//! Go's `time.ParseDuration` (the text form of `metav1.Duration` and of kube-proxy's duration
//! flags): `300ms`, `-1.5h`, `2h45m`, `0`; units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`.

use std::time::Duration;

/// A duration as Go reads it: it may be negative (validation decides whether that is allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

impl GoDuration {
    pub fn is_negative(&self) -> bool {
        self.negative && !self.magnitude.is_zero()
    }
}

/// Parses `text` as Go does; the error says what is wrong with it.
pub fn parse_go_duration(text: &str) -> Result<GoDuration, String> {
    let invalid = || format!("invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit in duration {text:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {text:?}")),
        };
        nanos += value * scale;
        rest = tail;
    }
    Ok(GoDuration {
        negative,
        magnitude: Duration::from_nanos(nanos.round() as u64),
    })
}

/// A non-negative duration (what every kube-proxy duration flag accepts in practice).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = parse_go_duration(text.trim())?;
    if parsed.is_negative() {
        return Err(format!("duration {text:?} must not be negative"));
    }
    Ok(parsed.magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        let ok = |s: &str| parse_duration(s).expect(s);
        assert_eq!(ok("1s"), Duration::from_secs(1));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2h45m0.5s"), Duration::from_millis(9_900_500));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10\u{b5}s"), Duration::from_micros(10));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        assert!(
            parse_go_duration("-1s")
                .expect("negative parses")
                .is_negative()
        );
        assert!(parse_duration("-1s").is_err());
        for bad in ["", "10", "5 parsecs", "1d", "s", ".s", "1s2"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
