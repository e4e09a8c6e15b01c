//! Database URLs: consumes the url strings of a spec or the command line
//! (`sqlite:…`, `postgres://…`, `mysql://…`/`mariadb://…`, or `env:VAR`),
//! produces a [`DbUrl`] that
//! knows its backend, has relative SQLite paths resolved, and shows itself
//! only with the password masked.

use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::backend::Backend;

/// Why a url could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// `env:VAR` named a variable that is not set.
    #[error("environment variable {0} is not set (the url says `env:{0}`)")]
    MissingEnv(String),
    /// The scheme is not one refill supports.
    #[error("unsupported database url `{0}`: use sqlite:PATH, postgres://… or mysql://…")]
    Unsupported(String),
}

/// A resolved database url. `Display` and `Debug` mask the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    backend: Backend,
    url: String,
    /// For SQLite, the database file (None for in-memory databases).
    path: Option<PathBuf>,
}

impl DbUrl {
    /// Parses `raw`, reading it from the environment first if it is
    /// `env:VAR`. A relative SQLite path is resolved against `base`.
    pub fn parse(raw: &str, base: &Path) -> Result<DbUrl, UrlError> {
        let raw = match raw.strip_prefix("env:") {
            Some(var) => std::env::var(var).map_err(|_| UrlError::MissingEnv(var.to_string()))?,
            None => raw.to_string(),
        };
        let Some((scheme, rest)) = raw.split_once(':') else {
            return Err(UrlError::Unsupported(mask(&raw)));
        };
        let Some(backend) = Backend::of_scheme(scheme) else {
            return Err(UrlError::Unsupported(mask(&raw)));
        };
        if crate::backend::address(backend).default_port.is_some() {
            // A server: `scheme://user:password@host:port/database?options`.
            if !rest.starts_with("//") {
                return Err(UrlError::Unsupported(mask(&raw)));
            }
            return Ok(DbUrl {
                backend,
                url: raw,
                path: None,
            });
        }
        // A file: `scheme:PATH` or `scheme://PATH`, relative to `base`,
        // or an in-memory database.
        let scheme = scheme.to_string();
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (file, query) = match rest.split_once('?') {
            Some((f, q)) => (f, Some(q)),
            None => (rest, None),
        };
        if file.is_empty() || file == ":memory:" {
            return Ok(DbUrl {
                backend,
                url: raw,
                path: None,
            });
        }
        let path = base.join(file);
        let mut url = format!("{scheme}://{}", path.display());
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Ok(DbUrl {
            backend,
            url,
            path: Some(path),
        })
    }

    /// The backend this url points at.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The full url, secrets included: for connecting only, never for
    /// printing.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The SQLite database file, if this is a file-backed SQLite url.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The url with its password masked, for messages and the audit trail.
    pub fn masked(&self) -> String {
        mask(&self.url)
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.masked())
    }
}

/// A database error in one line, for messages: the server's own message and
/// SQLSTATE for database errors (without the server's source location that
/// sqlx appends), sqlx's description otherwise.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match (db.code(), crate::backend::mysql::errno(error)) {
            // MySQL's error numbers say more than its SQLSTATEs (a refused
            // enum label is 1265 under the warning class 01000).
            (Some(code), Some(n)) => format!("{} (SQLSTATE {code}, error {n})", db.message()),
            (Some(code), None) => format!("{} (SQLSTATE {code})", db.message()),
            (None, _) => db.message().to_string(),
        },
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".to_string(),
        other => other.to_string().replace('\n', " "),
    }
}

/// Masks the password in `user:password@host` and in `password=` query
/// parameters of any url-like string.
pub fn mask(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        // A password may hold an unencoded `/`, `?` or `@`, so the user
        // information runs to the last `@`, wherever it is: masking too much
        // of an odd url beats printing a password.
        if let Some(at) = out[start..].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

/// Whether the server of a PostgreSQL or MySQL url accepts a TCP
/// connection within `timeout`; says why not. The test suites ask it once
/// before their first test, to stop at once with what to start rather than
/// fail in every fixture.
pub fn answers(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    use std::net::ToSocketAddrs as _;
    let default_port = url
        .split_once("://")
        .and_then(|(scheme, _)| Backend::of_scheme(scheme))
        .and_then(|b| crate::backend::address(b).default_port)
        .ok_or_else(|| format!("{} is not the url of a database server", mask(url)))?;
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(['[', ']']),
            p.parse::<u16>()
                .map_err(|_| format!("{} has no valid port", mask(url)))?,
        ),
        _ => (host_port.trim_matches(['[', ']']), default_port),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host}:{port} resolves to no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("nothing answers at {addr}: {e}"),
        }
    }
    Err(last)
}

