/* Error codes and the one-line message helper. */
#include <stdarg.h>
#include <stdio.h>

#include "kv_internal.h"

const char *kv_status_name(kv_status s)
{
    switch (s) {
    case KV_OK:            return "ok";
    case KV_ERR_IO:        return "i/o error";
    case KV_ERR_FORMAT:    return "format error";
    case KV_ERR_VERSION:   return "unsupported version";
    case KV_ERR_NOMEM:     return "out of memory";
    case KV_ERR_INVALID:   return "invalid argument";
    case KV_ERR_VALIDATOR: return "validator failure";
    case KV_ERR_VALUE:     return "bad value";
    }
    return "unknown status";
}

static void verr_set(kv_error *err, kv_status code, const char *fmt, va_list ap)
{
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    /* one line: messages may quote names taken from an untrusted file */
    for (char *p = err->msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
}

kv_status kv_error_set(kv_error *err, kv_status code, const char *fmt, ...)
{
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    verr_set(err, code, fmt, ap);
    va_end(ap);
    return code;
}

int kv_mul_ok(size_t a, size_t b, size_t cap, size_t *out)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r) || r > cap)
        return 0;
    *out = r;
    return 1;
}

void kvh5_quiet(void)
{
    static int done;
    if (done)
        return;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    H5PLset_loading_state(0);
    done = 1;
}

hid_t kvh5_f16_type(void)
{
    /* the same construction h5py uses for '<f2': sign 15, exponent 10..14, mantissa 0..9 */
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0)
        return H5I_INVALID_HID;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

int kvh5_dtype_class(hid_t type)
{
    H5T_class_t c = H5Tget_class(type);
    size_t sz = H5Tget_size(type);
    if (c == H5T_FLOAT && sz == 2) {
        size_t spos, epos, esize, mpos, msize;
        if (H5Tget_order(type) != H5T_ORDER_LE || H5Tget_precision(type) != 16 || H5Tget_offset(type) != 0)
            return KVDT_OTHER;
        if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0)
            return KVDT_OTHER;
        if (spos != 15 || epos != 10 || esize != 5 || mpos != 0 || msize != 10)
            return KVDT_OTHER;
        if (H5Tget_ebias(type) != 15 || H5Tget_norm(type) != H5T_NORM_IMPLIED)
            return KVDT_OTHER;
        return KVDT_F16;
    }
    if (c == H5T_FLOAT && sz == 4)
        return H5Tequal(type, H5T_IEEE_F32LE) > 0 ? KVDT_F32 : KVDT_OTHER;
    if (c == H5T_INTEGER && sz == 4)
        return H5Tequal(type, H5T_STD_I32LE) > 0 ? KVDT_I32 : KVDT_OTHER;
    return KVDT_OTHER;
}

void kvh5_type_name(hid_t type, char *buf, size_t cap)
{
    H5T_class_t c = H5Tget_class(type);
    size_t bits = H5Tget_size(type) * 8;
    const char *order = H5Tget_order(type) == H5T_ORDER_BE ? " big-endian" : "";
    switch (c) {
    case H5T_FLOAT:    snprintf(buf, cap, "%zu-bit float%s", bits, order); break;
    case H5T_INTEGER:
        snprintf(buf, cap, "%zu-bit %s integer%s", bits,
                 H5Tget_sign(type) == H5T_SGN_NONE ? "unsigned" : "signed", order);
        break;
    case H5T_COMPOUND: snprintf(buf, cap, "compound"); break;
    case H5T_STRING:   snprintf(buf, cap, "string"); break;
    case H5T_ARRAY:    snprintf(buf, cap, "array"); break;
    case H5T_ENUM:     snprintf(buf, cap, "enum"); break;
    case H5T_VLEN:     snprintf(buf, cap, "variable-length"); break;
    case H5T_OPAQUE:   snprintf(buf, cap, "opaque"); break;
    case H5T_REFERENCE:snprintf(buf, cap, "reference"); break;
    case H5T_BITFIELD: snprintf(buf, cap, "bitfield"); break;
    default:           snprintf(buf, cap, "unknown type"); break;
    }
}
