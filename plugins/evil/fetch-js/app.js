/**
 * `evil-fetch-js`: a hostile JavaScript guest for the host's plan-time
 * import check.
 *
 * Consumes one column of any type (`value`, which it ignores) and produces
 * one text column (`result`): for every row it calls `fetch(url)` and
 * writes `ACCESS: HTTP {status}` if a response came back, or makes the row
 * an `error` with the exception's name and message.
 *
 * It is built with componentize-js's `http` feature left on (see
 * `plugin.toml`), so the component imports `wasi:http/outgoing-handler`.
 * That interface is not in what the host links, so the host must refuse the
 * component when it plans a run, before any row is read; a test that ever
 * sees one of these outcomes has found a hole.
 *
 * Config: `url` (optional; default `http://127.0.0.1:5432/`, PostgreSQL on
 * the test machines).
 */

let url = null;

export const transform = {
  describe() {
    return {
      name: 'evil-fetch-js',
      version: '0.1.0',
      description: 'Calls fetch() for every row: a component the host must refuse at plan time.',
      inputs: [{ name: 'value', type: 'any' }],
      outputs: [{ name: 'result', type: 'text' }],
    };
  },

  configure(params) {
    url = 'http://127.0.0.1:5432/';
    for (const { name, value } of params) {
      if (name !== 'url') throw { tag: 'unknown', val: name };
      url = value;
    }
  },

  // An async export: componentize-js runs the event loop until it settles.
  async transformBatch(rows) {
    const outcomes = [];
    for (const _ of rows) {
      try {
        const response = await fetch(url);
        outcomes.push({ tag: 'update', val: [{ tag: 'text', val: `ACCESS: HTTP ${response.status}` }] });
      } catch (e) {
        outcomes.push({ tag: 'error', val: `${e?.name}: ${e?.message}` });
      }
    }
    return outcomes;
  },
};
