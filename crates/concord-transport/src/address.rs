//! NATS server addresses as people write them: one URL, or several separated by commas,
//! each optionally carrying credentials (`nats://user:password@host:port`, the form the
//! `nats` tool takes). The NATS client library connects to such a URL but does not send
//! its credentials, so they are taken out here and given to it as options; and every
//! message that names a server shows the URL with the password masked ([`redact`]).

/// Server URLs without their credentials, and the credentials they carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    pub urls: Vec<String>,
    /// User and password (percent-decoded) of the first URL that has them.
    pub credentials: Option<(String, String)>,
}

impl Servers {
    /// Client options that authenticate with these credentials (none without).
    pub fn options(&self) -> async_nats::ConnectOptions {
        match &self.credentials {
            Some((user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            None => async_nats::ConnectOptions::new(),
        }
    }
}

/// Split `list` (comma-separated URLs) into URLs and credentials. Two URLs naming
/// different users or passwords are an error: one connection authenticates once.
pub fn parse(list: &str) -> Result<Servers, String> {
    let mut urls = Vec::new();
    let mut credentials: Option<(String, String)> = None;
    for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (bare, found) = split(url);
        if let Some(found) = found {
            match &credentials {
                Some(c) if *c != found => {
                    return Err(format!("the NATS URLs {} carry different credentials", redact(list)));
                }
                _ => credentials = Some(found),
            }
        }
        urls.push(bare);
    }
    Ok(Servers { urls, credentials })
}

/// `list` with every password replaced by `***`.
pub fn redact(list: &str) -> String {
    list.split(',')
        .map(|url| {
            let Some((scheme, user, rest)) = parts(url.trim()) else { return url.to_string() };
            match user.split_once(':') {
                Some((name, _)) => format!("{scheme}://{name}:***@{rest}"),
                None => format!("{scheme}://***@{rest}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `scheme`, `userinfo`, `host...`: the pieces of a URL with credentials.
fn parts(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, after) = url.split_once("://")?;
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let at = after[..authority_end].rfind('@')?;
    Some((scheme, &after[..at], &after[at + 1..]))
}

fn split(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, userinfo, rest)) = parts(url) else { return (url.to_string(), None) };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    (format!("{scheme}://{rest}"), Some((decode(user), decode(password))))
}

/// Percent-decoding (`%40` is `@`); a malformed escape stays as written.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_urls() {
        let s = parse("nats://us-east-1:s%40cret@127.0.0.1:4222, nats://127.0.0.1:4223").unwrap();
        assert_eq!(s.urls, ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]);
        assert_eq!(s.credentials, Some(("us-east-1".into(), "s@cret".into())));
        let plain = parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(plain.urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(plain.credentials, None);
        assert!(parse("nats://a:1@h:1,nats://a:2@h:2").is_err(), "two passwords for one connection");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("nats://admin:hunter2@h:1,nats://h:2"), "nats://admin:***@h:1,nats://h:2");
        assert_eq!(redact("tls://token@h:1"), "tls://***@h:1");
        assert!(!redact("nats://a:b@c@h:1").contains('b'), "the last @ ends the userinfo");
    }
}
