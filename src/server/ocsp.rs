//! What a stapled OCSP response says (RFC 6960 §4.2.1), read from its DER: whether the
//! responder answered at all, about which certificate, with what status, and until when.
//! A response that would fail every client (an error status, another certificate's, a
//! revoked or unknown one) is refused when loaded; the time it holds until is kept, so a
//! response that expires while served is no longer stapled (RFC 6066 §8 leaves the
//! client to ask the responder itself, where an expired staple fails a strict client).
//!
//! Only the fields needed are read; the signature is the client's to verify.

use std::time::{Duration, SystemTime};

/// A response fit to staple: its bytes, and when it stops holding (`nextUpdate`; none
/// when the responder always has newer information, RFC 6960 §4.2.2.1).
#[derive(Debug, Clone)]
pub struct OcspStaple {
    pub bytes: Vec<u8>,
    pub next_update: Option<SystemTime>,
}

impl OcspStaple {
    /// Whether the response still holds at `now`.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.next_update.is_none_or(|until| now < until)
    }
}

/// Why a file is no response to staple for its certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("not a DER OCSP response ({0}; PEM or base64 must be decoded first)")]
    Malformed(&'static str),
    #[error("the responder did not answer: its status is {0} (1 malformedRequest, 2 internalError, 3 tryLater, 5 sigRequired, 6 unauthorized)")]
    Unsuccessful(u8),
    #[error("not a basic OCSP response (id-pkix-ocsp-basic), which is all TLS clients read")]
    NotBasic,
    #[error("it speaks of no certificate with this certificate's serial number: the response of another certificate")]
    OtherCertificate,
    #[error("it says the certificate is revoked")]
    Revoked,
    #[error("the responder does not know the certificate (status unknown)")]
    Unknown,
}

/// DER tags used here (X.690 §8.1.2).
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OBJECT_ID: u8 = 0x06;
const ENUMERATED: u8 = 0x0a;
const GENERALIZED_TIME: u8 = 0x18;
/// Context-specific tags: `[n]` constructed (EXPLICIT, or IMPLICIT over a SEQUENCE) and
/// primitive (IMPLICIT over NULL).
const fn constructed(n: u8) -> u8 {
    0xa0 | n
}
const fn primitive(n: u8) -> u8 {
    0x80 | n
}
/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1, as its DER content.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// Reads DER elements one after another.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Der<'a> {
        Der { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element: its tag and content.
    fn any(&mut self) -> Result<(u8, &'a [u8]), OcspError> {
        let cut = OcspError::Malformed("an element runs past its end");
        let (&tag, rest) = self.rest.split_first().ok_or(cut.clone())?;
        let (&first, rest) = rest.split_first().ok_or(cut.clone())?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(OcspError::Malformed("a length that is not DER"));
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
            (len, &rest[count..])
        };
        if rest.len() < len {
            return Err(cut);
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Ok((tag, content))
    }

    /// The next element's content, which must carry `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], OcspError> {
        match self.any()? {
            (found, content) if found == tag => Ok(content),
            _ => Err(OcspError::Malformed(what)),
        }
    }

    /// The next element's content if it carries `tag`, else nothing is read.
    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, OcspError> {
        if self.peek_tag() == Some(tag) {
            self.any().map(|(_, content)| Some(content))
        } else {
            Ok(None)
        }
    }
}

/// Reads `bytes` as the OCSP response to staple with `certificate` (the leaf's DER).
///
/// # Errors
/// [`OcspError`] when the bytes are not a DER OCSP response, or say something no client
/// would accept for this certificate.
pub fn read_staple(bytes: Vec<u8>, certificate: &[u8]) -> Result<OcspStaple, OcspError> {
    let serial = certificate_serial(certificate)?;
    let mut file = Der::new(&bytes);
    let response = file.expect(SEQUENCE, "no OCSPResponse SEQUENCE")?;
    if !file.is_empty() {
        return Err(OcspError::Malformed("bytes after the response"));
    }
    let mut response = Der::new(response);
    let status = response.expect(ENUMERATED, "no responseStatus")?;
    match status {
        [0] => {}
        [code] => return Err(OcspError::Unsuccessful(*code)),
        _ => return Err(OcspError::Malformed("a responseStatus out of range")),
    }
    let response_bytes = response.expect(
        constructed(0),
        "a successful response without responseBytes",
    )?;
    let mut response_bytes =
        Der::new(Der::new(response_bytes).expect(SEQUENCE, "no ResponseBytes")?);
    if response_bytes.expect(OBJECT_ID, "no responseType")? != OCSP_BASIC {
        return Err(OcspError::NotBasic);
    }
    let basic = response_bytes.expect(OCTET_STRING, "no response")?;
    let basic = Der::new(basic).expect(SEQUENCE, "no BasicOCSPResponse")?;
    let data = Der::new(basic).expect(SEQUENCE, "no ResponseData")?;
    let mut data = Der::new(data);
    data.optional(constructed(0))?; // version
    match data.any()? {
        (tag, _) if tag == constructed(1) || tag == constructed(2) => {} // responderID
        _ => return Err(OcspError::Malformed("no responderID")),
    }
    data.expect(GENERALIZED_TIME, "no producedAt")?;
    let mut responses = Der::new(data.expect(SEQUENCE, "no responses")?);
    while !responses.is_empty() {
        let single = responses.expect(SEQUENCE, "a SingleResponse that is no SEQUENCE")?;
        if let Some(next_update) = single_response_for(single, serial)? {
            return Ok(OcspStaple { bytes, next_update });
        }
    }
    Err(OcspError::OtherCertificate)
}

