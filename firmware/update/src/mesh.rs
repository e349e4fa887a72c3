//! The management mesh's trust anchors (docs/metrics.md): a PEM bundle of CA
//! certificates that metrics scrapers' client certificates must chain to.
//! Published as [`crate::fleet::MESH_ANCHORS_TARGET`] by the `configs` role,
//! or given to a node as a file (`[management] metrics_anchors_file`).

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::CertificateDer;

/// Largest anchor bundle accepted.
pub const MAX_ANCHORS_BYTES: u64 = 256 << 10;
/// At most this many anchors at once.
pub const MAX_ANCHORS: usize = 32;

/// Why a bundle is not a set of anchors.
#[derive(Debug, thiserror::Error)]
pub enum AnchorsError {
    #[error("not a PEM bundle of certificates: {0}")]
    Pem(String),
    #[error("no CERTIFICATE in the bundle")]
    Empty,
    #[error("{0} certificates, at most {MAX_ANCHORS}")]
    TooMany(usize),
    #[error("certificate {index} is not usable as a trust anchor: {message}")]
    Anchor { index: usize, message: String },
}

/// The certificates of a PEM bundle, each checked to be usable as a trust
/// anchor. Other PEM sections (comments, keys) are an error: a private key
/// has no business in an anchor bundle.
pub fn parse_anchors(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, AnchorsError> {
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| AnchorsError::Pem(e.to_string()))?;
        if kind != SectionKind::Certificate {
            return Err(AnchorsError::Pem(format!(
                "a {kind:?} section; only CERTIFICATE is allowed"
            )));
        }
        out.push(CertificateDer::from(der));
        if out.len() > MAX_ANCHORS {
            return Err(AnchorsError::TooMany(out.len()));
        }
    }
    if out.is_empty() {
        return Err(AnchorsError::Empty);
    }
    for (index, c) in out.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        store.add(c.clone()).map_err(|e| AnchorsError::Anchor {
            index,
            message: e.to_string(),
        })?;
    }
    Ok(out)
}

/// The DER bytes of a certificate read from PEM (the first CERTIFICATE).
pub fn first_cert(pem: &[u8]) -> Option<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn bundles_of_anchors_parse_and_nothing_else_does() {
        let (a, key) = ca("a1");
        let (b, _) = ca("a2");
        assert_eq!(
            parse_anchors(format!("{a}{b}").as_bytes()).unwrap().len(),
            2
        );
        assert!(matches!(parse_anchors(b""), Err(AnchorsError::Empty)));
        assert!(matches!(
            parse_anchors(b"not pem at all\n"),
            Err(AnchorsError::Empty)
        ));
        // A private key has no business in an anchor bundle.
        assert!(matches!(
            parse_anchors(format!("{a}{key}").as_bytes()),
            Err(AnchorsError::Pem(_))
        ));
        let many: String = std::iter::repeat_n(a.as_str(), MAX_ANCHORS + 1).collect();
        assert!(matches!(
            parse_anchors(many.as_bytes()),
            Err(AnchorsError::TooMany(_))
        ));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_anchors(bad.as_bytes()),
            Err(AnchorsError::Anchor { index: 0, .. })
        ));
    }
}
