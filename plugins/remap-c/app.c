/*
 * `remap`, written in C, with no SDK: the bindings are what wit-bindgen's C
 * generator writes from wit/transform.wit.
 *
 * Consumes one text column (`value`) and produces one text column
 * (`mapped`) by looking each value up in a fixed mapping
 * (`map = "open=active,won=closed_won"`), then in the spec's lookup table
 * `table` if one is named, then falling back to `default`. NULL stays NULL;
 * a value with no mapping and no default is a per-row error.
 *
 * This is the Rust `plugins/remap` rewritten, messages included: the
 * end-to-end tests compare the outcomes of the four languages row by row.
 *
 * The bindings' rules: an exported function owns its arguments (it frees
 * them); everything it returns is malloc'd, because the post-return call
 * frees it.
 */
#include <stdlib.h>
#include <string.h>

#include "transformer.h"

typedef transformer_string_t str_t;
typedef exports_refill_transform_transform_config_error_t config_error_t;
typedef exports_refill_transform_transform_outcome_t outcome_t;

/* ---- strings ---------------------------------------------------------- */

/* A growing malloc'd string. */
typedef struct {
    uint8_t *ptr;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *bytes, size_t len) {
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2 + 16;
        b->ptr = realloc(b->ptr, b->cap);
    }
    memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
}
static void puts_(buf_t *b, const char *text) { put(b, text, strlen(text)); }
static void put_str(buf_t *b, str_t s) { put(b, s.ptr, s.len); }
static str_t done(buf_t *b) { return (str_t){.ptr = b->ptr, .len = b->len}; }

static str_t copy(str_t s) {
    buf_t b = {0};
    put_str(&b, s);
    return done(&b);
}
static str_t literal(const char *text) {
    buf_t b = {0};
    puts_(&b, text);
    return done(&b);
}
static bool same(str_t a, str_t b) { return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0; }
/* A view of a literal, not to be freed. */
static str_t literal_view(const char *text) {
    return (str_t){.ptr = (uint8_t *)text, .len = strlen(text)};
}

/*
 * The length of the UTF-8 White_Space character (what Rust's `str::trim`
 * strips) at the start of `p` (`n` bytes), or 0.
 */
static size_t space_at(const uint8_t *p, size_t n) {
    if (n >= 1 && ((p[0] >= 0x09 && p[0] <= 0x0d) || p[0] == 0x20)) return 1;
    if (n >= 2 && p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0)) return 2;
    if (n >= 3 && p[0] == 0xe1 && p[1] == 0x9a && p[2] == 0x80) return 3; /* U+1680 */
    if (n >= 3 && p[0] == 0xe2 && p[1] == 0x80 &&
        ((p[2] >= 0x80 && p[2] <= 0x8a) || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf))
        return 3; /* U+2000..200A, U+2028, U+2029, U+202F */
    if (n >= 3 && p[0] == 0xe2 && p[1] == 0x81 && p[2] == 0x9f) return 3; /* U+205F */
    if (n >= 3 && p[0] == 0xe3 && p[1] == 0x80 && p[2] == 0x80) return 3; /* U+3000 */
    return 0;
}

/* The part of `s` between leading and trailing White_Space. */
static str_t trim(str_t s) {
    size_t k;
    while (s.len && (k = space_at(s.ptr, s.len))) {
        s.ptr += k;
        s.len -= k;
    }
    for (;;) {
        /* The last character starts at the last byte that is not 10xxxxxx. */
        size_t start = s.len;
        while (start > 0 && (s.ptr[start - 1] & 0xc0) == 0x80) start--;
        if (start == 0) break;
        start--;
        k = space_at(s.ptr + start, s.len - start);
        if (k == 0 || start + k != s.len) break;
        s.len = start;
    }
    return s;
}

/* ---- configuration ---------------------------------------------------- */

typedef struct {
    str_t from, to;
} pair_t;

static struct {
    bool done;
    pair_t *pairs;
    size_t count;
    bool has_table, has_default;
    str_t table, fallback;
} config;

static void invalid(config_error_t *err, const char *name, str_t reason) {
    err->tag = REFILL_TRANSFORM_TYPES_CONFIG_ERROR_INVALID;
    err->val.invalid.name = literal(name);
    err->val.invalid.reason = reason;
}