/// For a SingleResponse about the certificate with `serial`: its nextUpdate, if it
/// has one, once its status is good; `None` when it speaks of another certificate.
fn single_response_for(
    single: &[u8],
    serial: &[u8],
) -> Result<Option<Option<SystemTime>>, OcspError> {
    let mut single = Der::new(single);
    let mut cert_id = Der::new(single.expect(SEQUENCE, "no CertID")?);
    cert_id.expect(SEQUENCE, "no hashAlgorithm")?;
    cert_id.expect(OCTET_STRING, "no issuerNameHash")?;
    cert_id.expect(OCTET_STRING, "no issuerKeyHash")?;
    if cert_id.expect(INTEGER, "no serialNumber")? != serial {
        return Ok(None);
    }
    match single.any()? {
        (tag, _) if tag == primitive(0) => {}
        (tag, _) if tag == constructed(1) => return Err(OcspError::Revoked),
        (tag, _) if tag == primitive(2) => return Err(OcspError::Unknown),
        _ => return Err(OcspError::Malformed("no certStatus")),
    }
    single.expect(GENERALIZED_TIME, "no thisUpdate")?;
    let Some(next_update) = single.optional(constructed(0))? else {
        return Ok(Some(None));
    };
    let time = Der::new(next_update).expect(GENERALIZED_TIME, "a nextUpdate that is no time")?;
    generalized_time(time)
        .map(|time| Some(Some(time)))
        .ok_or(OcspError::Malformed("a nextUpdate that is no time"))
}

/// The serialNumber of an X.509 certificate's DER (RFC 5280 §4.1).
fn certificate_serial(certificate: &[u8]) -> Result<&[u8], OcspError> {
    let unreadable = OcspError::Malformed("the certificate's serial number is unreadable");
    let read = || -> Result<&[u8], OcspError> {
        let certificate = Der::new(certificate).expect(SEQUENCE, "")?;
        let mut tbs = Der::new(Der::new(certificate).expect(SEQUENCE, "")?);
        tbs.optional(constructed(0))?; // version
        tbs.expect(INTEGER, "")
    };
    read().map_err(|_| unreadable)
}