/// The test PostgreSQL's url (`REFILL_TEST_POSTGRES_URL`), or the test
/// process ends at once saying what to start and what to set.
#[cfg(test)]
pub(crate) fn test_postgres_url() -> String {
    static CHECKED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let url = std::env::var("REFILL_TEST_POSTGRES_URL").unwrap_or_default();
            let problem = if url.is_empty() {
                Err("REFILL_TEST_POSTGRES_URL is not set".to_string())
            } else {
                answers(&url, std::time::Duration::from_secs(3))
            };
            if let Err(why) = problem {
                // Past the test harness's capture of eprintln!, which
                // exiting would swallow.
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!(
                    "error: these tests need a PostgreSQL server, and {why}.\n\
                     Start PostgreSQL and set REFILL_TEST_POSTGRES_URL to a database the tests may create schemas in \
                     (`make test` sets postgres://postgres@127.0.0.1:5432/test).\n"
                    ),
                );
                std::process::exit(2);
            }
            url
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_does_not_answer_is_named() {
        // A port nothing listens on: bind one, note it, let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("postgres://u:secret@127.0.0.1:{port}/db");
        let why = answers(&url, std::time::Duration::from_secs(1)).expect_err("nothing listens");
        assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
        assert!(!why.contains("secret"), "{why}");
        let listening = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listening.local_addr().expect("addr").port();
        answers(
            &format!("mysql://root@127.0.0.1:{port}/test"),
            std::time::Duration::from_secs(1),
        )
        .expect("a listening port answers");
        assert!(answers("sqlite://x.db", std::time::Duration::from_secs(1)).is_err());
    }

    #[test]
    fn masks_passwords_and_keeps_the_rest() {
        assert_eq!(
            mask("postgres://app:s3cr%40t@db:5432/prod"),
            "postgres://app:***@db:5432/prod"
        );
        assert_eq!(mask("postgres://app@db/prod"), "postgres://app@db/prod");
        assert_eq!(
            mask("postgres://db/prod?user=a&password=hunter2&sslmode=require"),
            "postgres://db/prod?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            mask("postgres://postgres:sec/ret?pw@127.0.0.1:5432/test"),
            "postgres://postgres:***@127.0.0.1:5432/test"
        );
        assert_eq!(mask("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
        // Over-masks rather than leaks when the query holds an `@`.
        assert!(!mask("postgres://u:pw@h/d?x=1@2").contains("pw"));
    }

    #[test]
    fn displays_masked_and_exposes_full() {
        let url = DbUrl::parse("postgres://u:pw@h/d", Path::new("/")).expect("valid");
        assert_eq!(url.to_string(), "postgres://u:***@h/d");
        assert_eq!(format!("{url:?}"), "DbUrl(postgres://u:***@h/d)");
        assert_eq!(url.expose(), "postgres://u:pw@h/d");
    }

    #[test]
    fn resolves_relative_sqlite_paths_against_the_base() {
        let url = DbUrl::parse("sqlite://demo.db?mode=rwc", Path::new("/specs")).expect("valid");
        assert_eq!(url.backend(), Backend::Sqlite);
        assert_eq!(url.expose(), "sqlite:///specs/demo.db?mode=rwc");
        assert_eq!(url.sqlite_path(), Some(Path::new("/specs/demo.db")));
        let abs = DbUrl::parse("sqlite:///var/x.db", Path::new("/specs")).expect("valid");
        assert_eq!(abs.sqlite_path(), Some(Path::new("/var/x.db")));
    }

    #[test]
    fn reads_env_urls_and_names_missing_variables() {
        let err = DbUrl::parse("env:REFILL_TEST_SURELY_UNSET", Path::new("/")).unwrap_err();
        assert!(
            err.to_string()
                .contains("REFILL_TEST_SURELY_UNSET is not set")
        );
        let err = DbUrl::parse("oracle://root:pw@h/d", Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported database url `oracle://root:***@h/d`: use sqlite:PATH, postgres://… or mysql://…"
        );
    }

    #[test]
    fn mysql_and_mariadb_urls_are_mysql_with_the_password_masked() {
        for raw in ["mysql://root:pw@h:3306/d", "mariadb://root:pw@h:3306/d"] {
            let url = DbUrl::parse(raw, Path::new("/")).expect("valid");
            assert_eq!(url.backend(), Backend::Mysql);
            assert_eq!(url.backend().to_string(), "MySQL/MariaDB");
            assert!(url.to_string().ends_with("://root:***@h:3306/d"), "{url}");
            assert_eq!(url.expose(), raw);
            assert_eq!(url.sqlite_path(), None);
        }
    }
}
