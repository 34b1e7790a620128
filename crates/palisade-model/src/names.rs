//! Name syntax checks, as the API server applies them (apimachinery's
//! `validation` package). Each returns the reason a value is invalid, in
//! the API server's words where it has them, so errors read familiar.

/// A label value: empty, or at most 63 characters, alphanumeric at both ends,
/// `-`, `_`, `.` inside.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err(format!("{value:?}: must be no more than 63 characters"));
    }
    if !is_qualified_name_part(value) {
        return Err(format!(
            "{value:?}: a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name as a label value
/// but non-empty.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(format!("{key:?}: prefix part must be non-empty"));
        }
        dns_subdomain(prefix).map_err(|e| format!("{key:?}: prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err(format!("{key:?}: name part must be non-empty"));
    }
    if name.len() > 63 {
        return Err(format!("{key:?}: name part must be no more than 63 characters"));
    }
    if !is_qualified_name_part(name) {
        return Err(format!(
            "{key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'_' || b == b'.')
}

/// RFC 1123 label: namespace names, among others.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?}: must be 1 to 63 characters"));
    }
    let b = s.as_bytes();
    let ok_edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !ok_edge(b[0]) || !ok_edge(b[b.len() - 1]) || !b.iter().all(|&c| ok_edge(c) || c == b'-') {
        return Err(format!(
            "{s:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain: object names of most kinds.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?}: must be 1 to 253 characters"));
    }
    for part in s.split('.') {
        dns_label(part).map_err(|_| {
            format!(
                "{s:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            )
        })?;
    }
    Ok(())
}

/// IANA service name (RFC 6335): the form of named container and policy ports.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("{s:?}: must be no more than 15 characters"));
    }
    let b = s.as_bytes();
    if !b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        return Err(format!("{s:?}: must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"));
    }
    if s.contains("--") {
        return Err(format!("{s:?}: must not contain consecutive hyphens"));
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        return Err(format!("{s:?}: must contain at least one letter (a-z)"));
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(format!("{s:?}: must not begin or end with a hyphen"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values() {
        assert!(label_value("").is_ok());
        assert!(label_value("a.b_c-1").is_ok());
        assert!(label_value("-a").is_err());
        assert!(label_value("a-").is_err());
        assert!(label_value("a b").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn qualified_names() {
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("kubernetes.io/metadata.name").is_ok());
        assert!(qualified_name("/app").is_err());
        assert!(qualified_name("Example.com/app").is_err());
        assert!(qualified_name("example.com/").is_err());
        assert!(qualified_name("").is_err());
    }

    #[test]
    fn iana_names() {
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("serve-80-tcp").is_ok());
        assert!(iana_svc_name("80").is_err());
        assert!(iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("-http").is_err());
        assert!(iana_svc_name("HTTP").is_err());
        assert!(iana_svc_name("a-very-long-port-name").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(dns_label("x").is_ok());
        assert!(dns_label("X").is_err());
        assert!(dns_subdomain("a.b-c").is_ok());
        assert!(dns_subdomain("a..b").is_err());
    }
}
