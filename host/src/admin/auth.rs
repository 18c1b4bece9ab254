//! Who may use the admin API: bearer tokens from environment variables.
//!
//! The root token (from the env var `admin.token_env` names) may do
//! everything; a tenant's token (from its `token_env`) may read and write
//! that tenant only. Tokens are read once, when the configuration is
//! applied, compared in constant time, and never logged or echoed: the
//! [`Token`] type has no `Debug` output that shows one.

use std::collections::BTreeMap;

/// A secret that compares in constant time and never prints.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in env var `name`, if set and not empty.
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .map(|value| Self(value.into_bytes()))
    }

    /// Whether `candidate` is this token. Takes the same time for every
    /// candidate of a given length, wherever it differs; the length itself
    /// is not secret enough to hide.
    fn matches(&self, candidate: &[u8]) -> bool {
        if candidate.len() != self.0.len() {
            return false;
        }
        let difference = self
            .0
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The root token: every tenant.
    Root,
    /// A tenant's token: that tenant only.
    Tenant(String),
}

impl Caller {
    /// `root` or `tenant:NAME`, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Root => "root".to_owned(),
            Self::Tenant(name) => format!("tenant:{name}"),
        }
    }
}

/// Why a request may not do what it asks. Each says which of the
/// caller's mistakes it is, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `Authorization: Bearer` header (401).
    #[error("send Authorization: Bearer <token>")]
    NoCredentials,
    /// No root token is configured, so nothing may write (403). The
    /// variable is read from the gateway's own environment, which no other
    /// shell can change: only a restart with it set turns the API on.
    #[error(
        "the admin API is disabled: the environment variable {0} is not set; export \
         {0}=<token> in the shell that starts `wasmgate serve`, then start it again \
         (SIGHUP cannot pick up a variable exported in another shell)"
    )]
    Disabled(String),
    /// The token is neither the root token nor any tenant's (403).
    #[error("not a known token: it is neither the root token (from ${0}) nor a tenant's token")]
    UnknownToken(String),
    /// A tenant's token used on another tenant (403).
    #[error("this token belongs to tenant {own:?}, not {asked:?}")]
    OtherTenant {
        /// The tenant the token is for.
        own: String,
        /// The tenant the request names.
        asked: String,
    },
    /// A tenant's token used on what only the root token may do: tenants
    /// as a whole, reloads (403).
    #[error("this token belongs to tenant {0:?}; only the root token may do that")]
    RootOnly(String),
}

/// The tokens in force.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// The env var the root token comes from, for the message when unset.
    root_env: String,
    root: Option<Token>,
    tenants: BTreeMap<String, Token>,
}

