/* geode.formats.pf._gcm: AES-128-GCM as the protected-file format uses it.
 *
 * Every node of a protected file is encrypted with a key of its own, a zero IV and no
 * additional data (format v2.0). Through `cryptography` each node costs a new AESGCM object
 * (a key schedule behind a Python object) and a call holding the GIL: about 5 us per 4 KiB
 * node, more than the cipher itself. This module drives OpenSSL's EVP interface directly:
 * one cipher context per call, re-keyed per node, and `encrypt_many` encrypts a whole
 * write-back batch in one call with the GIL released, so the view keeps reading requests
 * meanwhile. The cipher is OpenSSL's in both cases; only the driving loop moves to C.
 *
 * The pure-Python equivalent (and the fallback when this module is not built) is in
 * gcm.py; the tests hold the two to the same outputs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#define KEY_SIZE 16
#define TAG_SIZE 16
#define IV_SIZE 12

static EVP_CIPHER* g_cipher; /* AES-128-GCM, fetched once (read-only afterwards) */
static const unsigned char g_iv[IV_SIZE]; /* the format's IV: all zero */

static PyObject* openssl_error(const char* what) {
    unsigned long code = ERR_get_error();
    char text[256] = "unknown error";
    if (code)
        ERR_error_string_n(code, text, sizeof(text));
    ERR_clear_error();
    return PyErr_Format(PyExc_RuntimeError, "OpenSSL %s failed: %s", what, text);
}

/* Encrypt `len` bytes of `in` under `key` into `out`, the tag into `tag`. 0 on success. */
static int seal(EVP_CIPHER_CTX* ctx, const unsigned char* key, const unsigned char* in,
                int len, unsigned char* out, unsigned char* tag) {
    int n = 0;
    if (EVP_EncryptInit_ex2(ctx, NULL, key, g_iv, NULL) != 1)
        return -1;
    if (len > 0 && EVP_EncryptUpdate(ctx, out, &n, in, len) != 1)
        return -1;
    if (EVP_EncryptFinal_ex(ctx, out + n, &n) != 1)
        return -1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tag) == 1 ? 0 : -1;
}

static EVP_CIPHER_CTX* new_ctx(int encrypt) {
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return NULL;
    int ok = encrypt ? EVP_EncryptInit_ex2(ctx, g_cipher, NULL, NULL, NULL)
                     : EVP_DecryptInit_ex2(ctx, g_cipher, NULL, NULL, NULL);
    if (ok != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int check_len(const Py_buffer* buf, Py_ssize_t want, const char* what) {
    if (buf->len != want) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, not %zd", what, want, buf->len);
        return -1;
    }
    return 0;
}

static int check_int_len(const Py_buffer* buf, const char* what) {
    if (buf->len > INT_MAX - TAG_SIZE) {
        PyErr_Format(PyExc_OverflowError, "%s is too long", what);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(encrypt_doc,
"encrypt(key, plaintext) -> bytes\n\n"
"AES-128-GCM of plaintext under the 16-byte key, zero IV, no additional data:\n"
"the ciphertext followed by the 16-byte tag (as AESGCM(key).encrypt(bytes(12), plaintext,\n"
"None)).");

static PyObject* gcm_encrypt(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
    Py_buffer key = {0}, plain = {0};
    PyObject* result = NULL;
    EVP_CIPHER_CTX* ctx = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encrypt() takes exactly 2 arguments (key, plaintext)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &plain, PyBUF_SIMPLE) < 0)
        goto out;
    if (check_len(&key, KEY_SIZE, "key") < 0 || check_int_len(&plain, "plaintext") < 0)
        goto out;
    result = PyBytes_FromStringAndSize(NULL, plain.len + TAG_SIZE);
    if (!result)
        goto out;
    unsigned char* out = (unsigned char*)PyBytes_AS_STRING(result);
    ctx = new_ctx(1);
    if (!ctx || seal(ctx, key.buf, plain.buf, (int)plain.len, out, out + plain.len) < 0) {
        Py_CLEAR(result);
        openssl_error("AES-GCM encryption");
    }
out:
    EVP_CIPHER_CTX_free(ctx);
    PyBuffer_Release(&plain);
    PyBuffer_Release(&key);
    return result;
}

PyDoc_STRVAR(decrypt_doc,
"decrypt(key, ciphertext, tag) -> bytearray | None\n\n"
"The plaintext of ciphertext under the 16-byte key (zero IV, no additional data), or None\n"
"when the 16-byte tag does not authenticate it.");

static PyObject* gcm_decrypt(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
    Py_buffer key = {0}, cipher = {0}, tag = {0};
    PyObject* result = NULL;
    EVP_CIPHER_CTX* ctx = NULL;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "decrypt() takes exactly 3 arguments (key, ciphertext, tag)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &key, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &cipher, PyBUF_SIMPLE) < 0)
        goto out;
    if (PyObject_GetBuffer(args[2], &tag, PyBUF_SIMPLE) < 0)
        goto out;
    if (check_len(&key, KEY_SIZE, "key") < 0 || check_len(&tag, TAG_SIZE, "tag") < 0 ||
        check_int_len(&cipher, "ciphertext") < 0)
        goto out;
    result = PyByteArray_FromStringAndSize(NULL, cipher.len);
    if (!result)
        goto out;
    unsigned char* plain = (unsigned char*)PyByteArray_AS_STRING(result);
    /* (OpenSSL reads the expected tag from a non-const pointer; it is copied first) */
    unsigned char expected[TAG_SIZE];
    memcpy(expected, tag.buf, TAG_SIZE);
    int n = 0, ok;
    ctx = new_ctx(0);
    if (!ctx || EVP_DecryptInit_ex2(ctx, NULL, key.buf, g_iv, NULL) != 1 ||
        (cipher.len > 0 &&
         EVP_DecryptUpdate(ctx, plain, &n, cipher.buf, (int)cipher.len) != 1) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, expected) != 1) {
        OPENSSL_cleanse(plain, (size_t)cipher.len);
        Py_CLEAR(result);
        openssl_error("AES-GCM decryption");
        goto out;
    }
    ok = EVP_DecryptFinal_ex(ctx, plain + n, &n);
    ERR_clear_error(); /* (a tag mismatch is an answer, not an error) */
    if (ok != 1) {
        /* never hand out unauthenticated plaintext, even in a discarded buffer */
        OPENSSL_cleanse(plain, (size_t)cipher.len);
        Py_CLEAR(result);
        result = Py_NewRef(Py_None);
    }
out:
    EVP_CIPHER_CTX_free(ctx);
    PyBuffer_Release(&tag);
    PyBuffer_Release(&cipher);
    PyBuffer_Release(&key);
    return result;
}

