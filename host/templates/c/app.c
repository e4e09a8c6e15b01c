/*
 * `{{name}}`: uppercases a text column (ASCII letters). NULL stays NULL;
 * any other value is that row's error. Replace it with your migration's
 * logic.
 *
 * No SDK: `transformer.h` is what `wit-bindgen c wit --world transformer`
 * writes from `wit/transform.wit` (`refill build` generates it each time).
 * The rules of those bindings:
 * - an exported function owns its arguments: free them when done;
 * - what it returns is freed by the host's post-return call, so every
 *   string and list in it must come from malloc (`transformer_string_dup`,
 *   never `transformer_string_set` on a literal).
 */
#include <stdlib.h>
#include <string.h>

#include "transformer.h"

typedef exports_refill_transform_transform_outcome_t outcome_t;

/* The names refill's messages use for each case of `value`. */
static const char *const TYPE_NAMES[] = {"null", "boolean", "integer", "float",
                                         "text", "bytes",   "json",    "timestamp"};

/* A malloc'd string made of `a` then `b`. */
static void concat(transformer_string_t *out, const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    out->ptr = malloc(la + lb);
    out->len = la + lb;
    memcpy(out->ptr, a, la);
    memcpy(out->ptr + la, b, lb);
}

static void column(refill_transform_types_column_t *c, const char *name,
                   refill_transform_types_value_type_t type) {
    transformer_string_dup(&c->name, name);
    c->type = type;
}

void exports_refill_transform_transform_describe(exports_refill_transform_transform_info_t *ret) {
    transformer_string_dup(&ret->name, "{{name}}");
    transformer_string_dup(&ret->version, "0.1.0");
    transformer_string_dup(&ret->description, "Uppercases a text column.");
    ret->inputs.len = 1;
    ret->inputs.ptr = malloc(sizeof *ret->inputs.ptr);
    column(&ret->inputs.ptr[0], "value", REFILL_TRANSFORM_TYPES_VALUE_TYPE_TEXT);
    ret->outputs.len = 1;
    ret->outputs.ptr = malloc(sizeof *ret->outputs.ptr);
    column(&ret->outputs.ptr[0], "upper", REFILL_TRANSFORM_TYPES_VALUE_TYPE_TEXT);
}

bool exports_refill_transform_transform_configure(
    exports_refill_transform_transform_list_param_t *params,
    exports_refill_transform_transform_config_error_t *err) {
    bool ok = true;
    if (params->len > 0) {
        /* This transform takes no parameters: refuse the first one. */
        err->tag = REFILL_TRANSFORM_TYPES_CONFIG_ERROR_UNKNOWN;
        transformer_string_dup_n(&err->val.unknown, (const char *)params->ptr[0].name.ptr,
                                 params->ptr[0].name.len);
        ok = false;
    }
    exports_refill_transform_transform_list_param_free(params);
    return ok;
}

/* One row's outcome. */
static void upper(const exports_refill_transform_transform_row_t *row, outcome_t *out) {
    const refill_transform_types_value_t *value = &row->values.ptr[0];
    if (value->tag == REFILL_TRANSFORM_TYPES_VALUE_NULL || value->tag == REFILL_TRANSFORM_TYPES_VALUE_TEXT) {
        out->tag = REFILL_TRANSFORM_TYPES_OUTCOME_UPDATE;
        out->val.update.len = 1;
        out->val.update.ptr = malloc(sizeof *out->val.update.ptr);
        refill_transform_types_value_t *set = &out->val.update.ptr[0];
        set->tag = value->tag;
        if (value->tag == REFILL_TRANSFORM_TYPES_VALUE_TEXT) {
            size_t len = value->val.text.len;
            set->val.text.len = len;
            set->val.text.ptr = malloc(len ? len : 1);
            for (size_t i = 0; i < len; i++) {
                uint8_t c = value->val.text.ptr[i];
                set->val.text.ptr[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 'a' + 'A') : c;
            }
        }
        return;
    }
    out->tag = REFILL_TRANSFORM_TYPES_OUTCOME_ERROR;
    concat(&out->val.error, "expected text, got ", TYPE_NAMES[value->tag]);
}

void exports_refill_transform_transform_transform_batch(
    exports_refill_transform_transform_list_row_t *rows,
    exports_refill_transform_transform_list_outcome_t *ret) {
    ret->len = rows->len;
    ret->ptr = malloc((rows->len ? rows->len : 1) * sizeof *ret->ptr);
    for (size_t i = 0; i < rows->len; i++) upper(&rows->ptr[i], &ret->ptr[i]);
    exports_refill_transform_transform_list_row_free(rows);
}
