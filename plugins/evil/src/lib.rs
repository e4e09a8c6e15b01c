//! `evil`: a hostile guest for the host's sandbox tests. Consumes one column
//! and, for rows that trigger it, misbehaves in the way `mode` says:
//!
//! - `loop`: spins forever (the host must stop it with fuel or a deadline);
//! - `memory`: allocates without bound (the host's memory limit must hold);
//! - `panic`: panics (the host sees a trap, with the panic message logged);
//! - `arity`: returns two values for its one output column;
//! - `slow`: burns `spin` iterations of work per row, then behaves;
//! - `echo`: returns its input unchanged, whatever its type (for tests of
//!   how the host reads and writes every column type).
//!
//! Rows that do not trigger it (see `trigger`) get their input text
//! uppercased, so tests can tell which rows went through normally.
//! Config: `mode` (required), `trigger` (only rows whose text equals it
//! misbehave; default: every row), `spin` (iterations for `slow`).

use std::hint::black_box;

use refill_sdk::{Config, ConfigError, Info, Level, Outcome, Row, Transform, Value, ValueType};

/// How the guest misbehaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Never returns.
    Loop,
    /// Allocates until the allocator gives up.
    Memory,
    /// Panics.
    Panic,
    /// Returns the wrong number of output values.
    Arity,
    /// Burns CPU, then behaves.
    Slow,
    /// Returns the input as it is.
    Echo,
}

/// The configured hostile transform.
pub struct Evil {
    mode: Mode,
    trigger: Option<String>,
    spin: u64,
}

impl Evil {
    fn triggered(&self, value: &Value) -> bool {
        match &self.trigger {
            None => true,
            Some(t) => value.as_text() == Some(t.as_str()),
        }
    }
}

fn behave(value: &Value) -> Outcome {
    match value {
        Value::Text(s) => Outcome::set(Value::Text(s.to_uppercase())),
        other => Outcome::set(other.clone()),
    }
}

impl Transform for Evil {
    fn describe() -> Info {
        Info::new(
            "evil",
            env!("CARGO_PKG_VERSION"),
            "Misbehaves on purpose, for sandbox tests.",
        )
        .input("value", ValueType::Any)
        .output("value", ValueType::Any)
    }

    fn configure(config: &Config) -> Result<Self, ConfigError> {
        config.only(&["mode", "trigger", "spin"])?;
        let mode = match config.require("mode")? {
            "loop" => Mode::Loop,
            "memory" => Mode::Memory,
            "panic" => Mode::Panic,
            "arity" => Mode::Arity,
            "slow" => Mode::Slow,
            "echo" => Mode::Echo,
            other => {
                return Err(ConfigError::invalid(
                    "mode",
                    format!("`{other}` is not one of loop, memory, panic, arity, slow, echo"),
                ));
            }
        };
        let spin = match config.get("spin") {
            None => 100_000,
            Some(s) => s
                .parse()
                .map_err(|_| ConfigError::invalid("spin", format!("`{s}` is not a count")))?,
        };
        let trigger = config.get("trigger").map(str::to_string);
        Ok(Evil {
            mode,
            trigger,
            spin,
        })
    }

    fn transform(&self, row: &Row) -> Outcome {
        let value = &row.values[0];
        if !self.triggered(value) {
            return behave(value);
        }
        match self.mode {
            Mode::Loop => {
                refill_sdk::log(Level::Warn, &format!("row {}: looping forever", row.key));
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Mode::Memory => {
                refill_sdk::log(
                    Level::Warn,
                    &format!("row {}: allocating without bound", row.key),
                );
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            Mode::Panic => panic!("evil panics on row {}", row.key),
            Mode::Arity => Outcome::Update(vec![value.clone(), value.clone()]),
            Mode::Echo => Outcome::set(value.clone()),
            Mode::Slow => {
                let mut acc = 0u64;
                for i in 0..self.spin {
                    acc = black_box(acc ^ i);
                }
                black_box(acc);
                behave(value)
            }
        }
    }
}

refill_sdk::export!(Evil);

#[cfg(test)]
mod tests {
    use super::*;
    use refill_sdk::Key;

    fn evil(params: &[(&str, &str)]) -> Evil {
        Evil::configure(&Config::new(params.iter().copied())).expect("valid config")
    }

    fn row(text: &str) -> Row {
        Row {
            key: Key::Integer(1),
            values: vec![Value::Text(text.into())],
        }
    }

    #[test]
    fn untriggered_rows_behave() {
        let e = evil(&[("mode", "panic"), ("trigger", "boom")]);
        assert_eq!(
            e.transform(&row("fine")),
            Outcome::set(Value::Text("FINE".into()))
        );
    }

    #[test]
    fn arity_returns_two_values() {
        let e = evil(&[("mode", "arity")]);
        assert!(matches!(e.transform(&row("x")), Outcome::Update(v) if v.len() == 2));
    }

    #[test]
    fn slow_still_computes_the_right_value() {
        let e = evil(&[("mode", "slow"), ("spin", "1000")]);
        assert_eq!(
            e.transform(&row("ab")),
            Outcome::set(Value::Text("AB".into()))
        );
    }

    #[test]
    #[should_panic(expected = "evil panics on row 1")]
    fn panic_mode_panics() {
        evil(&[("mode", "panic")]).transform(&row("x"));
    }

    #[test]
    fn echo_returns_any_value_unchanged() {
        let e = evil(&[("mode", "echo")]);
        for value in [
            Value::Text("ab".into()),
            Value::Json("{}".into()),
            Value::Bytes(vec![0, 1]),
            Value::Null,
        ] {
            let row = Row {
                key: Key::Integer(1),
                values: vec![value.clone()],
            };
            assert_eq!(e.transform(&row), Outcome::set(value));
        }
    }

    #[test]
    fn unknown_mode_is_refused() {
        let err = Evil::configure(&Config::new([("mode", "nice")])).err();
        assert!(matches!(err, Some(ConfigError::Invalid(p)) if p.name == "mode"));
    }
}
