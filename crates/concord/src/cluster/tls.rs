//! `concord cluster tls`: a local certificate authority and one certificate, signed by
//! it, that every NATS server presents on the links between regions (the backbone's
//! routes and the leaf connections of the regions' servers) and uses to prove itself on
//! them (both ends check the other's certificate against the CA: mutual TLS).
//! `concord cluster up` makes them in `DIR/secrets/tls` when missing; compose's
//! `build.sh` in its secrets directory, for the containers' host names.
//!
//! For a real deployment, use the organisation's own CA and certificates; the files
//! (`ca.pem`, `server.pem`, `server-key.pem`) are what the NATS configuration names.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// How long the CA is valid, in years.
const CA_YEARS: i32 = 10;
/// How long the servers' certificate is valid, in years (make new ones before: run the
/// command again on an empty directory, and restart the servers).
const SERVER_YEARS: i32 = 2;
/// The most host names one certificate may name.
const HOSTS_MAX: usize = 256;

/// The files of a made CA and certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") }
    }

    /// Whether every file is there.
    pub fn exist(&self) -> bool {
        [&self.ca, &self.cert, &self.key].iter().all(|p| p.is_file())
    }

    /// The `tls` block of a NATS link: this certificate, and the other end's checked
    /// against the CA (`verify`). `indent`: the block's indentation.
    pub fn nats_block(&self, indent: &str) -> String {
        format!(
            "{indent}tls {{\n{indent}  cert_file: \"{}\"\n{indent}  key_file: \"{}\"\n{indent}  ca_file: \"{}\"\n{indent}  verify: true\n{indent}  timeout: 5\n{indent}}}\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }
}

/// Make a CA and a certificate for `hosts` (names or IP addresses) in `dir`. Refuses to
/// replace files that exist. `readable`: the private keys readable by other users too
/// (for containers whose user is not this one; keep `dir` itself closed then).
pub fn make(dir: &Path, hosts: &[String], readable: bool) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles::in_dir(dir);
    let ca_key_file = dir.join("ca-key.pem");
    for f in [&files.ca, &files.cert, &files.key, &ca_key_file] {
        if f.exists() {
            bail!("{} exists: remove the directory's files to make new ones", f.display());
        }
    }
    if hosts.is_empty() || hosts.len() > HOSTS_MAX {
        bail!("a certificate names 1 to {HOSTS_MAX} hosts, not {}", hosts.len());
    }
    let this_year = chrono::Utc::now().year();
    let today = chrono::Utc::now().date_naive();
    let (month, day) = (today.month() as u8, today.day().min(28) as u8);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "Concord local CA");
    ca.distinguished_name.push(DnType::OrganizationName, "Concord");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = rcgen::date_time_ymd(this_year - 1, month, day);
    ca.not_after = rcgen::date_time_ymd(this_year + CA_YEARS, month, day);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();

    let mut server = CertificateParams::new(hosts.to_vec()).context("the host names")?;
    server.distinguished_name.push(DnType::CommonName, hosts[0].as_str());
    server.distinguished_name.push(DnType::OrganizationName, "Concord");
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // A server on its listening ports, a client on the connections it makes (routes and
    // leaf connections are made by servers too).
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    server.not_before = rcgen::date_time_ymd(this_year - 1, month, day);
    server.not_after = rcgen::date_time_ymd(this_year + SERVER_YEARS, month, day);
    let server_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&files.ca, &ca_cert.pem(), true)?;
    write(&ca_key_file, &ca_key_pem, false)?;
    write(&files.cert, &server_cert.pem(), true)?;
    write(&files.key, &server_key.serialize_pem(), readable)?;
    Ok(files)
}

fn write(path: &Path, text: &str, readable: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if readable { 0o644 } else { 0o600 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_a_certificate_it_signed_and_never_replaces_them() {
        let dir = std::env::temp_dir().join(format!("concord-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let hosts = vec!["127.0.0.1".to_string(), "backbone-us-east".to_string()];
        let files = make(&dir, &hosts, false).unwrap();
        assert!(files.exist());
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is this user's alone");
        let again = make(&dir, &hosts, false).unwrap_err().to_string();
        assert!(again.contains("exists"), "{again}");
        assert!(make(&dir.join("none"), &[], false).is_err(), "a certificate names a host");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