/// A GeneralizedTime in UTC, `YYYYMMDDHHMMSS[.fff]Z` (X.680 §46; RFC 5280 §4.1.2.5.2
/// drops the fraction, which some responders still send).
fn generalized_time(text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let whole = text.split_once('.').map_or(text, |(whole, _)| whole);
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize, len: usize| whole[at..at + len].parse::<u32>().ok();
    let month = time::Month::try_from(u8::try_from(field(4, 2)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(field(0, 4)?).ok()?,
        month,
        u8::try_from(field(6, 2)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(field(8, 2)?).ok()?,
        u8::try_from(field(10, 2)?).ok()?,
        u8::try_from(field(12, 2)?).ok()?,
    )
    .ok()?;
    let seconds = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    let seconds = u64::try_from(seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element of `tag` around `content`.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            len @ 0..0x80 => out.push(len as u8),
            len @ 0x80..0x100 => out.extend([0x81, len as u8]),
            len => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate's DER as far as its serial number (all that is read of it).
    fn certificate(serial: &[u8]) -> Vec<u8> {
        let tbs = [tlv(0xa0, &tlv(INTEGER, &[2])), tlv(INTEGER, serial)].concat();
        tlv(SEQUENCE, &tlv(SEQUENCE, &tbs))
    }

    /// An OCSP response about `serial` with `status` (its DER) and `next_update`.
    fn response(serial: &[u8], status: &[u8], next_update: Option<&str>) -> Vec<u8> {
        let cert_id = tlv(
            SEQUENCE,
            &[
                tlv(SEQUENCE, &tlv(OBJECT_ID, &[0x2b, 0x0e, 0x03, 0x02, 0x1a])),
                tlv(OCTET_STRING, &[1; 20]),
                tlv(OCTET_STRING, &[2; 20]),
                tlv(INTEGER, serial),
            ]
            .concat(),
        );
        let mut single = [
            cert_id,
            status.to_vec(),
            tlv(GENERALIZED_TIME, b"20261201000000Z"),
        ]
        .concat();
        if let Some(next) = next_update {
            single.extend(tlv(0xa0, &tlv(GENERALIZED_TIME, next.as_bytes())));
        }
        let data = tlv(
            SEQUENCE,
            &[
                tlv(0xa2, &tlv(OCTET_STRING, &[3; 20])),
                tlv(GENERALIZED_TIME, b"20261201000000Z"),
                tlv(SEQUENCE, &tlv(SEQUENCE, &single)),
            ]
            .concat(),
        );
        let basic = tlv(
            SEQUENCE,
            &[
                data,
                tlv(SEQUENCE, &tlv(OBJECT_ID, &[0x2a, 0x86, 0x48])),
                tlv(0x03, &[0, 9, 9, 9]),
            ]
            .concat(),
        );
        let response_bytes = tlv(
            SEQUENCE,
            &[tlv(OBJECT_ID, OCSP_BASIC), tlv(OCTET_STRING, &basic)].concat(),
        );
        tlv(
            SEQUENCE,
            &[tlv(ENUMERATED, &[0]), tlv(0xa0, &response_bytes)].concat(),
        )
    }

    fn good() -> Vec<u8> {
        vec![primitive(0), 0]
    }

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    /// RFC 6960 §4.2.1: a good response about the certificate, with the time it holds until.
    #[test]
    fn a_good_response_for_the_certificate_is_read_with_its_next_update() {
        let serial = [0x01, 0x7f, 0x33];
        let staple = read_staple(
            response(&serial, &good(), Some("20261208120000Z")),
            &certificate(&serial),
        )
        .unwrap();
        assert_eq!(staple.next_update, Some(at("2026-12-08T12:00:00Z")));
        assert!(staple.holds_at(at("2026-12-08T11:59:59Z")));
        assert!(!staple.holds_at(at("2026-12-08T12:00:00Z")));
        let fraction = read_staple(
            response(&serial, &good(), Some("20261208120000.5Z")),
            &certificate(&serial),
        )
        .unwrap();
        assert_eq!(fraction.next_update, Some(at("2026-12-08T12:00:00Z")));
        let always = read_staple(response(&serial, &good(), None), &certificate(&serial)).unwrap();
        assert!(always.holds_at(at("2099-01-01T00:00:00Z")), "no nextUpdate");
    }

    /// What no client accepts is refused: an error status (RFC 6960 §4.2.1), another
    /// certificate's response, a revoked or unknown status, and what is not DER.
    #[test]
    fn responses_no_client_accepts_are_refused() {
        let serial = [0x05];
        let cert = certificate(&serial);
        let next = Some("20261208120000Z");
        assert_eq!(
            read_staple(vec![0x30, 0x03, 0x0a, 0x01, 0x03], &cert).unwrap_err(),
            OcspError::Unsuccessful(3),
            "tryLater"
        );
        assert_eq!(
            read_staple(response(&[0x06], &good(), next), &cert).unwrap_err(),
            OcspError::OtherCertificate
        );
        let revoked = tlv(constructed(1), &tlv(GENERALIZED_TIME, b"20261101000000Z"));
        assert_eq!(
            read_staple(response(&serial, &revoked, next), &cert).unwrap_err(),
            OcspError::Revoked
        );
        assert_eq!(
            read_staple(response(&serial, &[primitive(2), 0], next), &cert).unwrap_err(),
            OcspError::Unknown
        );
        let mut cut = response(&serial, &good(), next);
        cut.truncate(cut.len() - 3);
        assert!(matches!(
            read_staple(cut, &cert).unwrap_err(),
            OcspError::Malformed(_)
        ));
        assert!(matches!(
            read_staple(b"-----BEGIN OCSP RESPONSE-----".to_vec(), &cert).unwrap_err(),
            OcspError::Malformed(_)
        ));
        assert!(matches!(
            read_staple(response(&serial, &good(), Some("2026120812Z")), &cert).unwrap_err(),
            OcspError::Malformed(_)
        ));
    }

    /// X.690 §8.1.3: long definite lengths are read; indefinite ones are not DER.
    #[test]
    fn der_lengths() {
        let long = tlv(OCTET_STRING, &[7; 300]);
        assert_eq!(&long[..4], &[OCTET_STRING, 0x82, 0x01, 0x2c]);
        assert_eq!(Der::new(&long).any().unwrap().1.len(), 300);
        assert!(Der::new(&[0x30, 0x80, 0, 0]).any().is_err(), "indefinite");
        assert!(Der::new(&[0x30, 0x82, 0x01]).any().is_err(), "cut length");
    }
}
