//! The seed addresses a client enters a cluster by (docs/cluster.md,
//! "Routing").
//!
//! `ClientConfig::address` (or `$DND_CACHE_ADDR`) may list several seeds,
//! comma-separated. The client's entry connection goes to one of them: the
//! seeds are tried in the order given, each bounded by the connect timeout,
//! and the first that answers the handshake is used. A seed that refuses
//! the connection, times out, or answers that it cannot take one now
//! (CACHE_009, CACHE_011) is skipped; any other refusal of the handshake (a
//! bad token) is returned at once, since every node of a cluster would
//! refuse it too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::connection::Connection;
use crate::error::{ClientError, Status};
use dnd_cache_proto::pb as proto;

/// A client's seeds and the one it last entered by.
pub(crate) struct Seeds {
    list: Vec<String>,
    /// Index of the seed last used: where the next walk starts, so a live
    /// seed is kept and a dead one is left behind.
    last: AtomicUsize,
}

impl Seeds {
    /// The seeds of `text`: one `host:port` or a comma-separated list of
    /// them, whitespace around the commas ignored. An empty entry or one
    /// that is not `host:port` is a [`ClientError::Config`] naming it.
    pub(crate) fn parse(text: &str) -> Result<Seeds, ClientError> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        let mut list = Vec::with_capacity(entries.len());
        for entry in &entries {
            if entry.is_empty() {
                return Err(ClientError::Config(format!(
                    "address {text:?}: empty seed address"
                )));
            }
            if let Some(problem) = host_port_problem(entry) {
                return Err(ClientError::Config(if entries.len() == 1 {
                    format!("address {text:?}: {problem}")
                } else {
                    format!("address {text:?}: seed {entry:?}: {problem}")
                }));
            }
            list.push(entry.to_string());
        }
        Ok(Seeds {
            list,
            last: AtomicUsize::new(0),
        })
    }

    /// Opens a connection to the first seed that answers the handshake,
    /// starting at the seed last used; returns its address with it. With
    /// one seed, that seed's error as it is; with several, when none
    /// answers, an I/O error naming every seed tried.
    pub(crate) async fn open(
        &self,
        hello: &proto::CacheConnection,
        connect_timeout: Duration,
        max_frame_bytes: usize,
    ) -> Result<(String, Connection), ClientError> {
        let n = self.list.len();
        if n == 1 {
            let conn = Connection::open(&self.list[0], hello, connect_timeout, max_frame_bytes).await?;
            return Ok((self.list[0].clone(), conn));
        }
        let mut tried = Vec::with_capacity(n);
        let mut kind = std::io::ErrorKind::Other;
        for i in self.order() {
            let seed = &self.list[i];
            match Connection::open(seed, hello, connect_timeout, max_frame_bytes).await {
                Ok(conn) => {
                    self.last.store(i, Ordering::Relaxed);
                    return Ok((seed.clone(), conn));
                }
                Err(e) if skips_seed(&e) => {
                    kind = io_kind(&e);
                    tried.push(format!("{seed} ({e})"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Io(std::io::Error::new(
            kind,
            format!("no seed answered the handshake: tried {}", tried.join("; ")),
        )))
    }

    /// The order of the next walk: from the seed last used, around the list.
    fn order(&self) -> impl Iterator<Item = usize> {
        let (start, n) = (self.last.load(Ordering::Relaxed), self.list.len());
        (start..n).chain(0..start)
    }
}

/// Why `entry` is not `host:port` (a port of 1-65535), if it is not.
fn host_port_problem(entry: &str) -> Option<String> {
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Some("not host:port".into());
    };
    if host.is_empty() {
        return Some("no host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !port.starts_with('+') => None,
        _ => Some(format!("port {port:?} is not 1-65535")),
    }
}

/// Whether a walk goes on to the next seed after `e`: the seed did not
/// answer, or answered that it cannot take a connection now.
fn skips_seed(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Timeout | ClientError::Closed | ClientError::Protocol(_) => true,
        ClientError::Server { status, .. } => {
            matches!(status, Status::TooManyConnections | Status::Unavailable)
        }
        _ => false,
    }
}

/// The I/O error kind closest to `e`, for the error of a failed walk.
fn io_kind(e: &ClientError) -> std::io::ErrorKind {
    match e {
        ClientError::Io(io) => io.kind(),
        ClientError::Timeout => std::io::ErrorKind::TimedOut,
        ClientError::Closed => std::io::ErrorKind::ConnectionAborted,
        ClientError::Protocol(_) => std::io::ErrorKind::InvalidData,
        _ => std::io::ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(text: &str) -> Vec<String> {
        Seeds::parse(text).unwrap().list
    }

    fn problem(text: &str) -> String {
        match Seeds::parse(text) {
            Err(ClientError::Config(message)) => message,
            Err(e) => panic!("{text}: not a configuration error: {e}"),
            Ok(s) => panic!("{text}: accepted as {:?}", s.list),
        }
    }

    #[test]
    fn an_address_is_one_seed_or_a_list() {
        assert_eq!(seeds("10.0.0.1:7000"), ["10.0.0.1:7000"]);
        assert_eq!(seeds("localhost:7000"), ["localhost:7000"]);
        let three = ["10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"];
        assert_eq!(seeds("10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"), three);
        // Whitespace around the commas (and the ends) is ignored.
        assert_eq!(seeds(" 10.0.0.1:7000 ,\t10.0.0.2:7001,  [::1]:7002 "), three);
    }

    #[test]
    fn a_bad_seed_is_a_configuration_error_naming_it() {
        for (text, message) in [
            ("a:1,,b:2", r#"address "a:1,,b:2": empty seed address"#),
            ("a:1,", r#"address "a:1,": empty seed address"#),
            (",a:1", r#"address ",a:1": empty seed address"#),
            ("a:1, ,b:2", r#"address "a:1, ,b:2": empty seed address"#),
            (
                "a:1,b:x",
                r#"address "a:1,b:x": seed "b:x": port "x" is not 1-65535"#,
            ),
            (
                "a:1,b:0",
                r#"address "a:1,b:0": seed "b:0": port "0" is not 1-65535"#,
            ),
            (
                "a:1,b:65536",
                r#"address "a:1,b:65536": seed "b:65536": port "65536" is not 1-65535"#,
            ),
            (
                "a:1,b:+5",
                r#"address "a:1,b:+5": seed "b:+5": port "+5" is not 1-65535"#,
            ),
            ("a:1,b", r#"address "a:1,b": seed "b": not host:port"#),
            ("a:1,:2", r#"address "a:1,:2": seed ":2": no host"#),
            ("nohost", r#"address "nohost": not host:port"#),
            ("h:99999", r#"address "h:99999": port "99999" is not 1-65535"#),
            ("", r#"address "": empty seed address"#),
        ] {
            assert_eq!(problem(text), message, "{text}");
        }
    }

    #[test]
    fn a_walk_starts_at_the_seed_last_used() {
        let seeds = Seeds::parse("a:1,b:2,c:3").unwrap();
        assert_eq!(seeds.order().collect::<Vec<_>>(), [0, 1, 2]);
        seeds.last.store(1, Ordering::Relaxed);
        assert_eq!(seeds.order().collect::<Vec<_>>(), [1, 2, 0]);
    }

    #[test]
    fn a_walk_skips_seeds_that_cannot_answer_only() {
        let server = |status| ClientError::Server {
            status,
            message: String::new(),
        };
        assert!(skips_seed(&ClientError::Timeout));
        assert!(skips_seed(&ClientError::Closed));
        assert!(skips_seed(
            &std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()
        ));
        assert!(skips_seed(&server(Status::Unavailable)));
        // A refused token would be refused by every node.
        assert!(!skips_seed(&server(Status::InvalidCredentials)));
    }
}
