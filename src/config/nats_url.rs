//! Credentials in a NATS URL (`nats://user:password@host:4222`,
//! `nats://token@host:4222`): async-nats dials the address but does not
//! send the URL's credentials by itself, so every connection of ours takes
//! them from the URL here; logs and `--print-config` show the URL with
//! the secret masked.

use async_nats::{ConnectOptions, ServerAddr};

/// `options` with the URL's credentials, if it has any.
pub fn with_credentials(options: ConnectOptions, url: &str) -> ConnectOptions {
    let Ok(addr) = url.parse::<ServerAddr>() else {
        return options;
    };
    match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => options.user_and_password(user.into(), password.into()),
        (Some(token), None) if !token.is_empty() => options.token(token.into()),
        _ => options,
    }
}

/// `url` for logs: a password or token replaced by `***`.
pub fn redacted(url: &str) -> String {
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
    }
}