/* The message for a failed lookup. */
static str_t lookup_failure(str_t table, const refill_transform_host_lookup_error_t *why) {
    buf_t b = {0};
    if (why->tag == REFILL_TRANSFORM_HOST_LOOKUP_ERROR_UNKNOWN_TABLE) {
        puts_(&b, "the spec declares no lookup table \"");
        put_str(&b, table);
        puts_(&b, "\"");
    } else {
        puts_(&b, "lookup table \"");
        put_str(&b, table);
        puts_(&b, "\": ");
        put_str(&b, why->val.other);
    }
    return done(&b);
}

/* "`" + `text` + `rest`: the refusals of a map that quote a part of it. */
static str_t quoted(str_t text, const char *rest) {
    buf_t b = {0};
    puts_(&b, "`");
    put_str(&b, text);
    puts_(&b, rest);
    return done(&b);
}

/* Parses `from=to` pairs separated by commas; false with `err` set if one
 * is not a pair or maps a value twice. */
static bool parse_map(str_t text, config_error_t *err) {
    size_t at = 0;
    while (at <= text.len) {
        size_t end = at;
        while (end < text.len && text.ptr[end] != ',') end++;
        str_t pair = trim((str_t){.ptr = text.ptr + at, .len = end - at});
        at = end + 1;
        if (pair.len == 0) continue;
        const uint8_t *equals = memchr(pair.ptr, '=', pair.len);
        if (!equals) {
            invalid(err, "map", quoted(pair, "` is not a `from=to` pair"));
            return false;
        }
        size_t left = (size_t)(equals - pair.ptr);
        str_t from = trim((str_t){.ptr = pair.ptr, .len = left});
        str_t to = trim((str_t){.ptr = (uint8_t *)equals + 1, .len = pair.len - left - 1});
        for (size_t i = 0; i < config.count; i++) {
            if (same(config.pairs[i].from, from)) {
                invalid(err, "map", quoted(from, "` is mapped twice"));
                return false;
            }
        }
        config.pairs = realloc(config.pairs, (config.count + 1) * sizeof *config.pairs);
        config.pairs[config.count++] = (pair_t){.from = copy(from), .to = copy(to)};
    }
    return true;
}

void exports_refill_transform_transform_describe(exports_refill_transform_transform_info_t *ret) {
    ret->name = literal("remap");
    ret->version = literal("0.1.0");
    ret->description = literal("Maps each text value to another through a fixed table.");
    ret->inputs.len = ret->outputs.len = 1;
    ret->inputs.ptr = malloc(sizeof *ret->inputs.ptr);
    ret->outputs.ptr = malloc(sizeof *ret->outputs.ptr);
    ret->inputs.ptr[0] = (refill_transform_types_column_t){
        .name = literal("value"), .type = REFILL_TRANSFORM_TYPES_VALUE_TYPE_TEXT};
    ret->outputs.ptr[0] = (refill_transform_types_column_t){
        .name = literal("mapped"), .type = REFILL_TRANSFORM_TYPES_VALUE_TYPE_TEXT};
}

static bool configure(exports_refill_transform_transform_list_param_t *params, config_error_t *err) {
    const str_t *map = NULL, *table = NULL, *fallback = NULL;
    for (size_t i = 0; i < params->len; i++) {
        str_t name = params->ptr[i].name;
        const str_t *value = &params->ptr[i].value;
        if (same(name, literal_view("map"))) {
            if (!map) map = value;
        } else if (same(name, literal_view("table"))) {
            if (!table) table = value;
        } else if (same(name, literal_view("default"))) {
            if (!fallback) fallback = value;
        } else {
            err->tag = REFILL_TRANSFORM_TYPES_CONFIG_ERROR_UNKNOWN;
            err->val.unknown = copy(name);
            return false;
        }
    }
    if (map) {
        if (!parse_map(*map, err)) return false;
    } else if (!table) {
        err->tag = REFILL_TRANSFORM_TYPES_CONFIG_ERROR_MISSING;
        err->val.missing = literal("map");
        return false;
    }
    if (config.count == 0 && !table) {
        invalid(err, "map", literal("the mapping is empty"));
        return false;
    }
    if (table) {
        /* Ask once now, so that a table the spec does not declare stops the
         * run before any row is read. */
        str_t key = {.ptr = (uint8_t *)"", .len = 0};
        str_t name = *table;
        transformer_option_string_t found;
        refill_transform_host_lookup_error_t why;
        if (!refill_transform_host_lookup(&name, &key, &found, &why)) {
            invalid(err, "table", lookup_failure(*table, &why));
            refill_transform_host_lookup_error_free(&why);
            return false;
        }
        transformer_option_string_free(&found);
        config.has_table = true;
        config.table = copy(*table);
    }
    if (fallback) {
        config.has_default = true;
        config.fallback = copy(*fallback);
    }
    config.done = true;
    return true;
}

