//! `evil`: a hostile guest for the host's sandbox tests. Consumes one column
//! and, for rows that trigger it, misbehaves in the way `mode` says:
//!
//! - `loop`: spins forever (the host must stop it with fuel or a deadline);
//! - `memory`: allocates without bound (the host's memory limit must hold);
//! - `panic`: panics (the host sees a trap, with the panic message logged);
//! - `arity`: returns two values for its one output column;
//! - `slow`: burns `spin` iterations of work per row, then behaves;
//! - `echo`: returns its input unchanged, whatever its type (for tests of
//!   how the host reads and writes every column type);
//! - `log-bomb`: builds one string of `mb` MiB and logs it `times` times,
//!   then behaves (the host may keep only a bounded copy of each line);
//! - `error-bomb`: fails the row with an error of `mb` MiB, its first line
//!   `BombError: the head` and its last `the end of the bomb` (the host
//!   must keep both ends and a bounded middle);
//! - `extra-outcome`: returns one outcome more than the batch has rows
//!   (a broken contract on every row, which must stop the run);
//! - `configure-loop`: spins forever in `configure`, before any row (the
//!   host must stop it and say so without blaming rows).
//!
//! Rows that do not trigger it (see `trigger`) get their input text
//! uppercased, so tests can tell which rows went through normally.
//! Config: `mode` (required), `trigger` (only rows whose text equals it
//! misbehave; default: every row), `spin` (iterations for `slow`), `mb`
//! and `times` (for the bombs; 1 each by default).

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
    /// Logs one huge line many times.
    LogBomb,
    /// Fails the row with a huge error.
    ErrorBomb,
    /// Returns too many outcomes.
    ExtraOutcome,
}

/// Whether the configured mode is `extra-outcome`, for the export below
/// (the SDK keeps the configured transform to itself).
static EXTRA_OUTCOME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Spins until the host stops it.
fn spin_forever() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// The configured hostile transform.
pub struct Evil {
    mode: Mode,
    trigger: Option<String>,
    spin: u64,
    mb: usize,
    times: u32,
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
        config.only(&["mode", "trigger", "spin", "mb", "times"])?;
        let mode = match config.require("mode")? {
            "loop" => Mode::Loop,
            "memory" => Mode::Memory,
            "panic" => Mode::Panic,
            "arity" => Mode::Arity,
            "slow" => Mode::Slow,
            "echo" => Mode::Echo,
            "log-bomb" => Mode::LogBomb,
            "error-bomb" => Mode::ErrorBomb,
            "extra-outcome" => Mode::ExtraOutcome,
            "configure-loop" => {
                refill_sdk::log(Level::Warn, "configure: looping forever");
                spin_forever()
            }
            other => {
                return Err(ConfigError::invalid(
                    "mode",
                    format!(
                        "`{other}` is not one of loop, memory, panic, arity, slow, echo, log-bomb, error-bomb, extra-outcome, configure-loop"
                    ),
                ));
            }
        };
        let count = |name: &str, default: u64| match config.get(name) {
            None => Ok(default),
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| ConfigError::invalid(name, format!("`{s}` is not a count"))),
        };
        let trigger = config.get("trigger").map(str::to_string);
        EXTRA_OUTCOME.store(
            mode == Mode::ExtraOutcome,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(Evil {
            mode,
            trigger,
            spin: count("spin", 100_000)?,
            mb: usize::try_from(count("mb", 1)?).unwrap_or(usize::MAX),
            times: u32::try_from(count("times", 1)?).unwrap_or(u32::MAX),
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
                spin_forever()
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
            Mode::Echo | Mode::ExtraOutcome => Outcome::set(value.clone()),
            Mode::LogBomb => {
                let line = "x".repeat(self.mb << 20);
                for _ in 0..self.times {
                    refill_sdk::log(Level::Info, black_box(&line));
                }
                refill_sdk::log(
                    Level::Info,
                    &format!("row {}: the bomb's last line", row.key),
                );
                behave(value)
            }
            Mode::ErrorBomb => {
                let middle = (self.mb << 20).saturating_sub(64);
                Outcome::Error(format!(
                    "BombError: the head\n{}\nthe end of the bomb",
                    "y".repeat(middle)
                ))
            }
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

// The SDK's export, with one change: in `extra-outcome` mode a batch gets
// one outcome too many, which no `Transform` can express.
#[cfg(target_arch = "wasm32")]
struct EvilExport;

#[cfg(target_arch = "wasm32")]
impl refill_sdk::bindings::exports::refill::transform::transform::Guest for EvilExport {
    fn describe() -> Info {
        refill_sdk::__private::describe::<Evil>()
    }
    fn configure(params: Vec<refill_sdk::Param>) -> Result<(), ConfigError> {
        refill_sdk::__private::configure::<Evil>(params)
    }
    fn transform_batch(rows: Vec<Row>) -> Vec<Outcome> {
        let mut outcomes = refill_sdk::__private::transform_batch::<Evil>(rows);
        if EXTRA_OUTCOME.load(std::sync::atomic::Ordering::Relaxed) {
            outcomes.push(Outcome::Skip);
        }
        outcomes
    }
}

#[cfg(target_arch = "wasm32")]
refill_sdk::bindings::__export_transformer!(EvilExport with_types_in refill_sdk::bindings);

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
