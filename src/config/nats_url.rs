//! Credentials in a NATS URL (`nats://user:password@host:4222`,
//! `nats://token@host:4222`): async-nats dials the address but does not
//! send the URL's credentials by itself, so every connection of ours takes
//! them from the URL here; logs and `--print-config` show the URL with
//! the secret masked.

//!
//! A URL may list several servers of one NATS cluster, comma separated
//! (`nats://a:4222,nats://b:4222`): a connection dials one and moves to
//! another when it fails.

use async_nats::{ConnectOptions, ServerAddr};

/// The servers a URL lists.
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks every server of a URL.
pub fn check(url: &str) -> Result<(), String> {
    let servers = servers(url);
    if servers.is_empty() {
        return Err("no server".into());
    }
    for s in &servers {
        s.parse::<ServerAddr>()
            .map_err(|e| format!("{:?}: {e}", redacted(s)))?;
    }
    Ok(())
}

/// `options` with the URL's credentials (those of the first server that
/// has any), if it has any.
pub fn with_credentials(options: ConnectOptions, url: &str) -> ConnectOptions {
    for server in servers(url) {
        let Ok(addr) = server.parse::<ServerAddr>() else {
            continue;
        };
        match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => return options.user_and_password(user.into(), password.into()),
            (Some(token), None) if !token.is_empty() => return options.token(token.into()),
            _ => {}
        }
    }
    options
}

/// `url` for logs: passwords and tokens replaced by `***`.
pub fn redacted(url: &str) -> String {
    url.split(',').map(redacted_one).collect::<Vec<_>>().join(",")
}

fn redacted_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            redacted("nats://dnd:s3cret@10.0.0.1:4222"),
            "nats://dnd:***@10.0.0.1:4222"
        );
        assert_eq!(redacted("nats://tok3n@h:4222"), "nats://***@h:4222");
        assert_eq!(redacted("nats://h:4222"), "nats://h:4222");
        assert_eq!(redacted("h:4222"), "h:4222");
        assert_eq!(
            redacted("nats://u:p@a:1,nats://u:p@b:2"),
            "nats://u:***@a:1,nats://u:***@b:2"
        );
    }

    #[test]
    fn a_url_may_list_several_servers() {
        assert_eq!(servers("nats://a:1, nats://b:2,"), ["nats://a:1", "nats://b:2"]);
        assert!(check("nats://a:1,nats://b:2").is_ok());
        assert!(check("nats://a:1,nats://b:notaport").is_err());
        assert!(check(",").is_err());
    }
}
