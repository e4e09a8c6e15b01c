//! End-to-end tests: the real `refill` binary against real SQLite files, the
//! real PostgreSQL of this machine (`REFILL_TEST_POSTGRES_URL`) and its
//! MariaDB (`REFILL_TEST_MYSQL_URL`), with
//! real components from `plugins/dist` (built by `make plugins`).

mod fixtures;
mod harness;
mod health;
mod languages;
mod locks;
mod mariadb;
mod paced;
mod pipeline;
mod readonly;
mod recovery;
mod resume;
mod sandbox;
mod spec_errors;
mod throttle;
mod types;
mod workers;

/// Defines one test per backend (SQLite, PostgreSQL, MariaDB) from a body
/// taking the backend: the conformance matrix.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn sqlite() {
                ($body)(
                    $crate::harness::Backend::Sqlite,
                    concat!(stringify!($name), "_sqlite"),
                )
            }
            #[test]
            fn postgres() {
                ($body)(
                    $crate::harness::Backend::Postgres,
                    concat!(stringify!($name), "_pg"),
                )
            }
            #[test]
            fn mariadb() {
                ($body)(
                    $crate::harness::Backend::Mysql,
                    concat!(stringify!($name), "_my"),
                )
            }
        }
    };
}
