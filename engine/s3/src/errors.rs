//! object_store errors as the `io::Error`s the engine's storage contract
//! wants: its kinds, and messages naming the operation and the object.

use std::io;

/// Maps an object_store error to the `io::Error` kinds the engine relies
/// on, with a message naming the operation and the object.
pub(crate) fn os_error(op: &str, object: &str, e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let (kind, what) = match &e {
        E::NotFound { .. } => (io::ErrorKind::NotFound, "not found"),
        E::AlreadyExists { .. } => (io::ErrorKind::AlreadyExists, "already exists"),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (io::ErrorKind::PermissionDenied, "refused")
        }
        E::InvalidPath { .. } => (io::ErrorKind::InvalidInput, "invalid key"),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            (io::ErrorKind::Unsupported, "not supported")
        }
        E::Precondition { .. } => (io::ErrorKind::Other, "precondition failed"),
        _ => (io::ErrorKind::Other, "failed"),
    };
    io::Error::new(kind, format!("{op} {object}: {what}: {}", chain(&e)))
}

/// An error with its causes (object_store's top-level message often says
/// only "error sending request"; the cause says "timed out", "connection
/// refused", ...).
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = trim_xml_body(&e.to_string());
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = trim_xml_body(&c.to_string());
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        cur = c.source();
    }
    msg
}

/// A message with the XML error body an S3 server sends (`<?xml ...>
/// <Error><Code>NoSuchKey</Code><Message>...`, request ids and all)
/// replaced by its error code: the status before it is kept.
fn trim_xml_body(m: &str) -> String {
    let Some(start) = m.find("<?xml").or_else(|| m.find("<Error>")) else {
        return m.to_string();
    };
    let body = &m[start..];
    let end = body
        .rfind("</Error>")
        .map_or(body.len(), |i| i + "</Error>".len());
    let code = body[..end]
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim())
        .filter(|c| !c.is_empty());
    let mut out = m[..start].trim_end().to_string();
    match code {
        Some(c) => {
            out.push(' ');
            out.push_str(c);
        }
        None => out.push_str(" (error body omitted)"),
    }
    out.push_str(&body[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_error_bodies_are_cut_to_their_code() {
        let m = "Error performing GET http://h/b/k in 1ms: Client error with status 404 Not Found: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>k</Key><RequestID>x</RequestID></Error>";
        assert_eq!(
            trim_xml_body(m),
            "Error performing GET http://h/b/k in 1ms: Client error with status 404 Not Found: NoSuchKey"
        );
        assert_eq!(trim_xml_body("no body here"), "no body here");
        assert_eq!(
            trim_xml_body("status 500: <Error><Message>m</Message></Error> after"),
            "status 500: (error body omitted) after"
        );
    }

    #[test]
    fn errors_keep_the_engine_kinds_and_name_the_object() {
        let nf = object_store::Error::NotFound {
            path: "p/k".into(),
            source: "404".into(),
        };
        let e = os_error("GET", "s3://b/p/k", nf);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().starts_with("GET s3://b/p/k: not found"),
            "{e}"
        );
        let ae = object_store::Error::AlreadyExists {
            path: "p/k".into(),
            source: "412".into(),
        };
        assert_eq!(
            os_error("PUT", "s3://b/p/k", ae).kind(),
            io::ErrorKind::AlreadyExists
        );
        let g = object_store::Error::Generic {
            store: "S3",
            source: "timeout".into(),
        };
        let e = os_error("PUT", "s3://b/p/k", g);
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(e.to_string().contains("s3://b/p/k"), "{e}");
    }
}
