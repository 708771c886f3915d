//! Deadline headers: what a request asks for, and what goes to the upstream.
//!
//! The first present header wins, in this order: `x-request-deadline-ms`
//! (absolute, unix milliseconds), `x-request-timeout-ms`, `grpc-timeout`
//! (gRPC wire format), `x-envoy-expected-rq-timeout-ms`. A malformed value is
//! skipped and counted, never an error.

/// Absolute deadline, unix milliseconds.
pub const REQUEST_DEADLINE: &str = "x-request-deadline-ms";
/// Relative budget, milliseconds.
pub const REQUEST_TIMEOUT: &str = "x-request-timeout-ms";
/// gRPC's own timeout header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// Set by an Envoy in front of this one.
pub const ENVOY_EXPECTED: &str = "x-envoy-expected-rq-timeout-ms";
/// Enforced by Envoy's router when a filter sets it.
pub const ENVOY_UPSTREAM_TIMEOUT: &str = "x-envoy-upstream-rq-timeout-ms";

/// What the request's headers say about its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Incoming {
    /// Remaining budget in ms from the first well-formed header, if any.
    pub budget_ms: Option<u64>,
    /// How many deadline headers were present but malformed.
    pub malformed: u32,
}

/// Turns a header value into a budget in ms, given the time now.
type Parse = fn(&[u8], u64) -> Option<u64>;

/// The deadline headers in precedence order.
const SOURCES: [(&str, Parse); 4] = [
    (REQUEST_DEADLINE, |v, now| {
        parse_ms(v).map(|at| at.saturating_sub(now))
    }),
    (REQUEST_TIMEOUT, |v, _| parse_ms(v)),
    (GRPC_TIMEOUT, |v, _| parse_grpc_timeout(v)),
    (ENVOY_EXPECTED, |v, _| parse_ms(v)),
];

/// Reads the deadline headers. `get` looks a header up by lowercase name.
pub fn incoming<'h>(get: impl Fn(&str) -> Option<&'h [u8]>, now_unix_ms: u64) -> Incoming {
    let mut out = Incoming::default();
    for (name, parse) in SOURCES {
        if let Some(value) = get(name) {
            match parse(value, now_unix_ms) {
                Some(budget) => {
                    out.budget_ms = Some(budget);
                    return out;
                }
                None => out.malformed += 1,
            }
        }
    }
    out
}

/// A non-negative decimal integer of milliseconds, surrounding spaces
/// allowed. Anything else (sign, fraction, unit, overflow) is malformed.
pub fn parse_ms(value: &[u8]) -> Option<u64> {
    parse_digits(value.trim_ascii())
}

/// Decimal digits only, no overflow. Leading zeros are allowed at any
/// length; the fold stops at the first digit that overflows.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// gRPC's `grpc-timeout`: 1 to 8 digits and a unit (H M S m u n), in ms.
/// Sub-millisecond remainders round down.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n = parse_digits(digits)?;
    Some(match unit {
        b'H' => n * 3_600_000,
        b'M' => n * 60_000,
        b'S' => n * 1_000,
        b'm' => n,
        b'u' => n / 1_000,
        b'n' => n / 1_000_000,
        _ => return None,
    })
}

/// `n` in decimal, as `n.to_string()` gives it, without going through
/// `core::fmt` (three of these per forwarded request).
pub fn decimal(n: u64) -> String {
    let mut out = String::with_capacity(20);
    crate::json::push_u64(&mut out, n);
    out
}