impl Tokens {
    /// The root token from env var `root_env`, and each tenant's from the
    /// env var it names.
    pub fn from_env<'a>(
        root_env: &str,
        tenants: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        Self {
            root_env: root_env.to_owned(),
            root: Token::from_env(root_env),
            tenants: tenants
                .into_iter()
                .filter_map(|(tenant, env)| Some((tenant.to_owned(), Token::from_env(env)?)))
                .collect(),
        }
    }

    /// [`Denied::Disabled`] when no root token is set: nothing may write,
    /// and the message says how to turn the API on.
    pub fn disabled(&self) -> Option<Denied> {
        self.root
            .is_none()
            .then(|| Denied::Disabled(self.root_env.clone()))
    }

    /// Who the `Authorization` header value authenticates, if anyone.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, Denied> {
        let Some(root) = &self.root else {
            return Err(Denied::Disabled(self.root_env.clone()));
        };
        let Some(presented) = authorization.and_then(bearer_token) else {
            return Err(Denied::NoCredentials);
        };
        // Every token is compared, so the time taken does not say which
        // kind of token came close.
        let mut caller = None;
        if root.matches(presented) {
            caller = Some(Caller::Root);
        }
        for (tenant, token) in &self.tenants {
            if token.matches(presented) && caller.is_none() {
                caller = Some(Caller::Tenant(tenant.clone()));
            }
        }
        caller.ok_or_else(|| Denied::UnknownToken(self.root_env.clone()))
    }

    /// Checks that the caller may act on `tenant` (`None`: on the gateway
    /// as a whole, which only root may).
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        tenant: Option<&str>,
    ) -> Result<Caller, Denied> {
        let caller = self.authenticate(authorization)?;
        match (&caller, tenant) {
            (Caller::Root, _) => Ok(caller),
            (Caller::Tenant(own), Some(tenant)) if own == tenant => Ok(caller),
            (Caller::Tenant(own), Some(tenant)) => Err(Denied::OtherTenant {
                own: own.clone(),
                asked: tenant.to_owned(),
            }),
            (Caller::Tenant(own), None) => Err(Denied::RootOnly(own.clone())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 11.4).
fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    let space = authorization.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = authorization.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(root: Option<&str>, tenants: &[(&str, &str)]) -> Tokens {
        Tokens {
            root_env: "ROOT_ENV".into(),
            root: root.map(|t| Token(t.as_bytes().to_vec())),
            tenants: tenants
                .iter()
                .map(|(name, t)| ((*name).to_owned(), Token(t.as_bytes().to_vec())))
                .collect(),
        }
    }

    #[test]
    fn root_may_do_everything_and_a_tenant_token_its_own_tenant_only() {
        let tokens = tokens(Some("root-secret"), &[("a", "a-secret"), ("b", "b-secret")]);
        let auth = |header: &str, tenant| tokens.authorize(Some(header.as_bytes()), tenant);
        assert_eq!(auth("Bearer root-secret", Some("a")), Ok(Caller::Root));
        assert_eq!(auth("Bearer root-secret", None), Ok(Caller::Root));
        assert_eq!(
            auth("Bearer a-secret", Some("a")),
            Ok(Caller::Tenant("a".into()))
        );
        assert_eq!(
            auth("Bearer a-secret", Some("b")),
            Err(Denied::OtherTenant {
                own: "a".into(),
                asked: "b".into()
            })
        );
        assert_eq!(
            auth("Bearer a-secret", None),
            Err(Denied::RootOnly("a".into()))
        );
        for wrong in [
            "Bearer root-secreT",
            "Bearer root",
            "Bearer ",
            "Basic root-secret",
        ] {
            let denied = auth(wrong, Some("a")).expect_err(wrong);
            assert!(
                matches!(denied, Denied::UnknownToken(_) | Denied::NoCredentials),
                "{wrong}: {denied:?}"
            );
        }
        assert_eq!(
            tokens.authorize(None, Some("a")),
            Err(Denied::NoCredentials)
        );
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for (header, token) in [
            ("Bearer t", Some("t")),
            ("bearer t", Some("t")),
            ("BEARER t", Some("t")),
            ("bEaReR  t", Some("t")),
            ("Bearer ", Some("")),
            ("Bearer", None),
            ("Bearert", None),
            ("Basic t", None),
            ("Bearer: t", None),
            ("", None),
        ] {
            assert_eq!(
                bearer_token(header.as_bytes()),
                token.map(str::as_bytes),
                "{header:?}"
            );
        }
        let tokens = tokens(Some("root-secret"), &[]);
        for header in ["bearer root-secret", "BEARER root-secret"] {
            assert_eq!(
                tokens.authorize(Some(header.as_bytes()), None),
                Ok(Caller::Root),
                "{header}"
            );
        }
    }

    #[test]
    fn a_refusal_says_whether_the_token_is_unknown_or_another_tenants() {
        let tokens = tokens(Some("root-secret"), &[("a", "a-secret")]);
        let said = |header: &str, tenant| {
            tokens
                .authorize(Some(header.as_bytes()), tenant)
                .expect_err(header)
                .to_string()
        };
        assert_eq!(
            said("Bearer nope", Some("a")),
            "not a known token: it is neither the root token (from $ROOT_ENV) nor a tenant's token"
        );
        assert_eq!(
            said("Bearer a-secret", Some("b")),
            r#"this token belongs to tenant "a", not "b""#
        );
        assert_eq!(
            said("Bearer a-secret", None),
            r#"this token belongs to tenant "a"; only the root token may do that"#
        );
        for message in [
            said("Bearer nope", Some("a")),
            said("Bearer a-secret", None),
        ] {
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn without_a_root_token_everything_is_disabled_and_says_how_to_enable_it() {
        let tokens = tokens(None, &[("a", "a-secret")]);
        let denied = tokens
            .authorize(Some(b"Bearer a-secret"), Some("a"))
            .expect_err("disabled");
        let message = denied.to_string();
        assert!(message.contains("export ROOT_ENV=<token>"), "{message}");
        assert!(message.contains("SIGHUP cannot"), "{message}");
        assert_eq!(tokens.disabled(), Some(denied));
        assert_eq!(self::tokens(Some("r"), &[]).disabled(), None);
    }

    #[test]
    fn tokens_never_print() {
        let token = Token(b"hunter2".to_vec());
        assert_eq!(format!("{token:?}"), "Token(..)");
        let tokens = tokens(Some("hunter2"), &[]);
        assert!(!format!("{tokens:?}").contains("hunter2"));
    }
}