PyDoc_STRVAR(encrypt_many_doc,
"encrypt_many(keys, plaintexts) -> bytes\n\n"
"encrypt(keys[16*i:16*i+16], plaintexts[i]) for each i, concatenated. The plaintexts\n"
"(a list or tuple of bytes-like objects) must all have the same length; keys holds 16\n"
"bytes per plaintext. Runs without the GIL.");

static PyObject* gcm_encrypt_many(PyObject* module, PyObject* const* args, Py_ssize_t nargs) {
    Py_buffer keys = {0};
    Py_buffer* views = NULL;
    Py_ssize_t n = 0, got = 0, size = 0;
    PyObject *seq = NULL, *result = NULL;
    int failed = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "encrypt_many() takes exactly 2 arguments (keys, plaintexts)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &keys, PyBUF_SIMPLE) < 0)
        return NULL;
    seq = PySequence_Fast(args[1], "plaintexts must be a list or tuple");
    if (!seq)
        goto out;
    n = PySequence_Fast_GET_SIZE(seq);
    if (keys.len != n * KEY_SIZE) {
        PyErr_Format(PyExc_ValueError, "keys must be %zd bytes (16 per plaintext), not %zd",
                     n * KEY_SIZE, keys.len);
        goto out;
    }
    views = PyMem_Calloc(n ? n : 1, sizeof(Py_buffer));
    if (!views) {
        PyErr_NoMemory();
        goto out;
    }
    PyObject** items = PySequence_Fast_ITEMS(seq);
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &views[got], PyBUF_SIMPLE) < 0)
            goto out;
        if (got == 0) {
            size = views[0].len;
            if (check_int_len(&views[0], "a plaintext") < 0) {
                got++;
                goto out;
            }
        } else if (views[got].len != size) {
            PyErr_Format(PyExc_ValueError, "plaintext %zd is %zd bytes, not %zd like the first",
                         got, views[got].len, size);
            got++;
            goto out;
        }
    }
    if (n > 0 && size + TAG_SIZE > PY_SSIZE_T_MAX / n) {
        PyErr_SetString(PyExc_OverflowError, "too much to encrypt at once");
        goto out;
    }
    result = PyBytes_FromStringAndSize(NULL, n * (size + TAG_SIZE));
    if (!result)
        goto out;
    unsigned char* out = (unsigned char*)PyBytes_AS_STRING(result);
    const unsigned char* key = keys.buf;
    /* The views pin their objects' buffers (a bytearray with an export cannot be resized),
     * so other threads may run meanwhile. */
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX* ctx = new_ctx(1);
    if (!ctx)
        failed = 1;
    for (Py_ssize_t i = 0; !failed && i < n; i++) {
        unsigned char* rec = out + i * (size + TAG_SIZE);
        if (seal(ctx, key + i * KEY_SIZE, views[i].buf, (int)size, rec, rec + size) < 0)
            failed = 1;
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        Py_CLEAR(result);
        openssl_error("AES-GCM encryption");
    }
out:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_XDECREF(seq);
    PyBuffer_Release(&keys);
    return result;
}

static PyMethodDef methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))gcm_encrypt, METH_FASTCALL, encrypt_doc},
    {"decrypt", (PyCFunction)(void (*)(void))gcm_decrypt, METH_FASTCALL, decrypt_doc},
    {"encrypt_many", (PyCFunction)(void (*)(void))gcm_encrypt_many, METH_FASTCALL,
     encrypt_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "geode.formats.pf._gcm",
    .m_doc = "AES-128-GCM with the protected-file format's zero IV, through OpenSSL's EVP.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__gcm(void) {
    if (!g_cipher) {
        g_cipher = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
        if (!g_cipher) {
            ERR_clear_error();
            PyErr_SetString(PyExc_ImportError, "OpenSSL offers no AES-128-GCM");
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
