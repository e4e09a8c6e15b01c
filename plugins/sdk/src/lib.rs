//! The Rust guest SDK for refill transforms.
//!
//! Consumes a type implementing [`Transform`] (a configuration parsed once,
//! and a function over one row) and produces, through [`export!`], the
//! `refill:transform/transformer` component exports. The author never touches
//! the WIT plumbing:
//!
//! ```ignore
//! use refill_sdk::{Column, Config, ConfigError, Info, Outcome, Row, Transform, Value, ValueType};
//!
//! struct Upper;
//!
//! impl Transform for Upper {
//!     fn describe() -> Info {
//!         Info::new("upper", env!("CARGO_PKG_VERSION"), "Uppercases a text column.")
//!             .input("value", ValueType::Text)
//!             .output("upper", ValueType::Text)
//!     }
//!     fn configure(config: &Config) -> Result<Self, ConfigError> {
//!         config.only(&[])?;
//!         Ok(Upper)
//!     }
//!     fn transform(&self, row: &Row) -> Outcome {
//!         match &row.values[0] {
//!             Value::Text(s) => Outcome::set(Value::Text(s.to_uppercase())),
//!             Value::Null => Outcome::set(Value::Null),
//!             other => Outcome::Error(format!("expected text, got {}", other.type_name())),
//!         }
//!     }
//! }
//!
//! refill_sdk::export!(Upper);
//! ```
//!
//! The same type is an ordinary Rust value in native unit tests: build a
//! [`Config`] with [`Config::new`], call `configure`, then `transform`.

#[doc(hidden)]
pub mod bindings;

use std::any::Any;
use std::cell::RefCell;
use std::fmt;

pub use bindings::refill::transform::host::{Level, LookupError};
pub use bindings::refill::transform::types::{
    Column, ConfigError, Info, InvalidParam, Key, Outcome, Param, Row, Timestamp, Value, ValueType,
};

/// A transform: a configuration, parsed once, and a pure function over one
/// row.
pub trait Transform: Sized + 'static {
    /// Describes the transform: name, version and declared columns. Must not
    /// depend on configuration.
    fn describe() -> Info;

    /// Parses the spec's `[transform] config`. Refuse anything unknown or
    /// malformed here, so that a bad configuration stops the run before any
    /// row is read.
    fn configure(config: &Config) -> Result<Self, ConfigError>;

    /// Decides what happens to one row. `row.values` holds exactly one value
    /// per declared input, in order. A row that cannot be transformed is an
    /// [`Outcome::Error`], not a panic.
    fn transform(&self, row: &Row) -> Outcome;
}

/// The configuration parameters handed to [`Transform::configure`].
#[derive(Debug, Clone, Default)]
pub struct Config {
    params: Vec<Param>,
}

impl Config {
    /// Builds a configuration from name/value pairs, as the host would pass
    /// it. Useful in unit tests.
    pub fn new<N: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let params = pairs
            .into_iter()
            .map(|(name, value)| Param {
                name: name.into(),
                value: value.into(),
            })
            .collect();
        Config { params }
    }

    /// The value of parameter `name`, if it was given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    /// The value of parameter `name`. Fails with [`ConfigError::Missing`] if
    /// it was not given.
    pub fn require(&self, name: &str) -> Result<&str, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::Missing(name.to_string()))
    }

    /// Checks that every parameter given is one of `known`. Fails with
    /// [`ConfigError::Unknown`] naming the first one that is not.
    pub fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self
            .params
            .iter()
            .find(|p| !known.contains(&p.name.as_str()))
        {
            Some(p) => Err(ConfigError::Unknown(p.name.clone())),
            None => Ok(()),
        }
    }

    /// Every parameter, in the order the host passed them.
    pub fn params(&self) -> &[Param] {
        &self.params
    }
}

impl Info {
    /// Starts a description with no columns.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Info {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Declares the next input column.
    pub fn input(mut self, name: &str, ty: ValueType) -> Self {
        self.inputs.push(Column {
            name: name.to_string(),
            type_: ty,
        });
        self
    }

    /// Declares the next output column.
    pub fn output(mut self, name: &str, ty: ValueType) -> Self {
        self.outputs.push(Column {
            name: name.to_string(),
            type_: ty,
        });
        self
    }
}

impl Outcome {
    /// Writes one value: the outcome of a transform with one output column.
    pub fn set(value: Value) -> Self {
        Outcome::Update(vec![value])
    }
}

impl Value {
    /// The name of this value's case, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Boolean(_) => "boolean",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Json(_) => "json",
            Value::Timestamp(_) => "timestamp",
        }
    }

    /// The text, if this is a `text` value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Integer(i) => write!(f, "{i}"),
            Key::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl ConfigError {
    /// A parameter whose value cannot be used, and why.
    pub fn invalid(name: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid(InvalidParam {
            name: name.to_string(),
            reason: reason.into(),
        })
    }
}

