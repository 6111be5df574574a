//! Shared attribute parsing helpers.

use syn::{Attribute, LitStr};

/// Parses a duration such as `"90s"`, `"10m"`, `"1h30m"` or `"500ms"` into
/// milliseconds; `"never"` gives `None`.
pub(crate) fn parse_duration(lit: &LitStr) -> syn::Result<Option<u64>> {
    let text = lit.value();
    let s = text.trim();
    if s == "never" {
        return Ok(None);
    }
    let bad = || {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid duration {text:?}: expected for example \"500ms\", \"30s\", \"10m\", \"1h30m\" or \"never\""
            ),
        )
    };
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(syn::Error::new(
            lit.span(),
            "idle_timeout must be positive (use \"never\" to disable passivation)",
        ));
    }
    Ok(Some(total))
}

/// The attributes named `name` among `attrs`.
pub(crate) fn find<'a>(
    attrs: &'a [Attribute],
    name: &'a str,
) -> impl Iterator<Item = &'a Attribute> {
    attrs.iter().filter(move |a| a.path().is_ident(name))
}

/// An error for a key the attribute does not know.
pub(crate) fn unknown_key(path: &syn::Path, attr: &str, known: &[&str]) -> syn::Error {
    let key = path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_else(|| "this".into());
    syn::Error::new_spanned(
        path,
        format!(
            "unknown `{attr}` attribute `{key}`; expected one of: {}",
            known.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use proc_macro2::Span;
    use syn::LitStr;

    fn ms(s: &str) -> syn::Result<Option<u64>> {
        parse_duration(&LitStr::new(s, Span::call_site()))
    }

    #[test]
    fn durations() {
        assert_eq!(ms("500ms").unwrap(), Some(500));
        assert_eq!(ms("30s").unwrap(), Some(30_000));
        assert_eq!(ms("10m").unwrap(), Some(600_000));
        assert_eq!(ms("1h30m").unwrap(), Some(5_400_000));
        assert_eq!(ms("2d").unwrap(), Some(172_800_000));
        assert_eq!(ms("never").unwrap(), None);
        for bad in [
            "",
            "10",
            "m",
            "10 m",
            "1.5s",
            "0s",
            "10x",
            "99999999999999999999d",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} accepted");
        }
    }
}
