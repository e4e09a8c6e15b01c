/**
 * `{{name}}`: uppercases a text column. NULL stays NULL; any other value is
 * that row's error. Replace it with your migration's logic.
 *
 * How the WIT types look from here: a variant is `{ tag, val }` (`val`
 * absent for a case without payload), s64 is a BigInt; an export returning
 * a `result` signals err by throwing the err value.
 */

function upper(row) {
  const value = row.values[0];
  switch (value.tag) {
    case 'null':
      return { tag: 'update', val: [{ tag: 'null' }] };
    case 'text':
      return { tag: 'update', val: [{ tag: 'text', val: value.val.toUpperCase() }] };
    default:
      return { tag: 'error', val: `expected text, got ${value.tag}` };
  }
}

/** A row's outcome; an exception is that row's error, not a trap. */
function one(row) {
  try {
    return upper(row);
  } catch (e) {
    return { tag: 'error', val: `${e?.name ?? 'Error'}: ${e?.message ?? e}` };
  }
}

export const transform = {
  describe() {
    return {
      name: '{{name}}',
      version: '0.1.0',
      description: 'Uppercases a text column.',
      inputs: [{ name: 'value', type: 'text' }],
      outputs: [{ name: 'upper', type: 'text' }],
    };
  },
  configure(params) {
    for (const p of params) {
      throw { tag: 'unknown', val: p.name };
    }
  },
  transformBatch(rows) {
    return rows.map(one);
  },
};