bool exports_refill_transform_transform_configure(
    exports_refill_transform_transform_list_param_t *params, config_error_t *err) {
    bool ok = configure(params, err);
    exports_refill_transform_transform_list_param_free(params);
    return ok;
}

/* ---- rows ------------------------------------------------------------- */

static const char *const TYPE_NAMES[] = {"null", "boolean", "integer", "float",
                                         "text", "bytes",   "json",    "timestamp"};

static void set_text(outcome_t *out, str_t text) {
    out->tag = REFILL_TRANSFORM_TYPES_OUTCOME_UPDATE;
    out->val.update.len = 1;
    out->val.update.ptr = malloc(sizeof *out->val.update.ptr);
    out->val.update.ptr[0].tag = REFILL_TRANSFORM_TYPES_VALUE_TEXT;
    out->val.update.ptr[0].val.text = text;
}

static void fail(outcome_t *out, str_t message) {
    out->tag = REFILL_TRANSFORM_TYPES_OUTCOME_ERROR;
    out->val.error = message;
}

static void remap(const exports_refill_transform_transform_row_t *row, outcome_t *out) {
    const refill_transform_types_value_t *value = &row->values.ptr[0];
    if (value->tag == REFILL_TRANSFORM_TYPES_VALUE_NULL) {
        out->tag = REFILL_TRANSFORM_TYPES_OUTCOME_UPDATE;
        out->val.update.len = 1;
        out->val.update.ptr = malloc(sizeof *out->val.update.ptr);
        out->val.update.ptr[0].tag = REFILL_TRANSFORM_TYPES_VALUE_NULL;
        return;
    }
    if (value->tag != REFILL_TRANSFORM_TYPES_VALUE_TEXT) {
        buf_t b = {0};
        puts_(&b, "expected text, got ");
        puts_(&b, TYPE_NAMES[value->tag]);
        fail(out, done(&b));
        return;
    }
    str_t text = value->val.text;
    for (size_t i = 0; i < config.count; i++) {
        if (same(config.pairs[i].from, text)) {
            set_text(out, copy(config.pairs[i].to));
            return;
        }
    }
    if (config.has_table) {
        str_t name = config.table, key = text;
        transformer_option_string_t found;
        refill_transform_host_lookup_error_t why;
        if (!refill_transform_host_lookup(&name, &key, &found, &why)) {
            fail(out, lookup_failure(config.table, &why));
            refill_transform_host_lookup_error_free(&why);
            return;
        }
        if (found.is_some) {
            set_text(out, found.val); /* handed on: the host frees it */
            return;
        }
    }
    if (config.has_default) {
        set_text(out, copy(config.fallback));
        return;
    }
    buf_t b = {0};
    puts_(&b, "no mapping for \"");
    put_str(&b, text);
    puts_(&b, "\" and no default");
    fail(out, done(&b));
}

void exports_refill_transform_transform_transform_batch(
    exports_refill_transform_transform_list_row_t *rows,
    exports_refill_transform_transform_list_outcome_t *ret) {
    ret->len = rows->len;
    ret->ptr = malloc((rows->len ? rows->len : 1) * sizeof *ret->ptr);
    for (size_t i = 0; i < rows->len; i++) {
        if (config.done) {
            remap(&rows->ptr[i], &ret->ptr[i]);
        } else {
            fail(&ret->ptr[i], literal("transform-batch called before configure"));
        }
    }
    exports_refill_transform_transform_list_row_free(rows);
}
