//! Client authentication to the proxy itself (`[auth]` in proxy.toml). This is
//! separate from the proxy's own credentials for Redis, which live in the
//! upstream URL.

use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, Role};

/// Checks `AUTH` and `HELLO ... AUTH` credentials against the configuration.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    default_password: Option<String>,
    users: Vec<(String, [u8; 32], Role)>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let users = config
            .users
            .iter()
            .filter_map(|user| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&user.password_sha256, &mut digest).ok()?;
                Some((user.name.clone(), digest, user.role))
            })
            .collect();
        Self {
            default_password: config.password.clone(),
            users,
        }
    }

    /// True when clients must authenticate before anything else.
    pub fn required(&self) -> bool {
        self.default_password.is_some() || !self.users.is_empty()
    }

    /// The role granted for these credentials, or None when they are wrong.
    /// `user` None or "default" means the `auth.password` user, as in Redis.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> Option<Role> {
        let user = user.unwrap_or(b"default");
        if user == b"default"
            && let Some(expected) = &self.default_password
        {
            return constant_time_eq(expected.as_bytes(), password).then_some(Role::Admin);
        }
        let digest: [u8; 32] = Sha256::digest(password).into();
        self.users
            .iter()
            .find(|(name, _, _)| name.as_bytes() == user)
            .filter(|(_, expected, _)| constant_time_eq(expected, &digest))
            .map(|(_, _, role)| *role)
    }
}

/// Compares without stopping at the first difference, so timing does not
/// reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    #[test]
    fn default_password_and_hashed_users() {
        let config = AuthConfig {
            password: Some("secret".into()),
            users: vec![UserConfig {
                name: "alice".into(),
                // sha256("wonderland")
                password_sha256: hex::encode(Sha256::digest(b"wonderland")),
                role: Role::User,
            }],
        };
        let auth = Authenticator::new(&config);
        assert!(auth.required());
        assert_eq!(auth.check(None, b"secret"), Some(Role::Admin));
        assert_eq!(auth.check(Some(b"default"), b"secret"), Some(Role::Admin));
        assert_eq!(auth.check(None, b"wrong"), None);
        assert_eq!(auth.check(Some(b"alice"), b"wonderland"), Some(Role::User));
        assert_eq!(auth.check(Some(b"alice"), b"secret"), None);
        assert_eq!(auth.check(Some(b"bob"), b"wonderland"), None);
    }

    #[test]
    fn nothing_configured_means_nothing_required() {
        assert!(!Authenticator::new(&AuthConfig::default()).required());
    }
}
