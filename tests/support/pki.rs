//! A test certificate authority in Consul Connect's profile (rcgen, ring):
//! EC P-256 keys, leaves with an empty subject and a critical
//! `spiffe://` URI SAN, both EKUs, monotonic serials; and helpers to write
//! a node's identity files the way a rotating agent does (aside, then
//! rename).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

static SERIAL: AtomicU64 = AtomicU64::new(2);

/// The SPIFFE ID of service `svc` in trust domain `td`, datacenter dc1.
pub fn service_id(td: &str, svc: &str) -> String {
    format!("spiffe://{td}/ns/default/dc/dc1/svc/{svc}")
}

/// A root CA of trust domain `td`.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// The root certificate, PEM.
    pub pem: String,
}

/// A leaf: certificate and key, PEM.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate (chain of one), PEM.
    pub cert: String,
    /// The PKCS#8 private key, PEM.
    pub key: String,
    /// The serial number.
    pub serial: u64,
}

impl Ca {
    /// A new root for trust domain `td`.
    pub fn new(td: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("pri-{}.ca.{td}", SERIAL.fetch_add(1, Ordering::SeqCst)),
        );
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{td}").as_str().try_into().unwrap(),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A leaf for `uri`, valid from 2020 to 2100.
    pub fn leaf(&self, uri: &str) -> Leaf {
        self.leaf_valid(uri, (2020, 2100))
    }

    /// A leaf for `uri`, valid from January 1st of `years.0` to that of
    /// `years.1` (an expired one with years in the past).
    pub fn leaf_valid(&self, uri: &str, years: (i32, i32)) -> Leaf {
        self.leaf_inner(uri, years, None)
    }

    /// A leaf for `uri` whose subject has common name `cn` (a CA that
    /// copies a requested subject): to test that nothing but the URI SAN
    /// names the caller.
    pub fn leaf_with_cn(&self, uri: &str, cn: &str) -> Leaf {
        self.leaf_inner(uri, (2020, 2100), Some(cn))
    }

    fn leaf_inner(&self, uri: &str, years: (i32, i32), cn: Option<&str>) -> Leaf {
        let mut l = CertificateParams::default();
        l.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            l.distinguished_name.push(DnType::CommonName, cn);
        }
        l.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        l.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
            KeyUsagePurpose::DataEncipherment,
        ];
        l.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        l.use_authority_key_identifier_extension = true;
        let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
        l.serial_number = Some(SerialNumber::from(serial));
        l.not_before = date_time_ymd(years.0, 1, 1);
        l.not_after = date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = l
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
        }
    }
}

impl Ca {
    /// A server certificate for DNS name `dns` (an HTTPS endpoint, such as
    /// a Consul agent's), valid from 2020 to 2100.
    pub fn server_leaf(&self, dns: &str) -> Leaf {
        let mut l = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        l.distinguished_name = DistinguishedName::new();
        l.distinguished_name.push(DnType::CommonName, dns);
        l.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        l.use_authority_key_identifier_extension = true;
        let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
        l.serial_number = Some(SerialNumber::from(serial));
        l.not_before = date_time_ymd(2020, 1, 1);
        l.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = l
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
        }
    }
}

/// Where a node's identity files are.
#[derive(Debug, Clone)]
pub struct Files {
    /// The certificate chain.
    pub chain: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The trust bundle.
    pub bundle: PathBuf,
}

impl Files {
    /// `cert.pem`, `key.pem` and `bundle.pem` in `dir` (created).
    pub fn in_dir(dir: &Path) -> Files {
        std::fs::create_dir_all(dir).unwrap();
        Files {
            chain: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            bundle: dir.join("bundle.pem"),
        }
    }

    /// Writes the leaf (key first, then chain) and the bundle, each
    /// aside and renamed into place.
    pub fn write(&self, leaf: &Leaf, bundle: &str) {
        replace(&self.key, &leaf.key);
        replace(&self.chain, &leaf.cert);
        replace(&self.bundle, bundle);
    }
}

/// Writes `text` to `path` atomically (aside, then rename).
pub fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}
