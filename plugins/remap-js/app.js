/**
 * `remap`, written in JavaScript.
 *
 * Consumes one text column (`value`) and produces one text column (`mapped`)
 * by looking each value up in a fixed mapping (`map = "open=active,won=closed_won"`),
 * then in the spec's lookup table `table` if one is named, then falling back
 * to `default`. NULL stays NULL; a value with no mapping and no default is a
 * per-row error.
 *
 * This is the Rust `plugins/remap` rewritten line for line, messages
 * included: the end-to-end tests compare the outcomes of the two, row by
 * row. `make plugins` builds it into `plugins/dist/remap-js.wasm` with
 * componentize-js (see `plugin.toml`).
 *
 * How the WIT types look from here: a variant is `{ tag, val }` (`val`
 * absent for a case without payload), s64 is a BigInt, an option is the
 * value or `undefined`. An import returning a `result` returns the ok value
 * and throws an error whose `payload` is the err value; an export returning
 * a `result` signals err by throwing the err value itself.
 */

// componentize-js only knows the import by its versioned name.
import { lookup } from 'refill:transform/host@0.2.0';

// componentize-js's generated bindings turn every string from the host into
// a JS string with one shared `new TextDecoder()`, which by the Encoding
// standard drops a leading U+FEFF (byte-order mark): the text "\uFEFFx"
// would arrive as "x". Rust and Python keep it, so make that decoder keep it
// too. This runs once, when the component is built (componentize-js
// snapshots the initialised module), before any string is decoded.
const decode = TextDecoder.prototype.decode;
const keepingBom = new TextDecoder('utf-8', { ignoreBOM: true });
TextDecoder.prototype.decode = function (input, options) {
  const whole = this.encoding === 'utf-8' && !this.ignoreBOM && !this.fatal && !options?.stream;
  return decode.call(whole ? keepingBom : this, input, options);
};

// What Rust's `str::trim` strips: the Unicode White_Space characters.
// `String.prototype.trim` differs (it strips U+FEFF and keeps U+0085).
const SPACE = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const BLANKS_AROUND = new RegExp(`^${SPACE}+|${SPACE}+$`, 'g');
const trim = (text) => text.replace(BLANKS_AROUND, '');

/** The parsed configuration; set by `configure`, once, before any batch. */
let configured = null;

export const transform = {
  describe() {
    return {
      name: 'remap',
      version: '0.1.0',
      description: 'Maps each text value to another through a fixed table.',
      inputs: [{ name: 'value', type: 'text' }],
      outputs: [{ name: 'mapped', type: 'text' }],
    };
  },

  configure(params) {
    const given = new Map();
    for (const { name, value } of params) {
      if (!['map', 'table', 'default'].includes(name)) {
        throw { tag: 'unknown', val: name };
      }
      if (!given.has(name)) given.set(name, value);
    }
    const table = given.get('table');
    let mapping;
    if (given.has('map')) {
      mapping = parseMap(given.get('map'));
    } else if (table !== undefined) {
      mapping = new Map();
    } else {
      throw { tag: 'missing', val: 'map' };
    }
    if (mapping.size === 0 && table === undefined) {
      throw invalid('map', 'the mapping is empty');
    }
    if (table !== undefined) {
      // Ask once now, so that a table the spec does not declare stops the
      // run before any row is read.
      try {
        lookup(table, '');
      } catch (error) {
        throw invalid('table', lookupFailure(table, error));
      }
    }
    configured = { mapping, table, default: given.get('default') };
  },

  transformBatch(rows) {
    if (configured === null) {
      return rows.map(() => ({ tag: 'error', val: 'transform-batch called before configure' }));
    }
    return rows.map((row) => one(configured, row));
  },
};

/** A row's outcome; an exception is that row's error, not a trap. */
function one(config, row) {
  try {
    return remap(config, row);
  } catch (e) {
    return { tag: 'error', val: `${e?.name ?? 'Error'}: ${e?.message ?? e}` };
  }
}

/** The outcome for one row. */
function remap({ mapping, table, default: fallback }, row) {
  const value = row.values[0];
  if (value.tag === 'null') return setTo({ tag: 'null' });
  if (value.tag !== 'text') return { tag: 'error', val: `expected text, got ${value.tag}` };
  const text = value.val;
  if (mapping.has(text)) return setTo({ tag: 'text', val: mapping.get(text) });
  if (table !== undefined) {
    let mapped;
    try {
      mapped = lookup(table, text);
    } catch (error) {
      return { tag: 'error', val: lookupFailure(table, error) };
    }
    if (mapped !== undefined) return setTo({ tag: 'text', val: mapped });
  }
  if (fallback !== undefined) return setTo({ tag: 'text', val: fallback });
  return { tag: 'error', val: `no mapping for "${text}" and no default` };
}

/**
 * Parses `from=to` pairs separated by commas; blanks around them and empty
 * pairs are ignored. A `Map`, not an object, so that keys such as
 * `constructor` are nothing special.
 */
function parseMap(text) {
  const mapping = new Map();
  for (const raw of text.split(',')) {
    const pair = trim(raw);
    if (pair === '') continue;
    const equals = pair.indexOf('=');
    if (equals < 0) throw invalid('map', `\`${pair}\` is not a \`from=to\` pair`);
    const from = trim(pair.slice(0, equals));
    const to = trim(pair.slice(equals + 1));
    if (mapping.has(from)) throw invalid('map', `\`${from}\` is mapped twice`);
    mapping.set(from, to);
  }
  return mapping;
}

/** The message for a failed lookup; `error.payload` is the `lookup-error`. */
function lookupFailure(table, error) {
  const why = error.payload;
  if (why === undefined) throw error; // not the host's refusal: a bug here
  return why.tag === 'unknown-table'
    ? `the spec declares no lookup table "${table}"`
    : `lookup table "${table}": ${why.val}`;
}

/** A `config-error::invalid`, to throw from `configure`. */
function invalid(name, reason) {
  return { tag: 'invalid', val: { name, reason } };
}

/** The outcome that writes `value` to the one output column. */
function setTo(value) {
  return { tag: 'update', val: [value] };
}