/// Writes a line to the run log. On a native build (unit tests) it writes to
/// standard error instead.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::refill::transform::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Looks `key` up in the read-only table `table` that the spec declares in
/// a `[[lookup]]` section. Returns `Ok(None)` if the table has no such key.
/// Fails with [`LookupError::UnknownTable`] if the spec declares no table of
/// that name. On a native build (unit tests) it reads the tables set with
/// [`testing::set_lookup`].
pub fn lookup(table: &str, key: &str) -> Result<Option<String>, LookupError> {
    #[cfg(target_arch = "wasm32")]
    return bindings::refill::transform::host::lookup(table, key);
    #[cfg(not(target_arch = "wasm32"))]
    testing::lookup(table, key)
}

/// Stand-ins for the host in native unit tests.
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::LookupError;

    thread_local! {
        static TABLES: RefCell<BTreeMap<String, BTreeMap<String, String>>> =
            const { RefCell::new(BTreeMap::new()) };
    }

    /// Declares the lookup table `table` with these key/value pairs for
    /// [`lookup`](super::lookup) on this thread, replacing any table of that
    /// name.
    pub fn set_lookup<'a>(table: &str, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TABLES.with(|t| t.borrow_mut().insert(table.to_string(), pairs));
    }

    pub(super) fn lookup(table: &str, key: &str) -> Result<Option<String>, LookupError> {
        TABLES.with(|t| match t.borrow().get(table) {
            Some(pairs) => Ok(pairs.get(key).cloned()),
            None => Err(LookupError::UnknownTable(table.to_string())),
        })
    }
}

thread_local! {
    // Components are single-threaded; the configured transform lives here
    // between `configure` and the batches.
    static CONFIGURED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// What `export!` expands to call. Not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // A panic in a component aborts with a bare trap; sending the message
        // to the host log first lets the host show it next to the trap.
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log(Level::Error, &format!("panic: {info}"))
            }));
        });
    }

    pub fn describe<T: Transform>() -> Info {
        install_panic_hook();
        T::describe()
    }

    pub fn configure<T: Transform>(params: Vec<Param>) -> Result<(), ConfigError> {
        install_panic_hook();
        let transform = T::configure(&Config { params })?;
        CONFIGURED.with(|slot| *slot.borrow_mut() = Some(Box::new(transform)));
        Ok(())
    }

    pub fn transform_batch<T: Transform>(rows: Vec<Row>) -> Vec<Outcome> {
        CONFIGURED.with(|slot| {
            let slot = slot.borrow();
            match slot.as_ref().and_then(|t| t.downcast_ref::<T>()) {
                Some(transform) => rows.iter().map(|row| transform.transform(row)).collect(),
                None => {
                    let message = "transform-batch called before configure".to_string();
                    rows.iter()
                        .map(|_| Outcome::Error(message.clone()))
                        .collect()
                }
            }
        })
    }
}

/// Exports a [`Transform`] implementation as the component's
/// `refill:transform/transform` interface. Call it once per crate.
#[macro_export]
macro_rules! export {
    ($transform:ty) => {
        // Only components carry the exports: on a native target (unit tests)
        // the WIT export names are not valid linker symbols.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        struct __RefillExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::exports::refill::transform::transform::Guest for __RefillExport {
            fn describe() -> $crate::Info {
                $crate::__private::describe::<$transform>()
            }
            fn configure(params: Vec<$crate::Param>) -> Result<(), $crate::ConfigError> {
                $crate::__private::configure::<$transform>(params)
            }
            fn transform_batch(rows: Vec<$crate::Row>) -> Vec<$crate::Outcome> {
                $crate::__private::transform_batch::<$transform>(rows)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_transformer!(__RefillExport with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lookup_and_refusals() {
        let config = Config::new([("map", "a=b"), ("default", "x")]);
        assert_eq!(config.get("map"), Some("a=b"));
        assert_eq!(config.get("nope"), None);
        assert!(matches!(config.require("nope"), Err(ConfigError::Missing(n)) if n == "nope"));
        assert!(config.only(&["map", "default"]).is_ok());
        assert!(matches!(config.only(&["map"]), Err(ConfigError::Unknown(n)) if n == "default"));
    }

    struct Echo;
    impl Transform for Echo {
        fn describe() -> Info {
            Info::new("echo", "0", "copies")
                .input("v", ValueType::Any)
                .output("v", ValueType::Any)
        }
        fn configure(_: &Config) -> Result<Self, ConfigError> {
            Ok(Echo)
        }
        fn transform(&self, row: &Row) -> Outcome {
            Outcome::Update(row.values.clone())
        }
    }

    #[test]
    fn batch_before_configure_is_a_per_row_error() {
        let rows = vec![Row {
            key: Key::Integer(1),
            values: vec![Value::Null],
        }];
        let out = __private::transform_batch::<Echo>(rows.clone());
        assert!(matches!(&out[..], [Outcome::Error(m)] if m.contains("before configure")));
        __private::configure::<Echo>(vec![]).expect("configure");
        let out = __private::transform_batch::<Echo>(rows);
        assert!(matches!(&out[..], [Outcome::Update(v)] if v == &vec![Value::Null]));
    }
}