/// Formats a budget as a `grpc-timeout` value (at most 8 digits): the
/// finest unit that fits, rounded down, so the upstream is never told it has
/// more time than it has.
pub fn format_grpc_timeout(budget_ms: u64) -> String {
    const MAX_DIGITS: u64 = 99_999_999;
    for (unit, ms_per_unit) in [('m', 1), ('S', 1_000), ('M', 60_000), ('H', 3_600_000)] {
        let n = budget_ms / ms_per_unit;
        if n <= MAX_DIGITS {
            return format!("{n}{unit}");
        }
    }
    format!("{MAX_DIGITS}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(headers: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    type Case<'a> = (&'a [(&'a str, &'a str)], Option<u64>, u32);

    #[test]
    fn each_deadline_format_gives_its_budget() {
        let deadline = (NOW + 1234).to_string();
        let past = (NOW - 5).to_string();
        let cases: &[Case] = &[
            (&[], None, 0),
            (&[(REQUEST_DEADLINE, &deadline)], Some(1234), 0),
            (&[(REQUEST_DEADLINE, &past)], Some(0), 0),
            (&[(REQUEST_TIMEOUT, "2500")], Some(2500), 0),
            (&[(REQUEST_TIMEOUT, " 42 ")], Some(42), 0),
            (&[(REQUEST_TIMEOUT, "0")], Some(0), 0),
            (&[(GRPC_TIMEOUT, "2H")], Some(7_200_000), 0),
            (&[(GRPC_TIMEOUT, "3M")], Some(180_000), 0),
            (&[(GRPC_TIMEOUT, "4S")], Some(4_000), 0),
            (&[(GRPC_TIMEOUT, "250m")], Some(250), 0),
            (&[(GRPC_TIMEOUT, "2500000u")], Some(2_500), 0),
            (&[(GRPC_TIMEOUT, "3000000000n")], None, 1), // 10 digits: too long
            (&[(GRPC_TIMEOUT, "30000000n")], Some(30), 0),
            (&[(GRPC_TIMEOUT, "99999999S")], Some(99_999_999_000), 0),
            (&[(ENVOY_EXPECTED, "15000")], Some(15_000), 0),
        ];
        for (headers, budget, malformed) in cases {
            let got = incoming(lookup(headers), NOW);
            assert_eq!(got.budget_ms, *budget, "{headers:?}");
            assert_eq!(got.malformed, *malformed, "{headers:?}");
        }
    }

    #[test]
    fn first_present_header_wins_in_documented_order() {
        let deadline = (NOW + 100).to_string();
        let all = [
            (ENVOY_EXPECTED, "400"),
            (GRPC_TIMEOUT, "300m"),
            (REQUEST_TIMEOUT, "200"),
            (REQUEST_DEADLINE, deadline.as_str()),
        ];
        for skip in 0..4 {
            let present = &all[..4 - skip];
            let got = incoming(lookup(present), NOW);
            assert_eq!(got.budget_ms, Some([100, 200, 300, 400][skip]));
        }
    }

    #[test]
    fn malformed_values_are_skipped_and_counted() {
        for bad in [
            "",
            " ",
            "-5",
            "+5",
            "1.5",
            "10s",
            "abc",
            "0x10",
            "١٢",
            "99999999999999999999",
            "18446744073709551616",
        ] {
            let got = incoming(lookup(&[(REQUEST_TIMEOUT, bad)]), NOW);
            assert_eq!(
                got,
                Incoming {
                    budget_ms: None,
                    malformed: 1
                },
                "{bad:?}"
            );
        }
        for bad in ["", "5", "m", "5x", "5 m", "-5m", "123456789m", "1.5S", "5h"] {
            let got = incoming(lookup(&[(GRPC_TIMEOUT, bad)]), NOW);
            assert_eq!(got.malformed, 1, "{bad:?}");
            assert_eq!(got.budget_ms, None, "{bad:?}");
        }
        // A malformed first header falls through to the next well-formed one.
        let got = incoming(
            lookup(&[
                (REQUEST_DEADLINE, "soon"),
                (REQUEST_TIMEOUT, "nope"),
                (ENVOY_EXPECTED, "900"),
            ]),
            NOW,
        );
        assert_eq!(
            got,
            Incoming {
                budget_ms: Some(900),
                malformed: 2
            }
        );
    }

    #[test]
    fn non_utf8_and_huge_values_are_malformed_not_fatal() {
        let huge = vec![b'9'; 100_000];
        assert_eq!(parse_ms(&huge), None);
        assert_eq!(parse_ms(&[0xff, 0xfe]), None);
        assert_eq!(parse_grpc_timeout(&[b'1', 0xc3]), None);
        assert_eq!(parse_ms(b"18446744073709551615"), Some(u64::MAX));
        // Zero-padded past 20 characters is still a number that fits.
        assert_eq!(parse_ms(b"000000000000000000000042"), Some(42));
        assert_eq!(parse_ms(&[b'0'; 100_000]), Some(0));
    }

    #[test]
    fn grpc_timeout_is_formatted_within_eight_digits() {
        assert_eq!(format_grpc_timeout(0), "0m");
        assert_eq!(format_grpc_timeout(60_000), "60000m");
        assert_eq!(format_grpc_timeout(99_999_999), "99999999m");
        assert_eq!(format_grpc_timeout(100_000_000), "100000S");
        // Budgets past 8 digits of seconds move to minutes, then hours.
        assert_eq!(format_grpc_timeout(100_000_000_000), "1666666M");
        assert_eq!(format_grpc_timeout(u64::MAX), "99999999H");
        for ms in [0, 1, 59_999, 600_000, 99_999_999] {
            assert_eq!(
                parse_grpc_timeout(format_grpc_timeout(ms).as_bytes()),
                Some(ms)
            );
        }
    }

    #[test]
    fn decimal_matches_to_string() {
        let mut n = Some(1u64);
        while let Some(p) = n {
            for m in [p - 1, p, p.saturating_add(1), p.saturating_mul(3) - 1] {
                assert_eq!(decimal(m), m.to_string());
            }
            n = p.checked_mul(7);
        }
        assert_eq!(decimal(u64::MAX), u64::MAX.to_string());
        assert_eq!(decimal(0), "0");
    }
}
